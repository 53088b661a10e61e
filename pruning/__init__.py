"""Latency-constrained pruning (HALP / MGP / MDLM / MDP).

Modules: ``graph`` (NetworkSpec: groups, items, blocks), ``mdp_tables`` (HALP/MDP json tables),
``importance``, ``cost`` (network + latency model → problem), ``problem`` + ``solvers`` (exact back-ends),
``masks``, ``schedule``, ``export``, ``rebuild`` (a network at given widths, for timing), ``check`` (export check
of a network pruned at random), ``loss`` (the classification loss importance and training share), ``oneshot``
(the whole chain once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db._lazy import lazy_getattr

if TYPE_CHECKING:
    from pruning.graph import NetworkSpec, build_network_spec
    from pruning.problem import PruningProblem, SolveResult
    from pruning.solvers import get_solver, list_solvers

__all__ = [
    "NetworkSpec", "PruningProblem", "SolveResult", "build_network_spec", "get_solver", "list_solvers",
]
# each name is imported from its submodule on first use (importing one submodule stays light)
__getattr__ = lazy_getattr(__name__, {
    **dict.fromkeys(("NetworkSpec", "build_network_spec"), "pruning.graph"),
    **dict.fromkeys(("PruningProblem", "SolveResult"), "pruning.problem"),
    **dict.fromkeys(("get_solver", "list_solvers"), "pruning.solvers"),
})
