"""Exact MILP of every variant (OCP/MGP × LLM/MDLM), solved by HiGHS (``highspy``) or CBC (PuLP).

Model (all products of binaries linearised exactly, spec §12.2, exploiting the one-hot structure):

* ``x[g,k] ∈ {0,1}`` for every allowed ``k`` of group ``g`` (``Group.states()``), ``Σ_k x[g,k] = 1``.
* ``z[b] ∈ {0,1}`` per block (1 = removed).  A group internal to ``b``: ``x[g,0] = z[b]`` (``≥`` when
  ``min_keep = 0``), so removing the block empties the group; ``max_kept_blocks``: ``Σ_b z[b] ≥ |B| − N``.
* Objective ``max Σ_{g,k} V_g[k]·x[g,k]`` (an internal group of a removed block sits at ``k = 0``, value 0),
  less each block value ``W_t`` of a removed block: ``Σ_k W_t[k]·(u[t,k] − x[g,k])`` with ``u = x·(1 − z)``
  as below.
* Linear term ``t`` on group ``g``: ``Σ_k C_t[k]·x[g,k]``.  If ``t`` lies in block ``b`` and the term does
  not vanish by itself (its group is not internal to ``b`` or ``C_t[0] ≠ 0``), continuous
  ``u[t,k] ≥ 0`` with ``u[t,k] ≤ x[g,k]`` and ``Σ_k u[t,k] = 1 − z[b]`` replace ``x`` (``u = x·(1 − z)``).
* Pairwise term ``l`` (output group ``g``, producer ``p``): continuous ``w[l,i,j] ≥ 0`` over the allowed
  states with the *transportation* constraints ``Σ_j w[l,i,j] = x[g,i]`` and ``Σ_i w[l,i,j] = x[p,j]``;
  latency ``Σ_{i,j} M_l[i,j]·w[l,i,j]``.  With integral one-hot ``x`` the only solution is
  ``w = x_g x_pᵀ`` (one row and one column carry the unit mass), so this is exact, and its LP relaxation
  is the (tighter) aggregated form of the McCormick triples.  Layers inside a block ``b`` whose output or
  producer group is internal to ``b`` need nothing more (row/column 0 of ``M`` is 0 and that group is at
  ``k = 0`` when ``b`` is removed).  Otherwise (e.g. conv3 of a bottleneck writing the residual group)
  the equalities become ``≤`` and ``Σ_{i,j} w[l,i,j] = 1 − z[b]``: with ``z = 1`` all ``w`` vanish, with
  ``z = 0`` the unit mass sits at ``(k_g, k_p)`` again.
* Latency ``constant + Σ terms ≤ budget`` — never loosened.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pruning.problem import PruningProblem, SolveResult
from pruning.solvers.base import Solver, decode_sol, infeasible
from pruning.solvers.lagrange import minimum_latency

FEASIBILITY_TOLERANCE = 1e-10  # on the normalised latency row: within the re-check's 1e-9 (PruningProblem.check)


@dataclass
class LinearModel:
    """A solver-neutral MILP: ``max obj·v`` s.t. ``lo ≤ A v ≤ hi``, bounds, integrality."""

    names: list[str] = field(default_factory=list)
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    obj: list[float] = field(default_factory=list)
    rows: list[dict[int, float]] = field(default_factory=list)
    row_lo: list[float] = field(default_factory=list)
    row_hi: list[float] = field(default_factory=list)
    x: list[dict[int, int]] = field(default_factory=list)  # group -> {k: var}
    z: dict[int, int] = field(default_factory=dict)  # block -> var

    def var(self, name: str, *, binary: bool = False, obj: float = 0.0) -> int:
        self.names.append(name)
        self.lb.append(0.0)
        self.ub.append(1.0)
        self.integer.append(binary)
        self.obj.append(obj)
        return len(self.names) - 1

    def row(self, coefs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append(coefs)
        self.row_lo.append(lo)
        self.row_hi.append(hi)

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        starts, idx, val = [0], [], []
        for r in self.rows:
            idx.extend(r.keys())
            val.extend(r.values())
            starts.append(len(idx))
        return np.array(starts[:-1], np.int32), np.array(idx, np.int32), np.array(val, np.float64)


def _add(acc: dict[int, float], var: int, coef: float) -> None:
    if coef != 0.0:
        acc[var] = acc.get(var, 0.0) + float(coef)


def build_model(problem: PruningProblem) -> LinearModel:
    """The exact linearised MILP of ``problem`` (see the module docstring)."""
    m = LinearModel()
    inf = np.inf
    for b in problem.blocks:
        m.z[b] = m.var(f"z[{b}]", binary=True)
    for gi, g in enumerate(problem.groups):
        xs = {k: m.var(f"x[{gi},{k}]", binary=True, obj=float(g.values[k])) for k in g.states()}
        m.x.append(xs)
        m.row({v: 1.0 for v in xs.values()}, 1.0, 1.0)
        if g.block is not None:
            lo, hi = (0.0, 0.0) if g.min_keep >= 1 else (0.0, inf)
            m.row({xs[0]: 1.0, m.z[g.block]: -1.0}, lo, hi)
    if problem.max_kept_blocks is not None and problem.blocks:
        m.row({v: 1.0 for v in m.z.values()}, len(problem.blocks) - problem.max_kept_blocks, inf)

    lat: dict[int, float] = {}

    def vanishes(block: int | None, group: int) -> bool:
        return block is None or problem.groups[group].block == block

    def while_kept(name: str, group: int, block: int) -> dict[int, int]:
        """Continuous ``u[k] = x[group,k]·(1 − z[block])`` (exact for binary x and z)."""
        us = {}
        for k, xv in m.x[group].items():
            us[k] = m.var(f"u[{name},{k}]")
            m.row({us[k]: 1.0, xv: -1.0}, -inf, 0.0)
        m.row({**{u: 1.0 for u in us.values()}, m.z[block]: 1.0}, 1.0, 1.0)
        return us

    def linear(name: str, group: int, costs: np.ndarray, block: int | None) -> None:
        if vanishes(block, group) and (block is None or costs[0] == 0):
            for k, v in m.x[group].items():
                _add(lat, v, costs[k])
            return
        for k, u in while_kept(name, group, block).items():
            _add(lat, u, costs[k])

    for ti, t in enumerate(problem.block_values):
        for k, u in while_kept(t.name or f"bv{ti}", t.group, t.block).items():
            m.obj[u] += float(t.values[k])
            m.obj[m.x[t.group][k]] -= float(t.values[k])

    for ti, t in enumerate(problem.linear):
        linear(t.name or f"lin{ti}", t.group, t.costs, t.block)
    for ti, t in enumerate(problem.pairwise):
        name = t.name or f"pw{ti}"
        if t.producer is None:
            linear(name, t.group, t.matrix, t.block)
            continue
        xg, xp = m.x[t.group], m.x[t.producer]
        free = vanishes(t.block, t.group) or vanishes(t.block, t.producer)
        w = {(i, j): m.var(f"w[{name},{i},{j}]") for i in xg for j in xp}
        for (i, j), v in w.items():
            _add(lat, v, t.matrix[i, j])
        lo = 0.0 if free else -inf  # equality (transportation) or <= with the block row below
        for i, xv in xg.items():
            m.row({**{w[i, j]: 1.0 for j in xp}, xv: -1.0}, lo, 0.0)
        for j, xv in xp.items():
            m.row({**{w[i, j]: 1.0 for i in xg}, xv: -1.0}, lo, 0.0)
        if not free:
            m.row({**{v: 1.0 for v in w.values()}, m.z[t.block]: 1.0}, 1.0, 1.0)
    m.row(lat, -inf, problem.budget - problem.constant)
    return m


def decode(model: LinearModel, values) -> tuple[list[int], set[int]]:
    """Read ``k_g`` (the state with the largest ``x``) and the removed blocks from a primal vector."""
    kept = [max(xs, key=lambda k, xs=xs: values[xs[k]]) for xs in model.x]
    removed = {b for b, v in model.z.items() if values[v] > 0.5}
    return kept, removed


@contextlib.contextmanager
def _silenced_stdout(active: bool = True) -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration (C-level output, e.g. HiGHS' banner)."""
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class HighsSolver(Solver):
    """``milp-highs``: the exact MILP through ``highspy``."""

    name = "milp-highs"

    def _solve(self, problem: PruningProblem) -> SolveResult:
        import highspy

        scaled, value_scale = problem.normalized()  # HiGHS' tolerances are absolute
        model = build_model(scaled)
        o = self.options
        with _silenced_stdout(not o.verbose):  # the constructor prints a banner from C++
            h = highspy.Highs()
        h.setOptionValue("output_flag", bool(o.verbose))
        h.setOptionValue("time_limit", float(o.time_limit))
        h.setOptionValue("mip_rel_gap", float(o.mip_gap))
        h.setOptionValue("mip_abs_gap", 1e-9)  # the defaults (1e-6; feasibility 1e-6) lose value or
        h.setOptionValue("mip_feasibility_tolerance", FEASIBILITY_TOLERANCE)  # overshoot the budget
        h.setOptionValue("primal_feasibility_tolerance", FEASIBILITY_TOLERANCE)
        h.setOptionValue("threads", int(o.threads))
        h.setOptionValue("random_seed", int(o.seed))
        n = len(model.names)
        h.addCols(
            n,
            np.array(model.obj, np.float64),
            np.array(model.lb, np.float64),
            np.array(model.ub, np.float64),
            0,
            np.zeros(0, np.int32),
            np.zeros(0, np.int32),
            np.zeros(0, np.float64),
        )
        ints = np.flatnonzero(model.integer).astype(np.int32)
        h.changeColsIntegrality(len(ints), ints, np.full(len(ints), 1, np.uint8))
        starts, idx, val = model.csr()
        lo = np.array(model.row_lo, np.float64)
        hi = np.array(model.row_hi, np.float64)
        lo[np.isneginf(lo)] = -highspy.kHighsInf
        hi[np.isposinf(hi)] = highspy.kHighsInf
        h.addRows(len(model.rows), lo, hi, len(idx), starts, idx, val)
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        h.run()
        ms = h.getModelStatus()
        info = h.getInfo()
        S = highspy.HighsModelStatus
        if ms in (S.kInfeasible, S.kUnboundedOrInfeasible):
            return infeasible(self.name, problem, minimum_latency(problem))
        has_sol = info.primal_solution_status == 2
        bound = float(info.mip_dual_bound) * value_scale if np.isfinite(info.mip_dual_bound) else None
        if not has_sol:
            status = "timeout" if ms == S.kTimeLimit else "error"
            return SolveResult(status, self.name, bound=bound, message=f"HiGHS: {h.modelStatusToString(ms)}")
        kept, removed = decode(model, h.getSolution().col_value)
        status = "optimal" if ms == S.kOptimal else "feasible"
        msg = f"HiGHS: {h.modelStatusToString(ms)}" + (" (time limit)" if ms == S.kTimeLimit else "")
        return SolveResult(status, self.name, decode_sol(problem, kept, removed), bound=bound, message=msg)


