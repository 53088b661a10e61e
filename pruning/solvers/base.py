"""Common solver options, the base class and the result re-check every back-end goes through."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from db.errors import LatlabError
from pruning.problem import PruningProblem, Solution, SolveResult


@dataclass
class SolverOptions:
    """Options shared by all back-ends (back-ends ignore what they cannot use)."""

    time_limit: float = 60.0
    mip_gap: float = 0.0
    threads: int = 1
    seed: int = 0
    deterministic: bool = True
    verbose: bool = False


class Solver:
    """Base class: subclasses implement :meth:`_solve` and return a (possibly partial) :class:`SolveResult`."""

    name = "base"
    extra_options: dict[str, object] = {}

    def __init__(self, **options) -> None:
        known = {f.name for f in fields(SolverOptions)}
        common = {k: v for k, v in options.items() if k in known}
        extra = {k: v for k, v in options.items() if k not in known}
        bad = set(extra) - set(self.extra_options)
        if bad:
            raise LatlabError(f"solver {self.name!r}: unknown options {sorted(bad)}")
        self.options = SolverOptions(**common)
        self.extra = {**self.extra_options, **extra}

    def solve(self, problem: PruningProblem) -> SolveResult:
        """Solve, then re-check the returned solution against the problem's own tables."""
        t0 = time.perf_counter()
        try:
            res = self._solve(problem)
        except LatlabError:
            raise
        except Exception as exc:  # a solver crash is reported, never turned into "keep everything"
            res = SolveResult("error", self.name, message=f"{type(exc).__name__}: {exc}")
        res.seconds = time.perf_counter() - t0
        return finalize(problem, res)

    def _solve(self, problem: PruningProblem) -> SolveResult:  # pragma: no cover - abstract
        raise NotImplementedError


def finalize(problem: PruningProblem, res: SolveResult) -> SolveResult:
    """Recompute latency/objective from the tables; demote the status when the solution violates a rule."""
    if res.solution is None:
        if res.status in ("optimal", "feasible"):
            res.status, res.message = "error", (res.message + "; no solution returned").lstrip("; ")
        return res
    errs = problem.check(res.solution)
    res.latency = problem.latency(res.solution)
    res.objective = problem.value(res.solution)
    if errs:
        res.message = (res.message + "; " if res.message else "") + "re-check failed: " + "; ".join(errs)
        res.status = "error"
        return res
    if res.bound is not None:
        res.bound = max(res.bound, res.objective) if res.status != "optimal" else res.bound
        denom = max(abs(res.bound), 1e-12 * problem.value_scale())
        res.gap = max(0.0, (res.bound - res.objective) / denom)
    return res


def decode_sol(problem: PruningProblem, kept: list[int], removed: set[int]) -> Solution:
    """Normalise a decoded solution: internal groups of removed blocks keep 0 items."""
    ks = list(kept)
    for i, g in enumerate(problem.groups):
        if g.block is not None and g.block in removed:
            ks[i] = 0
    return Solution(tuple(int(k) for k in ks), frozenset(int(b) for b in removed))


def infeasible(backend: str, problem: PruningProblem, min_latency: float | None = None) -> SolveResult:
    """A uniform 'infeasible' result with a clear message (never a silent keep-everything)."""
    extra = "" if min_latency is None else f" {min_latency:.9g}"
    msg = f"budget {problem.budget:.9g} is below the minimum achievable latency{extra}; no pruning decision returned"
    return SolveResult("infeasible", backend, message=msg, min_latency=min_latency)
