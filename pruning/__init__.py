"""Latency-constrained pruning (HALP / MGP / MDLM / MDP).

Modules: ``graph`` (NetworkSpec: groups, items, blocks), ``mdp_tables`` (HALP/MDP json tables),
``importance``, ``cost`` (network + latency model → problem), ``problem`` + ``solvers`` (exact back-ends),
``masks``, ``schedule``, ``export``, ``oneshot`` (the whole chain once).
"""

from pruning.graph import NetworkSpec, build_network_spec
from pruning.problem import PruningProblem, SolveResult
from pruning.solvers import get_solver, list_solvers

__all__ = ["NetworkSpec", "PruningProblem", "SolveResult", "build_network_spec", "get_solver", "list_solvers"]
