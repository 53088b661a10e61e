"""``lagrange``: exact solver for every variant — Lagrangian dual by dynamic programming, closed by branch and bound.

The latency budget is the only constraint that couples the whole network.  Relaxing it with a multiplier
``λ ≥ 0`` leaves ``max_x V(x) − λ·T(x)``, a max-sum problem on the network's own graph (groups and
blocks as variables, one factor per value table, block value, conv latency table and block rule).  That graph has
small treewidth (a ResNet is a chain of stages whose blocks hang off one residual group), so variable
elimination solves it exactly in a few milliseconds.

1. ``λ = 0`` keeps the most value; if it fits the budget it is optimal.  The minimum latency (a second
   elimination on ``T`` alone) proves infeasibility when it exceeds the budget.
2. The dual ``min_λ max_x V − λ(T − B)`` is found by the convex-hull (Eisner–Severance) search: the line
   through an over-budget and an in-budget solution gives the next ``λ``; it stops when no solution lies
   above the line.  The line's value at the budget is a proven upper bound (at least as tight as the
   LP relaxation of the MILP, because each sub-problem is solved as an integer problem).
3. Branch and bound assigns the variables in reverse elimination order, level by level, on arrays of
   partial assignments ("labels").  The elimination tables give every label the exact best completion of
   ``V − λT`` (an upper bound on the value of any in-budget completion) and its exact least completion
   latency; a label is dropped when either proves it cannot beat the incumbent or fit the budget, or
   when another label with the same values of the variables still to be read has no less value and no
   more latency (dominance, as in knapsack dynamic programming).  A beam pass first (only the best 256
   labels per level) finds a strong incumbent.  Leaves are exact, so the search ends with a proven
   optimum (within ``mip_gap``); at the time limit the incumbent is returned as "feasible" with the
   Lagrangian bound.

``max_kept_blocks`` (a cardinality constraint over all blocks) does not decompose, and a graph of large
treewidth would need huge tables; such problems are handed to ``milp-highs`` (the message says so), unless
HiGHS's model would be huge too: then the error asks for coarser channel groups.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from db.errors import LatlabError
from pruning.problem import PruningProblem, Solution, SolveResult
from pruning.solvers.base import Solver, infeasible


@dataclass
class Factor:
    """A table over ``scope`` (variable ids, ascending): value ``V``, latency ``T``, feasibility ``ok``."""

    scope: tuple[int, ...]
    V: np.ndarray
    T: np.ndarray
    ok: np.ndarray


class FactorGraph:
    """Variables: one per group (its allowed ``k``) and one per block ``z`` (1 = removed); factors merged by scope.

    A block with an internal group that must keep ≥ 1 item while the block stays has no variable of its
    own: that group's ``k = 0`` *is* the removal, so its tables carry the block's indicator.
    """

    def __init__(self, problem: PruningProblem) -> None:
        groups = problem.groups
        self.problem = problem
        self.states = [np.array(g.states(), dtype=int) for g in groups]
        self.block_var: dict[int, int] = {}  # block -> the variable that decides it
        self.kept: dict[int, np.ndarray] = {}  # block -> 1 where that variable's state keeps the block
        for b in problem.blocks:
            rep = next((i for i, g in enumerate(groups) if g.block == b and g.min_keep >= 1), None)
            if rep is None:
                rep = len(self.states)
                self.states.append(np.array([0, 1]))
            self.block_var[b] = rep
            self.kept[b] = (self.states[rep] != 0).astype(float) if rep < len(groups) else np.array([1.0, 0.0])
        self.sizes = [len(s) for s in self.states]
        self._tables: dict[tuple[int, ...], Factor] = {}
        for gi, g in enumerate(groups):
            k = self.states[gi]
            self._add((gi,), V=g.values[k])
            if g.block is not None and self.block_var[g.block] != gi:
                kept = self.kept[g.block][None, :] == 1
                self._add((gi, self.block_var[g.block]), ok=np.where(kept, k[:, None] >= g.min_keep, k[:, None] == 0))
        for t in problem.linear:
            self._latency((t.group,), t.costs[self.states[t.group]], t.block)
        for t in problem.pairwise:
            kg = self.states[t.group]
            if t.producer is None:
                self._latency((t.group,), t.matrix[kg], t.block)
            elif t.producer == t.group:
                self._latency((t.group,), t.matrix[kg, kg], t.block)
            else:
                self._latency((t.group, t.producer), t.matrix[np.ix_(kg, self.states[t.producer])], t.block)
        for t in problem.block_values:  # the block's share of a group's value goes with the block
            var, gone = self.block_var[t.block], 1.0 - self.kept[t.block]
            self._add((t.group, var), V=-t.values[self.states[t.group]][:, None] * gone[None, :])
        self.constant = float(problem.constant)
        self.factors = list(self._tables.values())

    def removed(self, x: np.ndarray) -> frozenset[int]:
        """Blocks removed by assignment ``x`` (state indices)."""
        return frozenset(b for b, v in self.block_var.items() if self.kept[b][x[v]] == 0)

    def _latency(self, scope: tuple[int, ...], table: np.ndarray, block: int | None) -> None:
        if block is None or self._vanishes(scope, table, block):
            self._add(scope, T=table)
            return
        var, kept = self.block_var[block], self.kept[block]  # the term counts only while its block is kept
        if var in scope:
            axis = scope.index(var)
            self._add(scope, T=table * kept.reshape([-1 if a == axis else 1 for a in range(table.ndim)]))
        else:
            self._add((*scope, var), T=table[..., None] * kept)

    def _vanishes(self, scope: tuple[int, ...], table: np.ndarray, block: int) -> bool:
        """True when removing ``block`` zeroes the term by itself: one of its groups is internal to the block
        (so it sits at ``k = 0``) and the table is 0 wherever that group is at 0."""
        for axis, g in enumerate(scope):
            internal = self.problem.groups[g].block == block and self.states[g][0] == 0
            if internal and not np.any(np.take(table, 0, axis=axis)):
                return True
        return False

    def _add(self, scope: tuple[int, ...], V=None, T=None, ok=None) -> None:
        order = np.argsort(scope)
        key = tuple(int(scope[i]) for i in order)
        shape = tuple(self.sizes[v] for v in key)
        f = self._tables.get(key)
        if f is None:
            f = self._tables[key] = Factor(key, np.zeros(shape), np.zeros(shape), np.ones(shape, bool))
        if V is not None:
            f.V += np.transpose(V, order)
        if T is not None:
            f.T += np.transpose(T, order)
        if ok is not None:
            f.ok &= np.transpose(ok, order)


@dataclass
class Step:
    """Eliminate ``var``: ``ψ`` over ``scope = (var, *rest)`` is the sum of the original factors ``base`` (fixed
    tables, pre-broadcast) and the earlier messages ``inputs`` (id, broadcast shape); the message is max_var ψ."""

    var: int
    scope: tuple[int, ...]
    base: list[int]
    inputs: list[tuple[int, list[int], tuple[int, ...]]]  # (message id, axis permutation, broadcast shape)

    def shape(self, sizes: list[int]) -> tuple[int, ...]:
        return tuple(sizes[u] for u in self.scope)


def plan(graph: FactorGraph) -> list[Step]:
    """Greedy min-size elimination order (variable + neighbours) and what each step sums."""
    sizes = graph.sizes
    nbrs: list[set[int]] = [set() for _ in sizes]
    holders: list[set[int]] = [set() for _ in sizes]  # alive factors / messages (by id) per variable
    scopes: list[tuple[int, ...]] = [f.scope for f in graph.factors]
    for i, sc in enumerate(scopes):
        for v in sc:
            nbrs[v] |= set(sc) - {v}
            holders[v].add(i)
    remaining = set(range(len(sizes)))
    steps = []
    while remaining:
        v = min(remaining, key=lambda u: (math.prod(sizes[w] for w in nbrs[u]) * sizes[u], u))
        rest = sorted(nbrs[v])
        scope = (v, *rest)
        base, inputs = [], []
        for i in sorted(holders[v]):
            if i < len(graph.factors):
                base.append(i)
            else:
                perm = [scopes[i].index(u) for u in scope if u in scopes[i]]
                inputs.append((i, perm, tuple(sizes[u] if u in scopes[i] else 1 for u in scope)))
            for u in scopes[i]:
                holders[u].discard(i)
        msg = len(scopes)
        scopes.append(tuple(rest))
        for u in rest:
            holders[u].add(msg)
            nbrs[u] |= set(rest) - {u}
            nbrs[u].discard(v)
        steps.append(Step(v, scope, base, inputs))
        remaining.discard(v)
    return steps


def _broadcast(f: Factor, table: np.ndarray, scope: tuple[int, ...], sizes: list[int]) -> np.ndarray:
    shape = tuple(sizes[u] if u in f.scope else 1 for u in scope)
    perm = [f.scope.index(u) for u in scope if u in f.scope]
    return np.transpose(table, perm).reshape(shape)


class Plan:
    """The elimination steps with each step's original factors summed once: value (−∞ where a rule is
    broken) and latency tables over the step's scope."""

    def __init__(self, graph: FactorGraph, steps: list[Step]) -> None:
        self.graph = graph
        self.steps = steps
        self.n_vars = len(graph.sizes)
        self.V: list[np.ndarray] = []
        self.T: list[np.ndarray] = []
        sizes = graph.sizes
        for s in self.steps:
            shape = s.shape(sizes)
            V, T, ok = np.zeros(shape), np.zeros(shape), np.ones(shape, bool)
            for i in s.base:
                f = graph.factors[i]
                V = V + _broadcast(f, f.V, s.scope, sizes)
                T = T + _broadcast(f, f.T, s.scope, sizes)
                ok = ok & _broadcast(f, f.ok, s.scope, sizes)
            self.V.append(np.where(ok, V, -np.inf))
            self.T.append(T)

    def lagrangian(self, lam: float) -> Elimination:
        """Eliminate ``V − λ·T``."""
        tables = [np.multiply(T, -lam) for T in self.T]
        for table, V in zip(tables, self.V, strict=True):
            table += V  # V − λT, in place: these tables are a few hundred MB on the largest networks
        return Elimination(self, tables, lam)

    def min_latency(self) -> Elimination:
        """Eliminate ``−T`` (rules enforced): ``−total`` is the least latency of any valid assignment."""
        tables = [np.where(np.isfinite(V), -T, -np.inf) for V, T in zip(self.V, self.T, strict=True)]
        return Elimination(self, tables, 1.0)


