"""Exponential latency-target schedule of HALP/MDP, keyed by the global optimizer step.

Spec §5.4: the final target is ``L_T = L0·(1 − r)`` and the step-s target (s = 1..T) is
``L_s = L0·(L_T/L0)^{s/T} = L0·(1 − r)^{s/T}``; with the 0-based step index k used here this is
``L0·(1 − r)^{(k+1)/T}`` (checked against the shipped pickles: ``cap_k = 304.74·0.3^{(k+1)/30}``).
Pruning fires at global steps ``g`` with ``g ≥ start`` and ``(g + 1 − start) % every == 0``, i.e.
``start + every − 1, start + 2·every − 1, …`` (``[H]``: 39, 79, …, 1199), ``steps`` times in all.

Unlike ``[M]`` (spec §12.2), the schedule counts *global* steps, so epochs shorter than
``steps·every`` iterations do not silently skip the later targets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from db.errors import LatlabError

__all__ = ["PRESETS", "LatencySchedule", "preset"]

# name -> (steps, every); spec §5.4 (HALP), §6 (MGP uses the HALP schedule), §7 / §13.1 (MDLM), §8.7 (MDP).
PRESETS: dict[str, tuple[int, int]] = {
    "halp": (30, 40),
    "mgp": (30, 40),
    "mdlm": (10, 120),
    "mdp": (1, 1200),
}


@dataclass
class LatencySchedule:
    """``steps`` geometric latency targets from ``l0`` down to ``l0·(1 − ratio)``, one every ``every`` steps."""

    l0: float
    ratio: float
    steps: int
    every: int
    start: int = 0

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not self.l0 > 0:
            raise LatlabError(f"dense latency l0 must be > 0, got {self.l0!r}")
        if not 0.0 <= self.ratio < 1.0:
            raise LatlabError(f"prune ratio must be in [0, 1), got {self.ratio!r}")
        if int(self.steps) < 1 or int(self.every) < 1 or int(self.start) < 0:
            raise LatlabError(f"need steps >= 1, every >= 1, start >= 0; got steps={self.steps}, "
                              f"every={self.every}, start={self.start}")
        self.steps, self.every, self.start = int(self.steps), int(self.every), int(self.start)
        self.l0, self.ratio = float(self.l0), float(self.ratio)

    @property
    def final_target(self) -> float:
        """``L0·(1 − r)``."""
        return self.l0 * (1.0 - self.ratio)

    def target(self, step_index: int) -> float:
        """Latency budget of the 0-based pruning step ``step_index``: ``L0·(1 − r)^{(k+1)/T}`` (spec §5.4)."""
        if not 0 <= step_index < self.steps:
            raise LatlabError(f"pruning step index {step_index} outside [0, {self.steps})")
        return self.l0 * (1.0 - self.ratio) ** ((step_index + 1) / self.steps)

    def targets(self) -> list[float]:
        """All ``steps`` targets in order."""
        return [self.target(k) for k in range(self.steps)]

    def prune_steps(self) -> list[int]:
        """The global steps at which pruning fires."""
        return [self.start + (k + 1) * self.every - 1 for k in range(self.steps)]

    @property
    def last_step(self) -> int:
        """Global step of the final pruning step."""
        return self.start + self.steps * self.every - 1

    def is_prune_step(self, global_step: int) -> bool:
        """True at the global steps where a pruning step happens."""
        g = global_step - self.start
        return 0 <= g <= self.last_step - self.start and (g + 1) % self.every == 0

    def step_index(self, global_step: int) -> int:
        """0-based index of the pruning step at ``global_step`` (raises if it is not a pruning step)."""
        if not self.is_prune_step(global_step):
            raise LatlabError(f"global step {global_step} is not a pruning step")
        return (global_step + 1 - self.start) // self.every - 1

    def accumulating(self, global_step: int) -> bool:
        """True while importance should be accumulated: ``start ≤ g ≤ last pruning step``."""
        return self.start <= global_step <= self.last_step

    def done(self, global_step: int) -> bool:
        """True once the final pruning step has been reached (``global_step ≥ last_step``)."""
        return global_step >= self.last_step

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (safe for ``torch.load(weights_only=True)``)."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        for key in ("l0", "ratio", "steps", "every", "start"):
            if key not in state:
                raise LatlabError(f"schedule state lacks {key!r}")
            setattr(self, key, state[key])
        self._check()


def preset(name: str, l0: float, ratio: float, start: int = 0) -> LatencySchedule:
    """The schedule of a published method: ``halp``/``mgp`` 30×40, ``mdlm`` 10×120, ``mdp`` 1×1200."""
    key = name.lower()
    if key not in PRESETS:
        raise LatlabError(f"unknown schedule preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    steps, every = PRESETS[key]
    return LatencySchedule(l0, ratio, steps, every, start)
