"""Tiny known-answer instances and a random-instance generator for the solver tests."""

from __future__ import annotations

import numpy as np

from pruning.problem import BlockValue, Group, LinearTerm, PairwiseTerm, PruningProblem


def knapsack_linear() -> tuple[PruningProblem, float, tuple[int, ...]]:
    """Two groups, non-monotone costs; optimum worked out by hand.

    g0: values [0, 5, 8, 9], costs [0, 4, 3, 6]  (keeping 2 is cheaper than 1: non-monotone)
    g1: values [0, 4, 6],    costs [0, 2, 5]
    budget 7: options (k0, k1) -> cost/value: (2,1)=5/12, (3,1)=8 no, (1,1)=6/9, (2,2)=8 no, (1,2)=9 no.
    Best: k = (2, 1), value 12, latency 5.
    """
    groups = [Group(3, np.array([0, 5, 8, 9.0])), Group(2, np.array([0, 4, 6.0]))]
    lin = [LinearTerm(0, np.array([0, 4, 3, 6.0])), LinearTerm(1, np.array([0, 2, 5.0]))]
    return PruningProblem(groups, 7.0, linear=lin, name="knapsack_linear"), 12.0, (2, 1)


def negative_costs() -> tuple[PruningProblem, float, tuple[int, ...]]:
    """A negative-cost option must not loosen the budget (the reference code's C + E bug, §12.2)."""
    groups = [Group(2, np.array([0, 3, 4.0])), Group(2, np.array([0, 10, 11.0]))]
    lin = [LinearTerm(0, np.array([0, 1, -1.0])), LinearTerm(1, np.array([0, 2, 4.0]))]
    # budget 2: (2, 2) costs 3 -> infeasible; (2, 1) costs 1 value 14; (1, 1) costs 3 no.  Best 14.
    return PruningProblem(groups, 2.0, linear=lin, name="negative_costs"), 14.0, (2, 1)


def pairwise_chain() -> tuple[PruningProblem, float, tuple[int, ...]]:
    """MDLM: g0 feeds g1; latency of g1's layer depends on both widths."""
    groups = [Group(2, np.array([0, 4, 5.0])), Group(2, np.array([0, 3, 7.0]))]
    pw = [
        PairwiseTerm(0, None, np.array([0, 1, 2.0])),
        PairwiseTerm(1, 0, np.array([[0, 0, 0], [0, 1, 2], [0, 2, 6.0]])),
    ]
    # (k0,k1): (1,1)=2/7 (1,2)=3/11 (2,1)=4/8 (2,2)=8/12.  budget 4 -> (1,2) value 11.
    return PruningProblem(groups, 4.0, pairwise=pw, name="pairwise_chain"), 11.0, (1, 2)


def block_removal() -> tuple[PruningProblem, float, tuple[int, ...], frozenset[int]]:
    """MDP: residual group r (never in a block), block 0 with internal group a and a layer writing r."""
    groups = [
        Group(2, np.array([0, 10, 12.0]), name="r"),
        Group(2, np.array([0, 1, 1.5]), block=0, name="a"),
    ]
    pw = [
        PairwiseTerm(0, None, np.array([0, 1, 2.0]), name="stem"),
        PairwiseTerm(1, 0, np.array([[0, 0, 0], [0, 2, 3], [0, 3, 4.0]]), block=0, name="conv1"),
        PairwiseTerm(0, 1, np.array([[0, 0, 0], [0, 1, 2], [0, 2, 3.0]]), block=0, name="conv3"),
    ]
    # block removed: latency = stem only: k_r=2 -> 2, value 12.  Kept: min (1,1) = 1+2+1 = 4 > 3.
    return PruningProblem(groups, 3.0, pairwise=pw, name="block_removal"), 12.0, (2, 0), frozenset({0})