class Elimination:
    """Max-sum variable elimination of per-step tables (``V − λT`` or ``−T``; broken rules −∞) on a fixed plan.

    ``psi[i]`` is step ``i``'s table over its scope, ``msg[i] = psi[i].max(axis=0)``; ``total`` is the
    maximum over all assignments, the network constant (times the latency weight ``wT``) included.
    """

    def __init__(self, p: Plan, tables: list[np.ndarray], wT: float) -> None:
        self.psi: list[np.ndarray] = []
        self.msg: list[np.ndarray] = []
        total = -wT * p.graph.constant
        offset = len(p.graph.factors)
        for s, psi in zip(p.steps, tables, strict=True):
            for i, perm, shape in s.inputs:  # ``tables`` are the caller's fresh arrays: summed into in place
                psi += np.transpose(self.msg[i - offset], perm).reshape(shape)
            m = psi.max(axis=0)
            self.psi.append(psi)
            self.msg.append(m)
            if m.ndim == 0:
                total += float(m)
        self.total = total

    def argmax(self, p: Plan) -> np.ndarray:
        """The maximising assignment (state indices), decoded in reverse elimination order."""
        x = np.zeros(p.n_vars, dtype=int)
        for s, psi in zip(reversed(p.steps), reversed(self.psi), strict=True):
            x[s.var] = int(np.argmax(psi[(slice(None), *x[list(s.scope[1:])])]))
        return x


