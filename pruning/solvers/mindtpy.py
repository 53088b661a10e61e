"""``mindtpy``: Pyomo MindtPy on the bilinear model, as the MDP paper does (spec §7.2, §8.3).

* ``strategy='OA'`` (the paper: ``init_strategy='FP'``, ``mip_solver='glpk'``, ``nlp_solver='ipopt'``)
  needs IPOPT; without it a :class:`LatlabError` says how to install it.
* ``strategy='ECP'`` (default here) needs no NLP solver: extended cutting planes with ``mip_solver``
  ``'glpk'`` or ``'appsi_highs'`` (default).  It is the CI-testable reproduction.

The latency constraint is non-convex, so MindtPy gives **no optimality guarantee**: its cuts may cut off
the optimum and it may even stop without a feasible point.  The result is re-checked like any other; a
solution is reported as "feasible" (never "optimal"), with MindtPy's bound only as information.
"""

from __future__ import annotations

from db.errors import LatlabError
from pruning.problem import PruningProblem, SolveResult
from pruning.solvers.base import Solver, decode_sol, infeasible
from pruning.solvers.scip import latency_expression, value_expression


def _ecp_without_nlp():
    """MindtPy's ECP class minus its NLP-solver availability check (ECP never calls the NLP solver)."""
    from pyomo.contrib.mindtpy.extended_cutting_plane import MindtPy_ECP_Solver

    class _ECP(MindtPy_ECP_Solver):
        def check_subsolver_validity(self) -> None:
            if not self.mip_opt.available():
                raise LatlabError(f"MIP solver {self.config.mip_solver!r} for MindtPy is not available")

    return _ECP


class MindtPySolver(Solver):
    """``mindtpy``: options ``strategy`` (ECP|OA), ``mip_solver``, ``nlp_solver``, ``init_strategy``,
    ``iteration_limit``.

    Statuses: "feasible" (never "optimal"), "infeasible" (MindtPy's word, not a proof), "timeout", "error".
    """

    name = "mindtpy"
    extra_options = {
        "strategy": "ECP",
        "mip_solver": "appsi_highs",
        "nlp_solver": "ipopt",
        "init_strategy": None,
        "iteration_limit": 50,
    }

    def _solve(self, problem: PruningProblem) -> SolveResult:
        import pyomo.environ as pyo

        e = self.extra
        strategy = str(e["strategy"]).upper()
        if strategy == "OA" and not pyo.SolverFactory(e["nlp_solver"]).available(exception_flag=False):
            raise LatlabError(
                f"NLP solver {e['nlp_solver']!r} is not available: install ipopt "
                "(e.g. conda install -c conda-forge ipopt) to run MindtPy OA, or use strategy='ECP'"
            )
        if not pyo.SolverFactory(e["mip_solver"]).available(exception_flag=False):
            raise LatlabError(f"MIP solver {e['mip_solver']!r} for MindtPy is not available")
        m = pyo.ConcreteModel()
        x = []
        for gi, g in enumerate(problem.groups):
            ks = g.states()
            var = pyo.Var(ks, domain=pyo.Binary)
            m.add_component(f"x{gi}", var)
            xs = {k: var[k] for k in ks}
            x.append(xs)
            m.add_component(f"onehot{gi}", pyo.Constraint(expr=sum(xs.values()) == 1))
        m.z = pyo.Var(problem.blocks, domain=pyo.Binary)
        z = {b: m.z[b] for b in problem.blocks}
        for gi, g in enumerate(problem.groups):
            if g.block is not None:
                c = x[gi][0] == z[g.block] if g.min_keep >= 1 else x[gi][0] >= z[g.block]
                m.add_component(f"inblock{gi}", pyo.Constraint(expr=c))
        if problem.max_kept_blocks is not None and z:
            m.maxkept = pyo.Constraint(expr=sum(z.values()) >= len(z) - problem.max_kept_blocks)
        m.latency = pyo.Constraint(expr=latency_expression(problem, x, z) <= problem.budget - problem.constant)
        m.obj = pyo.Objective(expr=value_expression(problem, x, z), sense=pyo.maximize)
        kwargs = dict(
            mip_solver=e["mip_solver"],
            time_limit=float(self.options.time_limit),
            iteration_limit=int(e["iteration_limit"]),
            tee=bool(self.options.verbose),
        )
        if strategy == "OA":
            kwargs["strategy"] = "OA"
            kwargs["nlp_solver"] = e["nlp_solver"]
            kwargs["init_strategy"] = e["init_strategy"] or "FP"
        elif e["init_strategy"]:
            kwargs["init_strategy"] = e["init_strategy"]
        try:
            if strategy == "ECP":
                results = _ecp_without_nlp()().solve(m, **kwargs)
            else:
                results = pyo.SolverFactory("mindtpy").solve(m, **kwargs)
            tc = str(results.solver.termination_condition)
        except ValueError as exc:  # MindtPy raises when its main MIP becomes infeasible
            if "infeasible" not in str(exc):
                raise
            tc = "infeasible"
        if tc == "infeasible":
            res = infeasible(self.name, problem)
            res.message = (
                "MindtPy reports the budget infeasible; its cuts are not valid on this non-convex model, "
                "so this is not a proof (use milp-highs to decide)"
            )
            return res
        vals = [{k: v.value for k, v in xs.items()} for xs in x]
        if any(val is None for d in vals for val in d.values()):
            return SolveResult("timeout" if "Limit" in tc else "error", self.name, message=f"MindtPy: {tc}")
        kept = [max(d, key=lambda k, d=d: d[k]) for d in vals]
        removed = {b for b, v in z.items() if (v.value or 0) > 0.5}
        sol = decode_sol(problem, kept, removed)
        return SolveResult("feasible", self.name, sol, message=f"MindtPy {strategy}: {tc} (no optimality guarantee)")