def block_value() -> tuple[PruningProblem, float, tuple[int, ...], frozenset[int]]:
    """MGP: removing the block also loses its conv3's share of the residual group's value (§8.2).

    r: values [0, 10, 12], a (internal): [0, 0.5, 0.6]; latency stem r [0,1,2], conv1 a [0,1,1], conv3 r [0,1,1].
    Budget 3.5: kept (1, 2) costs 3, value 10.6; removed (2, 0) costs 2, value 12 − conv3's share 4 = 8.
    Without the share, removal (12) would win.
    """
    groups = [Group(2, np.array([0, 10, 12.0]), name="r"), Group(2, np.array([0, 0.5, 0.6]), block=0, name="a")]
    lin = [LinearTerm(0, np.array([0, 1, 2.0]), name="stem"), LinearTerm(1, np.array([0, 1, 1.0]), block=0),
           LinearTerm(0, np.array([0, 1, 1.0]), block=0, name="conv3")]
    shares = [BlockValue(0, 0, np.array([0, 3, 4.0]), name="conv3")]
    return PruningProblem(groups, 3.5, linear=lin, block_values=shares, name="block_value"), 10.6, (1, 2), frozenset()


def share(rng: np.random.Generator, group: Group, gi: int, block: int) -> BlockValue:
    """A random part of ``group``'s item values held by its layers in ``block`` (conv3's share, §4.2)."""
    items = np.diff(group.values) * rng.random(group.size)
    return BlockValue(gi, block, np.concatenate([[0.0], np.cumsum(items)]), name=f"share{gi}@{block}")


def random_problem(
    rng: np.random.Generator, *, pairwise: bool, block: bool, n_groups: int | None = None
) -> PruningProblem:
    """2-4 groups of 1-4 items, non-monotone random costs, optional single block; budget in the feasible range."""
    G = int(n_groups or rng.integers(2, 5))
    sizes = rng.integers(1, 5, size=G)
    blk_group = int(rng.integers(1, G)) if block else None  # group internal to block 0 (never group 0)
    groups = []
    for g, m in enumerate(sizes):
        imp = rng.random(m)
        groups.append(Group.from_importances(imp, block=0 if g == blk_group else None, name=f"g{g}"))
    lin: list[LinearTerm] = []
    pw: list[PairwiseTerm] = []
    for g, m in enumerate(sizes):
        in_block = 0 if (block and g in (blk_group, 0)) else None
        if pairwise and g > 0:
            p = int(rng.integers(0, g))
            mat = rng.random((m + 1, sizes[p] + 1)) * np.outer(np.arange(m + 1), np.arange(sizes[p] + 1))
            pw.append(PairwiseTerm(g, p, mat, block=in_block if g == blk_group else None, name=f"l{g}"))
            if block and g == blk_group:  # a layer of the block writing group 0 (like conv3 -> residual)
                mat2 = rng.random((sizes[0] + 1, m + 1)) * np.outer(np.arange(sizes[0] + 1), np.arange(m + 1))
                pw.append(PairwiseTerm(0, g, mat2, block=0, name="res"))
        else:
            costs = np.concatenate([[0.0], rng.random(m) * np.arange(1, m + 1)])
            lin.append(LinearTerm(g, costs, block=in_block if g == blk_group else None, name=f"l{g}"))
            if block and g == blk_group:
                lin.append(LinearTerm(0, np.concatenate([[0.0], rng.random(sizes[0])]), block=0, name="res"))
    shares = [share(rng, groups[0], 0, 0)] if block else []
    prob = PruningProblem(groups, 0.0, linear=lin, pairwise=pw, name="random", block_values=shares)
    sols = list(prob.enumerate_solutions())
    lats = sorted(prob.latency(s) for s in sols)
    frac = float(rng.random())
    budget = lats[0] + frac * (lats[-1] - lats[0])
    return prob.with_budget(budget)