def minimum_latency(problem: PruningProblem, max_table: int = 20_000_000) -> float | None:
    """The least latency any valid decision reaches (variable elimination on the latency alone), or None:
    with ``max_kept_blocks`` (it couples every block) or when the graph needs a table over ``max_table``."""
    if problem.max_kept_blocks is not None and problem.blocks:
        return None
    graph = FactorGraph(problem)
    steps = plan(graph)
    if max(math.prod(s.shape(graph.sizes)) for s in steps) > max_table:
        return None
    return -Plan(graph, steps).min_latency().total


def milp_columns(problem: PruningProblem) -> int:
    """The one-hot and pairwise product columns of ``milp-highs``' model of ``problem`` (nearly all it has)."""
    states = [len(g.states()) for g in problem.groups]
    return sum(states) + sum(states[t.group] * states[t.producer] for t in problem.pairwise if t.producer is not None)


LAMBDA_GRID = np.array([1.0, 0.5, 0.8, 0.95, 1.05, 1.25, 2.0])  # multipliers (× the dual optimum) bounding labels
_CHUNK = 1 << 20  # label × state entries the branch and bound expands at once


class LagrangeSolver(Solver):
    """``lagrange``: exact Lagrangian dual + branch and bound over the network graph (module docstring).

    Extra options: ``beam`` (labels kept per level by the incumbent heuristic); ``handover_labels`` (when
    the exact search has created more labels, or an eighth of them on one level — a duality gap the bounds
    cannot close quickly, e.g. from whole-block decisions — and ``highspy`` is installed, ``milp-highs``
    finishes the solve in the time left; a label count rather than a time keeps the result deterministic;
    0 never hands over); ``handover_columns`` (no hand-over when HiGHS's model would have more columns: on
    RegNetY-32GF's MDP problem, a million columns, HiGHS spent minutes in presolve past its time limit where
    the search took seconds); ``max_labels`` (memory guard per level: above it the incumbent is returned as
    "feasible" with the bound); ``max_table`` (largest elimination table; a graph that needs more goes to
    ``milp-highs`` at once, or is refused when HiGHS's model would exceed ``handover_columns`` too).  Needs
    only numpy and pandas.
    """

    name = "lagrange"
    extra_options = {
        "beam": 256, "handover_labels": 400_000, "handover_columns": 200_000, "max_labels": 2_000_000,
        "max_table": 20_000_000,
    }

    def _solve(self, problem: PruningProblem) -> SolveResult:
        deadline = time.perf_counter() + float(self.options.time_limit)
        if problem.max_kept_blocks is not None and problem.blocks:
            return self._highs(problem, "max_kept_blocks couples every block", float(self.options.time_limit))
        graph = FactorGraph(problem)
        steps = plan(graph)
        largest = max(math.prod(s.shape(graph.sizes)) for s in steps)
        columns = milp_columns(problem)
        if largest > int(self.extra["max_table"]):
            reason = f"the graph needs an elimination table of {largest} entries"
            if columns > int(self.extra["handover_columns"]):
                raise LatlabError(
                    f"{reason} and HiGHS's model would have {columns} columns: too large to solve exactly (states per "
                    f"group: up to {max(graph.sizes)}). Prune coarser channel groups (latlab prune --group-sizes N, "
                    "prune.group_sizes in a training config), or choose --solver milp-highs to try anyway")
            return self._highs(problem, reason, float(self.options.time_limit))
        handover = int(self.extra["handover_labels"]) if importlib.util.find_spec("highspy") else 0
        if columns > int(self.extra["handover_columns"]):
            handover = 0  # HiGHS would take far longer than the search, and overrun the time limit in presolve
        search = _Search(problem, Plan(graph, steps), deadline, float(self.options.mip_gap))
        res = search.run(self.name, int(self.extra["beam"]), handover, int(self.extra["max_labels"]))
        left = deadline - time.perf_counter()
        if search.stopped != "handover" or left <= 0:
            return res
        highs = self._highs(problem, res.message, left)
        if highs.status == "optimal":
            return highs
        if highs.solution is not None and problem.value(highs.solution) > problem.value(res.solution):
            res.solution = highs.solution
        res.message = highs.message
        if highs.bound is not None:
            res.bound = min(res.bound, highs.bound)
        return res

    def _highs(self, problem: PruningProblem, reason: str, time_limit: float) -> SolveResult:
        from pruning.solvers.milp import HighsSolver

        res = HighsSolver(**(vars(self.options) | {"time_limit": time_limit}))._solve(problem)
        res.backend, res.message = self.name, f"{reason}: solved by milp-highs. {res.message}"
        return res


