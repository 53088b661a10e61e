"""``scip``: the *bilinear* (non-linearised) model solved directly by SCIP through ``pyscipopt``.

Same variables as the MILP (one-hot ``x[g,k]``, block binaries ``z[b]``, ``x[g,0] = z[b]`` for internal
groups), but the latency keeps the products: ``Σ_l (1 − z_b)·Σ_{i,j} M_l[i,j]·x[g,i]·x[p,j]``.  SCIP
handles products of binaries exactly (it linearises/branches itself), so the result is a proven optimum
when it reports "optimal". A block value makes the objective bilinear too (``− W_t[k]·x[g,k]·z_b``); SCIP
takes it through an epigraph variable.
"""

from __future__ import annotations

import numpy as np

from pruning.problem import PruningProblem, SolveResult
from pruning.solvers.base import Solver, decode_sol, infeasible
from pruning.solvers.lagrange import minimum_latency


def latency_terms(problem: PruningProblem, x: list[dict[int, object]], z: dict[int, object]):
    """Yield ``(coef, factors)`` monomials of the latency (factors: variables, or ``("1-z", var)``)."""

    def scale(block: int | None, group: int, producer: int | None):
        gs = problem.groups
        if block is None or gs[group].block == block or (producer is not None and gs[producer].block == block):
            return ()
        return (("1-z", z[block]),)

    for t in problem.linear:
        extra = (
            ()
            if (t.block is None or (problem.groups[t.group].block == t.block and t.costs[0] == 0))
            else (("1-z", z[t.block]),)
        )
        for k, v in x[t.group].items():
            if t.costs[k] != 0:
                yield float(t.costs[k]), (v, *extra)
    for t in problem.pairwise:
        if t.producer is None:
            extra = scale(t.block, t.group, None)
            for k, v in x[t.group].items():
                if t.matrix[k] != 0:
                    yield float(t.matrix[k]), (v, *extra)
            continue
        extra = scale(t.block, t.group, t.producer)
        for i, xi in x[t.group].items():
            for j, xj in x[t.producer].items():
                if t.matrix[i, j] != 0:
                    yield float(t.matrix[i, j]), (xi, xj, *extra)



def latency_expression(problem: PruningProblem, x: list[dict[int, object]], z: dict[int, object]):
    """The latency as one polynomial expression of the solver's variables (SCIP and Pyomo alike)."""
    lat = 0
    for coef, factors in latency_terms(problem, x, z):
        term = coef
        for f in factors:
            term = term * ((1 - f[1]) if isinstance(f, tuple) else f)
        lat = lat + term
    return lat

def value_expression(problem: PruningProblem, x: list[dict[int, object]], z: dict[int, object]):
    """The objective as one polynomial of the solver's variables: kept values less removed blocks' values."""
    obj = 0
    for g, xs in zip(problem.groups, x, strict=True):
        obj = obj + sum(float(g.values[k]) * v for k, v in xs.items())
    for t in problem.block_values:
        obj = obj - sum(float(t.values[k]) * v * z[t.block] for k, v in x[t.group].items() if t.values[k] != 0)
    return obj


class ScipSolver(Solver):
    """``scip``: direct MINLP with SCIP on the bilinear/trilinear model."""

    name = "scip"

    def _solve(self, problem: PruningProblem) -> SolveResult:
        import pyscipopt

        o = self.options
        scaled, value_scale = problem.normalized()  # SCIP's tolerances are absolute
        m = pyscipopt.Model("pruning")
        if not o.verbose:
            m.hideOutput()
        m.setParam("limits/time", float(o.time_limit))
        m.setParam("limits/gap", float(o.mip_gap))
        m.setParam("randomization/randomseedshift", int(o.seed))
        m.setParam("numerics/feastol", 1e-9)  # 1e-6 overshoots the re-check; below its epsilon (1e-9) presolve errs
        z = {b: m.addVar(f"z{b}", vtype="B") for b in scaled.blocks}
        x = []
        for gi, g in enumerate(scaled.groups):
            xs = {k: m.addVar(f"x{gi}_{k}", vtype="B") for k in g.states()}
            x.append(xs)
            m.addCons(pyscipopt.quicksum(xs.values()) == 1)
            if g.block is not None:
                if g.min_keep >= 1:
                    m.addCons(xs[0] == z[g.block])
                else:
                    m.addCons(xs[0] >= z[g.block])
        if scaled.max_kept_blocks is not None and z:
            m.addCons(pyscipopt.quicksum(z.values()) >= len(z) - scaled.max_kept_blocks)
        empty = pyscipopt.Expr()  # a problem with no latency terms or no values still gets expressions, not numbers
        m.addCons(empty + latency_expression(scaled, x, z) <= scaled.budget - scaled.constant)
        obj = empty + value_expression(scaled, x, z)
        if scaled.block_values:  # SCIP's objective must be linear: maximise t ≤ obj
            t = m.addVar("objective", lb=None)
            m.addCons(t <= obj)
            obj = t
        m.setObjective(obj, "maximize")
        m.optimize()
        st = m.getStatus()
        if st == "infeasible":
            return infeasible(self.name, problem, minimum_latency(problem))
        bound = m.getDualbound()
        bound = float(bound) * value_scale if np.isfinite(bound) and abs(bound) < 1e19 else None
        if m.getNSols() == 0:
            return SolveResult(
                "timeout" if st == "timelimit" else "error", self.name, bound=bound, message=f"SCIP: {st}"
            )
        sol = m.getBestSol()
        kept = [max(xs, key=lambda k, xs=xs: sol[xs[k]]) for xs in x]
        removed = {b for b, v in z.items() if sol[v] > 0.5}
        status = "optimal" if st in ("optimal", "gaplimit") else "feasible"  # gaplimit: optimal within mip_gap
        return SolveResult(status, self.name, decode_sol(problem, kept, removed), bound=bound, message=f"SCIP: {st}")