class CbcSolver(Solver):
    """``milp-cbc``: the same MILP through PuLP's bundled CBC (``RandomS`` = seed).

    CBC 2.10.3 (bundled with PuLP) mis-solves some tiny models in its Cgl pre-processing (it reduces the
    model to nothing and reports a suboptimal point as "Optimal"), so ``preprocess off`` is the default
    (``cbc_options`` replaces it).
    """

    name = "milp-cbc"
    extra_options = {"cbc_options": ("preprocess off",)}

    def _solve(self, problem: PruningProblem) -> SolveResult:
        import warnings

        import pulp

        with warnings.catch_warnings():  # PuLP 3.3 deprecates PULP_CBC_CMD/LpVariable(...) for 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._solve_pulp(problem, pulp)

    def _solve_pulp(self, problem: PruningProblem, pulp) -> SolveResult:
        model = build_model(problem.normalized()[0])  # CBC's tolerances are absolute
        o = self.options
        prob = pulp.LpProblem("pruning", pulp.LpMaximize)
        vs = [
            pulp.LpVariable(f"v{i}", 0, 1, cat=pulp.LpBinary if b else pulp.LpContinuous)
            for i, b in enumerate(model.integer)
        ]
        prob += pulp.LpAffineExpression([(vs[i], c) for i, c in enumerate(model.obj) if c != 0])
        for r, (coefs, lo, hi) in enumerate(zip(model.rows, model.row_lo, model.row_hi, strict=True)):
            expr = pulp.LpAffineExpression([(vs[i], c) for i, c in coefs.items()])
            if lo == hi:
                prob += expr == lo, f"r{r}"
            else:
                if np.isfinite(lo):
                    prob += expr >= lo, f"r{r}lo"
                if np.isfinite(hi):
                    prob += expr <= hi, f"r{r}hi"
        cmd = pulp.PULP_CBC_CMD(
            msg=bool(o.verbose),
            timeLimit=float(o.time_limit),
            gapRel=float(o.mip_gap),
            threads=int(o.threads),
            options=[f"RandomS {int(o.seed)}", f"primalT {FEASIBILITY_TOLERANCE}", *self.extra["cbc_options"]],
        )
        try:
            prob.solve(cmd)
        except pulp.PulpSolverError:  # CBC writes no solution file when bound tightening proves infeasibility
            return self._infeasible(problem, "CBC stopped without a solution file")
        st = prob.status
        if st == pulp.LpStatusInfeasible:
            return self._infeasible(problem, "CBC reports the budget infeasible")
        used = {i for i, c in enumerate(model.obj) if c} | {i for row in model.rows for i in row}
        values = [v.value() if i in used else 0.0 for i, v in enumerate(vs)]  # CBC never sees an unused one
        if any(v is None for v in values) or st not in (pulp.LpStatusOptimal, pulp.LpStatusNotSolved):
            return SolveResult("error", self.name, message=f"CBC: {pulp.LpStatus[st]}")
        if prob.sol_status == pulp.LpSolutionNoSolutionFound or st == pulp.LpStatusNotSolved:
            return SolveResult("timeout", self.name, message="CBC: no integer solution within the time limit")
        kept, removed = decode(model, values)
        optimal = prob.sol_status == pulp.LpSolutionOptimal
        sol = decode_sol(problem, kept, removed)
        res = SolveResult("optimal" if optimal else "feasible", self.name, sol, message=f"CBC: {pulp.LpStatus[st]}")
        if optimal:
            res.bound = problem.value(sol)
        elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
            res.message += " (time limit; CBC's bound is not exposed by PuLP)"
        return res

    def _infeasible(self, problem: PruningProblem, claim: str) -> SolveResult:
        """CBC's word that no decision fits, checked against the exact minimum latency (near the budget its
        tolerances have said so of feasible problems)."""
        least = minimum_latency(problem)
        if least is not None and least <= problem.budget + problem.tolerance():
            return SolveResult("error", self.name, message=f"{claim}, but a decision reaches {least:.9g} within the "
                               f"budget {problem.budget:.9g} (CBC's tolerances); use lagrange or milp-highs")
        return infeasible(self.name, problem, least)