class _Search:
    """The dual search and the branch and bound of one problem."""

    def __init__(self, problem: PruningProblem, plan: Plan, deadline: float, mip_gap: float) -> None:
        self.problem, self.plan = problem, plan
        self.deadline, self.mip_gap = deadline, mip_gap
        self.budget = float(problem.budget)
        self.tol = problem.tolerance()
        self.vtol = 1e-9 * problem.value_scale()  # values may be 1e-6 or 1e6: tolerances relative to them
        self.nodes = 0
        self.stopped = ""  # why the exact search ended early: "time", "handover" or "memory"

    def solution(self, x: np.ndarray) -> Solution:
        graph = self.plan.graph
        kept = tuple(int(graph.states[i][x[i]]) for i in range(len(self.problem.groups)))
        return Solution(kept, graph.removed(x))

    def point(self, lam: float) -> tuple[np.ndarray, float, float, Elimination]:
        """Maximiser of ``V − λT``: assignment, its value and latency, and the elimination tables."""
        e = self.plan.lagrangian(lam)
        x = e.argmax(self.plan)
        sol = self.solution(x)
        return x, self.problem.value(sol), self.problem.latency(sol), e

    def closes(self, bound: float, value: float) -> bool:
        return bound - value <= self.mip_gap * abs(bound) + self.vtol

    def run(self, backend: str, beam: int, handover: int, max_labels: int) -> SolveResult:
        """Dual, then beam and exact search; "feasible" with the bound when stopped by time or labels."""
        p = self.problem
        xa, va, ta, e = self.point(0.0)
        if ta <= self.budget + self.tol:
            msg = "λ = 0: the budget does not bind"
            return SolveResult("optimal", backend, self.solution(xa), bound=va, message=msg)
        emin = self.plan.min_latency()
        if -emin.total > self.budget + self.tol:
            return infeasible(backend, p, -emin.total)
        xb = emin.argmax(self.plan)  # in budget; the hull search trades latency for value from here
        sol = self.solution(xb)
        vb, tb = p.value(sol), p.latency(sol)
        ub, lam, iters = e.total, 0.0, 0  # L(λ) = max_x V − λ(T − B) ≥ optimum for every λ ≥ 0
        best_e, best_lam = e, 0.0
        while ta - tb > self.tol and time.perf_counter() < self.deadline:
            iters += 1
            lam = (va - vb) / (ta - tb)
            x, v, t, e = self.point(lam)
            if e.total + lam * self.budget < ub:
                ub, best_e, best_lam = e.total + lam * self.budget, e, lam
            line = vb - lam * tb  # V − λT of both end points
            if e.total <= line + 1e-3 * self.vtol + 1e-12 * abs(line):
                break
            if t <= self.budget + self.tol:
                xb, vb, tb = x, v, t
            else:
                xa, va, ta = x, v, t
        msg = f"λ = {lam:.6g} after {iters} dual steps, Lagrangian bound {ub:.9g}"
        if self.closes(ub, vb):
            return SolveResult("optimal", backend, self.solution(xb), bound=ub, message=msg)
        lams = best_lam * LAMBDA_GRID
        elims = [best_e] + [self.plan.lagrangian(float(lam)) for lam in lams[1:]]
        best, best_x, _ = self.branch_and_bound(elims, lams, emin, vb, xb, beam=beam)
        best, best_x, done = self.branch_and_bound(elims, lams, emin, best, best_x, handover=handover,
                                                   max_labels=max_labels)
        msg += f"; branch and bound: {self.nodes} labels"
        if done:
            return SolveResult("optimal", backend, self.solution(best_x), bound=best, message=msg)
        why = {"time": "time limit", "memory": f"more than {max_labels} labels on one level",
               "handover": f"more than {handover} labels in the exact search or {handover // 8} on one level"}
        return SolveResult("feasible", backend, self.solution(best_x), bound=ub, message=f"{msg} ({why[self.stopped]})")

    def branch_and_bound(
        self, elims: list[Elimination], lams: np.ndarray, emin: Elimination, best: float, best_x: np.ndarray,
        beam: int | None = None, handover: int = 0, max_labels: int | None = None,
    ) -> tuple[float, np.ndarray, bool]:
        """Breadth-first labelling in reverse elimination order with exact completion bounds and dominance.

        A label is a partial assignment.  For every multiplier ``λ_j`` in ``lams`` (tables ``elims[j]``) its
        ``F[:, j]`` is the best ``V − λ_j·T`` of any completion, so ``F[:, j] + λ_j·B`` bounds the value of
        every in-budget completion and the smallest of these is the label's bound (several λ approximate
        re-optimising the multiplier per label); ``negt`` is minus the least completion latency.  A label is
        dropped when its bound cannot beat the incumbent or its least latency exceeds the budget.  Two labels
        that agree on every variable a later step still reads have the same future, so one with no less value
        and no more latency so far dominates the other (a Pareto filter per separator assignment, as in
        dynamic programming for knapsacks).  Returns the incumbent and whether the search finished.

        With ``beam`` only that many labels with the best bounds survive each level: a fast heuristic for a
        good incumbent (the search is then not exhaustive).  Otherwise the search stops ("memory") above
        ``max_labels`` labels on a level, and ("handover") above ``handover`` labels created in all or an
        eighth of that on one level (``handover = 0``: never).
        """
        p = self.plan
        sizes = np.array(p.graph.sizes)
        order = list(reversed(range(len(p.steps))))
        reads_later = [set() for _ in order]  # variables a later (deeper) level reads
        seen: set[int] = set()
        for depth in reversed(range(len(order))):
            reads_later[depth] = set(seen)
            seen |= set(p.steps[order[depth]].scope[1:])
        X = np.zeros((1, p.n_vars), dtype=np.int16 if sizes.max() < 2**15 else np.int32)
        F = np.array([[e.total for e in elims]])
        negt = np.array([emin.total])
        t_floor = -(self.budget + self.tol)  # emin holds −T
        lam_b = lams * self.budget
        cut = best + self.mip_gap * abs(best) + self.vtol
        assigned: list[int] = []
        prev_live: list[int] = []
        created = 0
        for depth, i in enumerate(order):
            if time.perf_counter() > self.deadline:
                self.stopped = "time"
                return best, best_x, False
            s = p.steps[i]
            rest = list(s.scope[1:])
            col = np.ravel_multi_index(tuple(X[:, u] for u in rest), tuple(sizes[rest])) if rest else np.zeros(
                len(X), np.intp)
            live = sorted((set(assigned) | {s.var}) & reads_later[depth])
            compete = len(live) < len(prev_live) + 1  # a variable left: labels may now compete
            rows = max(1, _CHUNK // int(sizes[s.var]))  # labels expanded at once: memory stays bounded
            parts, kept = [], 0
            for a in range(0, len(X), rows):
                part = self._children(i, s.var, elims, emin, lam_b, X[a:a + rows], F[a:a + rows], negt[a:a + rows],
                                      col[a:a + rows], cut, t_floor)
                self.nodes += len(part[0])
                created += len(part[0])
                if compete and len(part[0]) > 1:
                    part = _front(part, lams[0], live, sizes)
                parts.append(part)
                kept += len(part[0])
                if max_labels is not None and kept > max_labels:
                    self.stopped = "memory"
                    return best, best_x, False
            if not parts:  # no label left: the incumbent is optimal
                return best, best_x, True
            X, F, negt, bound = (np.concatenate(c) for c in zip(*parts, strict=True))
            if compete and len(parts) > 1 and len(X) > 1:  # chunks dominate one another too
                X, F, negt, bound = _front((X, F, negt, bound), lams[0], live, sizes)
            assigned.append(s.var)
            prev_live = live
            if handover > 0 and (created > handover or len(X) > handover // 8):
                self.stopped = "handover"
                return best, best_x, False
            if beam is not None and len(X) > beam:
                top = np.argpartition(-bound, beam)[:beam]
                X, F, negt = X[top], F[top], negt[top]
        if len(X):
            value = F[:, 0] - lams[0] * negt  # at a leaf F = V − λT and negt = −T exactly
            j = int(np.argmax(value))
            if value[j] > best:
                best, best_x = float(value[j]), X[j].astype(int)
        return best, best_x, True

    def _children(
        self, i: int, var: int, elims: list[Elimination], emin: Elimination, lam_b: np.ndarray, X: np.ndarray,
        F: np.ndarray, negt: np.ndarray, col: np.ndarray, cut: float, t_floor: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The labels ``X`` extended by every state of step ``i``'s variable ``var`` (``col``: the labels' index
        into the step's tables), less those whose bound cannot beat ``cut`` or whose least latency exceeds the
        budget: their assignments, ``F``, ``negt`` and bounds (see :meth:`branch_and_bound`)."""
        nv = self.plan.graph.sizes[var]

        def gain(e: Elimination, state=slice(None), at=col) -> np.ndarray:
            """Best completion after choosing ``state`` minus best completion before, per label."""
            return e.psi[i].reshape(nv, -1)[state, at] - e.msg[i].reshape(-1)[at]

        with np.errstate(invalid="ignore"):  # −∞ − (−∞) where a rule is broken: NaN, never kept
            tc = negt[:, None] + gain(emin).T
            bound = np.full(tc.shape, np.inf)
            for j, e in enumerate(elims):
                np.minimum(bound, (F[:, j, None] + gain(e).T) + lam_b[j], out=bound)
            parent, state = np.nonzero((bound > cut) & (tc >= t_floor))
            F = np.stack([F[parent, j] + gain(e, state, col[parent]) for j, e in enumerate(elims)], axis=1)
        X = X[parent]
        X[:, var] = state
        return X, F, tc[parent, state], bound[parent, state]


def _front(labels: tuple[np.ndarray, ...], lam: float, live: list[int], sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    """The labels ``(X, F, negt, bound)`` not dominated at multiplier ``lam`` (see :func:`_pareto`)."""
    X, F, negt = labels[:3]
    sel = _pareto(X, F[:, 0] - lam * negt, -negt, live, sizes)
    return tuple(a[sel] for a in labels)


def _pareto(X: np.ndarray, val: np.ndarray, lat: np.ndarray, live: list[int], sizes: np.ndarray) -> np.ndarray:
    """Indices of the labels not dominated in (latency so far, value so far) per assignment of ``live``.

    ``val``/``lat`` may be off by a constant shared by labels with the same live assignment.
    """
    words = _live_words(X, live, sizes)
    idx = np.lexsort((-val, lat, *reversed(words)))  # by live assignment, latency ascending, value descending
    v, sorted_words = val[idx], [w[idx] for w in words]
    start = np.r_[True, np.any([w[1:] != w[:-1] for w in sorted_words], axis=0)]
    running = pd.Series(v).groupby(np.cumsum(start)).cummax().to_numpy()  # best value so far, per assignment
    return idx[start | (v > np.r_[-np.inf, running[:-1]])]  # a tie in value is dominated


def _live_words(X: np.ndarray, live: list[int], sizes: np.ndarray) -> list[np.ndarray]:
    """Each label's assignment of ``live`` as a few exact mixed-radix int64 words (one when it fits 62 bits)."""
    words, chunk, radix = [], [], 1
    for u in live:
        if chunk and radix * int(sizes[u]) >= 2**62:
            words.append(np.ravel_multi_index(tuple(X[:, w] for w in chunk), tuple(sizes[chunk])))
            chunk, radix = [], 1
        chunk.append(u)
        radix *= int(sizes[u])
    if chunk:
        words.append(np.ravel_multi_index(tuple(X[:, w] for w in chunk), tuple(sizes[chunk])))
    return words or [np.zeros(len(X), np.int64)]