def resnet_like(rng: np.random.Generator, *, pairwise: bool = True) -> PruningProblem:
    """Stem -> residual group r; two blocks with internal groups a, b and layers r->a->b->r (a bottleneck)."""
    sizes = [int(rng.integers(1, 3))] + [int(rng.integers(1, 3)) for _ in range(4)]  # r, a0, b0, a1, b1
    groups = [Group.from_importances(rng.random(sizes[0]) * 3, name="r")]
    for blk in range(2):
        for j in range(2):
            g = 1 + 2 * blk + j
            groups.append(Group.from_importances(rng.random(sizes[g]), block=blk, name=f"g{g}"))

    def mat(go: int, gi: int) -> np.ndarray:
        return rng.random((sizes[go] + 1, sizes[gi] + 1)) * np.outer(np.arange(sizes[go] + 1), np.arange(sizes[gi] + 1))

    terms = [PairwiseTerm(0, None, np.concatenate([[0.0], rng.random(sizes[0])]), name="stem")]
    lin = [LinearTerm(0, np.concatenate([[0.0], rng.random(sizes[0])]), name="stem")]
    for blk in range(2):
        a, b = 1 + 2 * blk, 2 + 2 * blk
        for go, gi in ((a, 0), (b, a), (0, b)):
            if pairwise:
                terms.append(PairwiseTerm(go, gi, mat(go, gi), block=blk))
            else:
                lin.append(LinearTerm(go, mat(go, gi)[:, -1], block=blk))
    prob = PruningProblem(groups, 0.0, linear=[] if pairwise else lin, pairwise=terms if pairwise else [],
                          block_values=[share(rng, groups[0], 0, blk) for blk in range(2)])
    lats = sorted(prob.latency(s) for s in prob.enumerate_solutions())
    return prob.with_budget(lats[0] + float(rng.random()) * (lats[-1] - lats[0]))


def random_network(rng: np.random.Generator, *, pairwise: bool, blocks: bool, tied: bool = False) -> PruningProblem:
    """A random ResNet-like network too large for brute force: 2-3 stages of 1-3 bottleneck blocks.

    Stage residual groups chain through downsample layers; each block reads and writes its stage's residual
    group through two internal groups.  Some internal groups may be emptied alone (``min_keep = 0``), some
    linear tables cost something at ``k = 0``, and a constant is added, to exercise every rule.  ``tied``:
    every item is worth 1 (BN |γ| of an untrained network), so many assignments share a value.
    """

    def size() -> int:
        return int(rng.integers(2, 7))

    def importances(n: int) -> np.ndarray:
        return np.ones(n) if tied else rng.lognormal(0, 1, n)

    def table(rows: int, cols: int | None) -> np.ndarray:
        if cols is None:
            at_zero = rng.random() * 0.2 * (rng.random() < 0.3)  # some layers cost something even when emptied
            return np.concatenate([[at_zero], rng.random(rows) * np.arange(1, rows + 1)])
        out = rng.random((rows + 1, cols + 1)) * np.outer(np.arange(rows + 1), np.arange(cols + 1)) ** 0.7
        return out + np.outer(np.arange(rows + 1) > 0, np.arange(cols + 1) > 0) * 0.05 * np.sin(np.arange(cols + 1))

    groups = [Group.from_importances(importances(size()), name="stem")]
    lin: list[LinearTerm] = []
    pw: list[PairwiseTerm] = []
    block = 0
    prev = 0
    shares: list[BlockValue] = []
    for st in range(int(rng.integers(2, 4))):
        res = len(groups)
        groups.append(Group.from_importances(importances(size()), name=f"res{st}"))
        for gi, pi in ((res, prev),):
            m, mp = groups[gi].size, groups[pi].size
            (pw.append(PairwiseTerm(gi, pi, table(m, mp))) if pairwise else lin.append(LinearTerm(gi, table(m, None))))
        for _ in range(int(rng.integers(1, 4))):
            b = block if blocks else None
            a, c = len(groups), len(groups) + 1
            for _j in range(2):
                mk = 0 if rng.random() < 0.15 else 1
                groups.append(Group.from_importances(importances(size()), min_keep=mk, block=b))
            for go, gi in ((a, res), (c, a), (res, c)):
                m, mp = groups[go].size, groups[gi].size
                if pairwise:
                    pw.append(PairwiseTerm(go, gi, table(m, mp), block=b))
                else:
                    lin.append(LinearTerm(go, table(m, None), block=b))
            if blocks:
                shares.append(share(rng, groups[res], res, block))
            block += 1
        prev = res
    prob = PruningProblem(groups, 0.0, linear=lin, pairwise=pw, constant=float(rng.random()), name="random_network",
                          block_values=shares)
    dense = prob.latency(prob.dense_solution())
    return prob.with_budget(dense * float(rng.uniform(0.15, 0.95)))
