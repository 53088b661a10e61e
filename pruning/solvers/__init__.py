"""Exact back-ends for :class:`pruning.problem.PruningProblem` (spec §5.3 rec, §12.2, §13.1 item 5).

``get_solver(name, **options).solve(problem) -> SolveResult``.  Names: ``dp`` (multiple-choice
knapsack, linear problems without blocks), ``lagrange`` (the default: Lagrangian dual by dynamic
programming over the network graph + branch and bound, every variant), ``milp-highs``, ``milp-cbc``
(exact linearised MILP), ``scip`` (bilinear MINLP), ``mindtpy`` (Pyomo MindtPy on the bilinear model, as the paper).
Solver packages are imported lazily inside the back-ends.
"""

from __future__ import annotations

from collections.abc import Callable

from db.errors import LatlabError
from pruning.solvers.base import Solver, SolverOptions

_REGISTRY: dict[str, Callable[..., Solver]] = {}


def _load(name: str) -> Callable[..., Solver]:
    if name == "dp":
        from pruning.solvers.dp import DPSolver

        return DPSolver
    if name == "milp-highs":
        from pruning.solvers.milp import HighsSolver

        return HighsSolver
    if name == "milp-cbc":
        from pruning.solvers.milp import CbcSolver

        return CbcSolver
    if name == "scip":
        from pruning.solvers.scip import ScipSolver

        return ScipSolver
    if name == "lagrange":
        from pruning.solvers.lagrange import LagrangeSolver

        return LagrangeSolver
    if name == "mindtpy":
        from pruning.solvers.mindtpy import MindtPySolver

        return MindtPySolver
    raise LatlabError(f"unknown solver {name!r}; known: {', '.join(list_solvers())}")


def list_solvers() -> list[str]:
    """Names accepted by :func:`get_solver`."""
    return ["dp", "lagrange", "milp-highs", "milp-cbc", "scip", "mindtpy"]


def get_solver(name: str, **options) -> Solver:
    """Instantiate back-end ``name`` with options (``time_limit``, ``mip_gap``, ``threads``, ``seed``, ...)."""
    return _load(name)(**options)


__all__ = ["Solver", "SolverOptions", "get_solver", "list_solvers"]
