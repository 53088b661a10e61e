"""Optional TensorBoard scalars of a training run (``run.tensorboard: true``), written by rank 0 only.

Every scalar is logged at the global step (iterations so far): per epoch every numeric column of
``metrics.csv`` under ``epoch/``; every ``run.log_every`` iterations the training loss and learning rate
under ``train/``; each pruning step's latency target under ``prune/``. A resumed run purges what the killed
one logged after its checkpoint, so curves do not fold back on themselves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from db.errors import LatlabError


class ScalarLog:
    """TensorBoard scalars under ``OUT/tensorboard`` on the rank that ``writes``, or nothing. Every rank checks
    at once that TensorBoard is importable, so a missing package stops them all before any work; the event
    file is opened on the first scalar, so a run refused during set-up leaves none behind."""

    def __init__(self, out: Path, *, enabled: bool, writes: bool, resume_step: int = 0) -> None:
        self.writer: Any = None
        self._open: Callable[[], Any] | None = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise LatlabError("run.tensorboard is true but TensorBoard is not installed: "
                              "pip install tensorboard (or set run.tensorboard: false)") from exc
        if writes:
            purge = resume_step + 1 if resume_step else None  # drop what a killed run logged after its checkpoint
            self._open = functools.partial(SummaryWriter, str(out / "tensorboard"), purge_step=purge)

    @property
    def enabled(self) -> bool:
        """True on the rank that writes."""
        return self._open is not None

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """Every finite number of ``values`` as ``prefix/key`` at ``step``."""
        if self._open is None:
            return
        if self.writer is None:
            self.writer = self._open()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
