"""One solver-independent description of a latency-constrained pruning problem (HALP/MGP/MDLM/MDP).

Spec: ``/work/shared/reference/halp_mdp_spec.md`` §5 (OCP+LLM), §6 (MGP blocks), §7 (MDLM), §8 (MDP).

Decision: for every group ``g`` keep ``k_g`` of its ``m_g`` items (items sorted by importance, so the
top ``k_g`` are kept), and for every block ``b`` decide whether it is removed (``z_b = 1``).

Rules (documented decisions):

* A group keeps ``k_g ∈ [min_keep_g, m_g]``; ``min_keep_g`` defaults to 1 (MDP and its HALP baseline keep
  ≥ 1 item, §5.3, §8.2 constraint 2).  ``min_keep_g = 0`` allows removing the layer (HALP's own default);
  ``min_keep_g = m_g`` pins a group at full width (the MDP stem, §8.2 constraint 3). ``max_keep_g`` (default
  ``m_g``) caps it: while pruning during training, items already pruned stay pruned.
* A group *internal* to block ``b`` (``Group.block = b``, e.g. conv1/conv2 of a bottleneck) has
  ``k_g = 0`` exactly when ``b`` is removed (its value vanishes); otherwise it obeys ``min_keep_g``.
  Groups that only have some layers in a block (the coupled residual groups) are not internal: their
  width stays; the block's layers' latency vanishes, and so does their share of the group's value
  (:class:`BlockValue`: conv3 of a removed bottleneck no longer uses its channels, §8.2's objective
  ``Σ_l z_b(l)·V_l[k]``).
* Latency: ``T = constant + Σ_linear C_t[k_g(t)]·(1 − z_b(t)) + Σ_pairwise M_l[k_g(l), k_p(l)]·(1 − z_b(l))``.
  Terms with ``block=None`` always count.  Row 0 and column 0 of every pairwise matrix must be 0 (zero
  channels cost nothing, §7.1); linear tables may have any values (non-monotone LUTs are fine).
* Value: ``Σ_g V_g[k_g] − Σ_blockvalue W_t[k_g(t)]·z_b(t)`` with ``V_g[0] = W_t[0] = 0`` (cumulative top-k
  importance sums, §4.4 / §7.2; ``W_t`` is the part of ``V_g`` that the layers of block ``b`` hold).
* Optional ``max_kept_blocks`` bounds the number of blocks *kept* (MGP ``--blocks_num``, §6.3 item 6).
* The budget is never loosened (unlike ``C + E`` of the reference code, §12.2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from db.errors import LatlabError

STATUSES = ("optimal", "feasible", "infeasible", "timeout", "error")


@dataclass(frozen=True)
class Group:
    """A channel group with ``size`` items; ``values[k]`` = value of keeping the top ``k`` items."""

    size: int
    values: np.ndarray
    min_keep: int = 1
    block: int | None = None
    name: str = ""
    max_keep: int | None = None

    @classmethod
    def from_importances(
        cls, importances: Sequence[float], *, min_keep: int = 1, block: int | None = None, name: str = "",
        max_keep: int | None = None,
    ) -> Group:
        """Build from per-item importances (any order; sorted descending, cumulated)."""
        imp = np.sort(np.asarray(importances, dtype=float))[::-1]
        return cls(len(imp), np.concatenate([[0.0], np.cumsum(imp)]), min_keep, block, name, max_keep)

    @property
    def most(self) -> int:
        """The most items the group may keep: ``max_keep`` (items already pruned stay pruned), else ``size``."""
        return self.size if self.max_keep is None else self.max_keep

    def states(self) -> list[int]:
        """Allowed ``k`` values (0 included for internal groups of a block, whose removal forces 0)."""
        ks = list(range(max(self.min_keep, 0), self.most + 1))
        if self.block is not None and 0 not in ks:
            ks.insert(0, 0)
        return ks


@dataclass(frozen=True)
class LinearTerm:
    """Latency ``costs[k]`` of the group's layers when ``k`` items are kept (input widths frozen; LLM)."""

    group: int
    costs: np.ndarray
    block: int | None = None
    name: str = ""


@dataclass(frozen=True)
class PairwiseTerm:
    """MDLM layer: latency ``matrix[k_out, k_in]`` (``producer=None``: a vector over ``k_out``)."""

    group: int
    producer: int | None
    matrix: np.ndarray
    block: int | None = None
    name: str = ""


