"""Exact multiple-choice knapsack DP for linear problems without blocks (HALP's OCP+LLM, spec §5.3 rec).

Per group choose ``k ∈ [min_keep, m]`` with cost ``C_g[k]`` (sum of the group's linear terms) and value
``V_g[k]``.  Exactness with real-valued, possibly non-monotone or negative costs:

* costs are shifted per group by their minimum over allowed ``k`` (the budget by the sum of those
  minima), which removes negative weights *without loosening the budget* (§5.3 loosens it by E);
* the shifted costs are put on an integer grid of step ``resolution`` (default: shifted budget /
  ``grid_steps`` = 100 000).  The primal DP rounds each cost **up** and the capacity down, so every DP
  solution is truly feasible; a second DP rounds costs **down** (capacity up), which is a relaxation, so its
  optimum is a proven upper bound.  The result is "optimal" when both agree, else "feasible" with the
  gap; on the grid itself the DP is exact.  If the relaxation's own argmax is truly feasible it is
  optimal outright; otherwise the grid is refined ×10 (up to ``max_grid_steps`` cells) before
  settling for a reported gap.
* Vectorised over the budget axis with numpy; Python loops run only over groups and their ``k``.
"""

from __future__ import annotations

import math

import numpy as np

from db.errors import LatlabError
from pruning.problem import PruningProblem, Solution, SolveResult
from pruning.solvers.base import Solver, infeasible


def group_costs(problem: PruningProblem) -> list[np.ndarray]:
    """Per-group cost tables of a linear problem (linear terms + fixed-input pairwise vectors)."""
    costs = [np.zeros(g.size + 1) for g in problem.groups]
    for t in problem.linear:
        costs[t.group] = costs[t.group] + t.costs
    for t in problem.pairwise:
        if t.producer is not None:
            raise LatlabError("dp: pairwise (MDLM) terms need a MILP back-end")
        costs[t.group] = costs[t.group] + t.matrix
    return costs


def _mck(weights: list[np.ndarray], values: list[np.ndarray], cap: int) -> tuple[float, list[int]] | None:
    """Max value with Σ weight ≤ cap, one option per group; weights are non-negative ints. None if infeasible."""
    neg = -np.inf
    dp = np.zeros(cap + 1)  # dp[c]: best value of the groups so far with total weight <= c
    choices = []
    small = max((len(w) for w in weights), default=0) < 127
    for w, v in zip(weights, values, strict=True):
        new = np.full(cap + 1, neg)
        arg = np.full(cap + 1, -1, dtype=np.int8 if small else np.int32)
        for j in range(len(w)):
            wj = int(w[j])
            if wj > cap:
                continue
            cand = dp[: cap + 1 - wj] + v[j]
            seg = new[wj:]
            better = cand > seg
            seg[better] = cand[better]
            arg[wj:][better] = j
        dp = new
        choices.append(arg)
    if not np.isfinite(dp[cap]):
        return None
    picks = []
    c = cap
    for w, arg in zip(reversed(weights), reversed(choices), strict=True):
        j = int(arg[c])
        picks.append(j)
        c -= int(w[j])
    return float(dp[cap]), picks[::-1]


class DPSolver(Solver):
    """``dp``: exact multiple-choice knapsack; options ``resolution`` or ``grid_steps``/``max_grid_steps``."""

    name = "dp"
    extra_options = {"resolution": None, "grid_steps": 100_000, "max_grid_steps": 1_000_000}

    def _solve(self, problem: PruningProblem) -> SolveResult:
        if problem.has_blocks or problem.max_kept_blocks is not None:
            raise LatlabError("dp: problems with blocks (MGP/MDP) need a MILP back-end")
        costs = group_costs(problem)
        states = [np.array(g.states(), dtype=int) for g in problem.groups]
        c_opt = [c[s] for c, s in zip(costs, states, strict=True)]
        v_opt = [g.values[s] for g, s in zip(problem.groups, states, strict=True)]
        mins = [float(c.min()) for c in c_opt]
        shifted = [c - m for c, m in zip(c_opt, mins, strict=True)]
        base = problem.constant + sum(mins)
        slack = problem.budget - base
        min_sol = Solution(tuple(int(s[np.argmin(c)]) for s, c in zip(states, c_opt, strict=True)))
        if slack < -problem.tolerance():
            return infeasible(self.name, problem, problem.latency(min_sol))
        slack = max(slack, 0.0)
        span = float(sum(s.max() for s in shifted))
        if slack >= span:  # every choice fits: the most valuable one is optimal
            best = Solution(tuple(int(s[np.argmax(v)]) for s, v in zip(states, v_opt, strict=True)))
            msg = "the budget does not bind"
            return SolveResult("optimal", self.name, best, bound=problem.value(best), message=msg)
        fixed = self.extra["resolution"]
        steps = int(self.extra["grid_steps"])
        while True:
            res = float(fixed) if fixed is not None else max(min(slack, span), 1e-12 * span) / steps
            if res <= 0:
                raise LatlabError("dp: resolution must be > 0")
            out = self._grid(problem, states, shifted, v_opt, slack, res, min_sol)
            if out.status == "optimal" or fixed is not None or steps * 10 > int(self.extra["max_grid_steps"]):
                return out
            steps *= 10  # refine the grid once more before settling for a gap

    def _grid(self, problem, states, shifted, v_opt, slack, res, min_sol) -> SolveResult:
        """Primal (costs rounded up) and relaxation (costs rounded down) DPs on one grid."""
        cells = slack / res
        scaled = [np.minimum(s / res, cells + 2.0) for s in shifted]  # options above the capacity stay above it
        eps = 1e-9
        w_up = [np.ceil(x - eps * (1 + x)).astype(np.int64) for x in scaled]
        w_dn = [np.floor(x - eps * (1 + x)).clip(min=0).astype(np.int64) for x in scaled]
        cap_up = min(int(math.floor(cells * (1 + eps))), int(sum(int(w.max()) for w in w_up)))
        cap_dn = min(int(math.floor(cells * (1 + eps) + 1e-6)), int(sum(int(w.max()) for w in w_dn)))
        relax = _mck(w_dn, v_opt, cap_dn)
        bound = None if relax is None else relax[0]
        msg = f"grid resolution {res:.6g}, capacity {cap_up} cells"
        if relax is not None:  # the relaxation's argmax is optimal whenever it is truly feasible
            cand = Solution(tuple(int(s[j]) for s, j in zip(states, relax[1], strict=True)))
            if problem.is_feasible(cand):
                return SolveResult("optimal", self.name, cand, bound=bound, message=msg)
        primal = _mck(w_up, v_opt, cap_up)
        if primal is None:  # only possible through grid rounding: the min-latency choice is feasible
            msg = f"grid too coarse (resolution {res:.3g}); returning the minimum-latency solution"
            return SolveResult("feasible", self.name, min_sol, bound=bound, message=msg)
        obj, picks = primal
        sol = Solution(tuple(int(s[j]) for s, j in zip(states, picks, strict=True)))
        status = "optimal" if bound is not None and bound - obj <= 1e-9 * problem.value_scale() else "feasible"
        return SolveResult(status, self.name, sol, bound=bound, message=msg)