@dataclass(frozen=True)
class BlockValue:
    """The part ``values[k]`` of a (non-internal) group's value that its layers in ``block`` hold: lost when the
    block is removed (§4.2 per-layer split, §8.2 objective)."""

    group: int
    block: int
    values: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class Solution:
    """Kept items per group and the set of removed blocks."""

    kept: tuple[int, ...]
    removed_blocks: frozenset[int] = frozenset()


@dataclass
class SolveResult:
    """What every back-end returns; ``latency`` and feasibility are re-checked with :meth:`PruningProblem.check`.

    ``status``: "optimal" (proven, within ``mip_gap``), "feasible" (a checked solution without proof, e.g.
    time limit reached with an incumbent, MindtPy), "infeasible" (budget below the minimum latency; no
    solution, never "keep everything"), "timeout" (time limit reached without any solution), "error"
    (solver failure, or a returned point that failed the re-check; the message says which).
    ``bound`` is a proven upper bound on the objective when the back-end has one; ``gap`` =
    (bound − objective)/|bound|.
    """

    status: str
    backend: str
    solution: Solution | None = None
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    latency: float | None = None
    seconds: float = 0.0
    message: str = ""
    min_latency: float | None = None  # "infeasible": the least latency any decision reaches, when known

    @property
    def kept(self) -> tuple[int, ...] | None:
        return None if self.solution is None else self.solution.kept

    @property
    def removed_blocks(self) -> frozenset[int] | None:
        return None if self.solution is None else self.solution.removed_blocks

    @property
    def ok(self) -> bool:
        """A feasible solution is available."""
        return self.solution is not None and self.status in ("optimal", "feasible", "timeout")

    def as_dict(self) -> dict:
        """The result as plain JSON-ready values."""
        return {
            "status": self.status,
            "backend": self.backend,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "latency": self.latency,
            "seconds": self.seconds,
            "message": self.message,
            "kept": None if self.solution is None else list(self.solution.kept),
            "removed_blocks": None if self.solution is None else sorted(self.solution.removed_blocks),
        }


@dataclass
class PruningProblem:
    """Maximise ``Σ_g V_g[k_g]`` subject to latency ``T(k, z) ≤ budget`` (see the module docstring)."""

    groups: list[Group]
    budget: float
    linear: list[LinearTerm] = field(default_factory=list)
    pairwise: list[PairwiseTerm] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    constant: float = 0.0
    max_kept_blocks: int | None = None
    name: str = ""
    block_values: list[BlockValue] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.groups = [
            Group(g.size, np.asarray(g.values, dtype=float), g.min_keep, g.block, g.name, g.max_keep)
            for g in self.groups
        ]
        self.linear = [LinearTerm(t.group, np.asarray(t.costs, dtype=float), t.block, t.name) for t in self.linear]
        self.pairwise = [
            PairwiseTerm(t.group, t.producer, np.asarray(t.matrix, dtype=float), t.block, t.name) for t in self.pairwise
        ]
        self.block_values = [BlockValue(t.group, t.block, np.asarray(t.values, dtype=float), t.name)
                             for t in self.block_values]
        used = {g.block for g in self.groups} | {t.block for t in self.linear} | {t.block for t in self.pairwise}
        used |= {t.block for t in self.block_values}
        self.blocks = sorted(set(self.blocks) | (used - {None}))
        self.validate()

    # ------------------------------------------------------------------ structure
    @property
    def has_blocks(self) -> bool:
        return bool(self.blocks)

    @property
    def is_linear(self) -> bool:
        """Only linear terms (pairwise terms with a fixed input count as linear)."""
        return all(t.producer is None for t in self.pairwise)

    @property
    def kind(self) -> str:
        """``OCP+LLM``, ``MGP+LLM``, ``OCP+MDLM`` or ``MDP`` (for reports)."""
        gran = "MGP" if self.has_blocks else "OCP"
        if self.is_linear:
            return f"{gran}+LLM"
        return "MDP" if self.has_blocks else "OCP+MDLM"

    def validate(self) -> None:
        """Raise :class:`LatlabError` on malformed tables."""
        if not math.isfinite(self.budget):
            raise LatlabError(f"budget must be finite, got {self.budget}")
        for i, g in enumerate(self.groups):
            if g.size < 1:
                raise LatlabError(f"group {i}: size must be >= 1")
            if g.values.shape != (g.size + 1,):
                raise LatlabError(f"group {i}: values must have size+1={g.size + 1} entries, got {g.values.shape}")
            if g.values[0] != 0 or not np.all(np.isfinite(g.values)):
                raise LatlabError(f"group {i}: values[0] must be 0 and all values finite")
            if not 0 <= g.min_keep <= g.size:
                raise LatlabError(f"group {i}: min_keep {g.min_keep} outside [0, {g.size}]")
            if g.max_keep is not None and not (g.min_keep <= g.max_keep <= g.size or (g.max_keep == 0 and
                                                                                       g.block is not None)):
                raise LatlabError(f"group {i}: max_keep {g.max_keep} outside [{g.min_keep}, {g.size}]")
        n = len(self.groups)
        for t in self.linear:
            if not 0 <= t.group < n:
                raise LatlabError(f"linear term {t.name!r}: unknown group {t.group}")
            if t.costs.shape != (self.groups[t.group].size + 1,) or not np.all(np.isfinite(t.costs)):
                raise LatlabError(f"linear term {t.name!r}: costs must be finite with size+1 entries")
        for t in self.pairwise:
            if not 0 <= t.group < n or (t.producer is not None and not 0 <= t.producer < n):
                raise LatlabError(f"pairwise term {t.name!r}: unknown group/producer")
            rows = self.groups[t.group].size + 1
            if t.producer is None:
                if t.matrix.shape != (rows,):
                    raise LatlabError(f"pairwise term {t.name!r}: vector must have {rows} entries")
                if t.matrix[0] != 0:
                    raise LatlabError(f"pairwise term {t.name!r}: entry 0 (no channels) must be 0")
            else:
                shape = (rows, self.groups[t.producer].size + 1)
                if t.matrix.shape != shape:
                    raise LatlabError(f"pairwise term {t.name!r}: matrix shape {t.matrix.shape} != {shape}")
                if np.any(t.matrix[0, :] != 0) or np.any(t.matrix[:, 0] != 0):
                    raise LatlabError(f"pairwise term {t.name!r}: row 0 and column 0 (no channels) must be 0")
            if not np.all(np.isfinite(t.matrix)):
                raise LatlabError(f"pairwise term {t.name!r}: non-finite latency")
        for t in self.block_values:
            if not 0 <= t.group < n:
                raise LatlabError(f"block value {t.name!r}: unknown group {t.group}")
            if self.groups[t.group].block is not None:
                raise LatlabError(f"block value {t.name!r}: group {t.group} is internal to block "
                                  f"{self.groups[t.group].block}; its whole value already goes with it")
            if t.values.shape != (self.groups[t.group].size + 1,) or t.values[0] != 0 or not np.all(
                    np.isfinite(t.values)):
                raise LatlabError(f"block value {t.name!r}: values must be finite, size+1 entries, values[0] = 0")

    # ------------------------------------------------------------------ evaluation
    def latency(self, sol: Solution) -> float:
        """Latency of ``sol`` recomputed from the tables."""
        k, rm = sol.kept, sol.removed_blocks
        total = float(self.constant)
        for t in self.linear:
            if t.block is None or t.block not in rm:
                total += float(t.costs[k[t.group]])
        for t in self.pairwise:
            if t.block is None or t.block not in rm:
                if t.producer is None:
                    total += float(t.matrix[k[t.group]])
                else:
                    total += float(t.matrix[k[t.group], k[t.producer]])
        return total

    def value(self, sol: Solution) -> float:
        """Total kept value ``Σ_g V_g[k_g]``, less the block values of removed blocks."""
        kept = sum(g.values[k] for g, k in zip(self.groups, sol.kept, strict=True))
        lost = sum(t.values[sol.kept[t.group]] for t in self.block_values if t.block in sol.removed_blocks)
        return float(kept - lost)

    def latency_scale(self) -> float:
        """Magnitude of the latencies (budget, constant and each term's largest entry), for the feasibility
        tolerance ``1e-9·scale``; 1 when all are 0."""
        s = abs(self.budget) + abs(self.constant)
        s += sum(float(np.abs(t.costs).max()) for t in self.linear)
        s += sum(float(np.abs(t.matrix).max()) for t in self.pairwise)
        return s if s > 0 else 1.0

    def value_scale(self) -> float:
        """Magnitude of the values (each group's and block value's largest entry), for optimality tolerances
        relative to it (importance sums may be 1e-6 or 1e6); 1 when all are 0."""
        s = sum(float(np.abs(g.values).max()) for g in self.groups)
        s += sum(float(np.abs(t.values).max()) for t in self.block_values)
        return s if s > 0 else 1.0

    def tolerance(self) -> float:
        """Latency tolerance of the feasibility re-check (relative to :meth:`latency_scale`)."""
        return 1e-9 * self.latency_scale()

    def normalized(self) -> tuple[PruningProblem, float]:
        """The same problem with values divided by :meth:`value_scale` and latencies by :meth:`latency_scale`, and
        the value factor. Same decisions, numbers near 1: for back-ends whose tolerances are absolute."""
        vs, ls = self.value_scale(), self.latency_scale()
        replace = dataclasses.replace
        return replace(
            self,
            groups=[replace(g, values=g.values / vs) for g in self.groups],
            block_values=[replace(t, values=t.values / vs) for t in self.block_values],
            linear=[replace(t, costs=t.costs / ls) for t in self.linear],
            pairwise=[replace(t, matrix=t.matrix / ls) for t in self.pairwise],
            budget=self.budget / ls,
            constant=self.constant / ls,
        ), vs

    def check(self, sol: Solution) -> list[str]:
        """Every violated rule of ``sol`` (empty list = feasible); independent of any solver."""
        errs: list[str] = []
        if len(sol.kept) != len(self.groups):
            return [f"{len(sol.kept)} group entries for {len(self.groups)} groups"]
        unknown = set(sol.removed_blocks) - set(self.blocks)
        if unknown:
            errs.append(f"unknown blocks removed: {sorted(unknown)}")
        for i, (g, k) in enumerate(zip(self.groups, sol.kept, strict=True)):
            if g.block is not None and g.block in sol.removed_blocks:
                if k != 0:
                    errs.append(f"group {i} is internal to removed block {g.block} but keeps {k}")
            elif not g.min_keep <= k <= g.most:
                errs.append(f"group {i} keeps {k}, outside [{g.min_keep}, {g.most}]")
        if errs:
            return errs
        kept_blocks = len(self.blocks) - len(sol.removed_blocks)
        if self.max_kept_blocks is not None and kept_blocks > self.max_kept_blocks:
            errs.append(f"{kept_blocks} blocks kept > max_kept_blocks={self.max_kept_blocks}")
        lat = self.latency(sol)
        if lat > self.budget + self.tolerance():
            errs.append(f"latency {lat:.9g} exceeds budget {self.budget:.9g}")
        return errs

    def is_feasible(self, sol: Solution) -> bool:
        return not self.check(sol)

    def dense_solution(self) -> Solution:
        """Keep everything (for reference latencies; never a silent fallback)."""
        return Solution(tuple(g.size for g in self.groups), frozenset())

    def with_budget(self, budget: float) -> PruningProblem:
        """A copy with another budget."""
        return dataclasses.replace(self, budget=budget)

    def enumerate_solutions(self, limit: int = 200_000):
        """Yield every structurally valid solution (brute force for tests; raises above ``limit``)."""
        import itertools

        count = 1
        for g in self.groups:
            count *= len(g.states())
        count *= 2 ** len(self.blocks)
        if count > limit:
            raise LatlabError(f"{count} candidate solutions > limit {limit}")
        for zs in itertools.product((0, 1), repeat=len(self.blocks)):
            removed = frozenset(b for b, z in zip(self.blocks, zs, strict=True) if z)
            choices = []
            for g in self.groups:
                if g.block is not None and g.block in removed:
                    choices.append([0])
                else:
                    choices.append([k for k in g.states() if k >= g.min_keep])
            for ks in itertools.product(*choices):
                sol = Solution(tuple(ks), removed)
                kept_blocks = len(self.blocks) - len(removed)
                if self.max_kept_blocks is None or kept_blocks <= self.max_kept_blocks:
                    yield sol

    def brute_force(self) -> tuple[float | None, Solution | None]:
        """Exact optimum by enumeration (tiny instances only); ``(None, None)`` when infeasible."""
        best, arg = None, None
        tol = self.tolerance()
        for sol in self.enumerate_solutions():
            if self.latency(sol) <= self.budget + tol:
                v = self.value(sol)
                if best is None or v > best:
                    best, arg = v, sol
        return best, arg
