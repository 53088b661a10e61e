"""The interface every timing backend implements, and the result it returns."""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from db.errors import LatlabError
from db.keys import ConvConfig
from profiler.protocol import CUDNN_FIELDS, TimingProtocol

if TYPE_CHECKING:
    import torch


class BackendUnavailableError(LatlabError):
    """The backend cannot run here (e.g. ``cuda`` without a GPU); the message says why."""


class MeasurementFailed(LatlabError):
    """One configuration could not be measured; ``status`` is ``oom`` or ``error``.

    The runner records it as a failed row and goes on with the next configuration.
    """

    def __init__(self, message: str, status: str = "error") -> None:
        super().__init__(message)
        self.status = status


@dataclass
class TimingResult:
    """Samples of one configuration in milliseconds per call (per batch), plus telemetry."""

    samples_ms: list[float]
    telemetry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("a TimingResult needs at least one sample")

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.samples_ms))

    @property
    def mean_ms(self) -> float:
        return float(statistics.fmean(self.samples_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.samples_ms))

    @property
    def iqr_ms(self) -> float:
        return iqr(self.samples_ms)

    @property
    def rel_iqr(self) -> float:
        med = self.median_ms
        return self.iqr_ms / med if med > 0 else 0.0


def round_order(n: int, r: int) -> list[int]:
    """Model order in interleaved round ``r``: forwards on even rounds, backwards on odd ones (A B, B A, ...)."""
    return list(range(n)) if r % 2 == 0 else list(range(n - 1, -1, -1))


def iqr(samples: list[float]) -> float:
    """Inter-quartile range (linear interpolation, like ``numpy.percentile``)."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return float(q3 - q1)


class Backend(ABC):
    """Times one :class:`ConvConfig` at a time under a :class:`TimingProtocol`.

    Subclasses set ``name`` and ``default_timer``, and implement :meth:`measure`. The constructor
    must raise :class:`BackendUnavailableError` (with the reason) when the backend cannot run here.
    """

    name: ClassVar[str]
    default_timer: ClassVar[str]
    supports_llc_flush: ClassVar[bool] = False
    uses_cudnn: ClassVar[bool] = False

    def __init__(self, protocol: TimingProtocol | None = None) -> None:
        self.protocol = protocol or TimingProtocol()
        if self.protocol.llc_flush and not self.supports_llc_flush:
            raise LatlabError(f"the {self.name} backend does not implement llc_flush (the cpu backend does; "
                              "on a GPU, l2_flush flushes its last-level cache)")

    @property
    def timer(self) -> str:
        return self.default_timer if self.protocol.timer == "auto" else self.protocol.timer

    @abstractmethod
    def measure(self, config: ConvConfig) -> TimingResult:
        """Time ``config``; raise :class:`MeasurementFailed` for OOM or a library error."""

    @abstractmethod
    def measure_model(
        self, model: torch.nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32",
        layout: str = "nchw",
    ) -> TimingResult:
        """Time one forward pass of a whole ``model`` (eval, inference mode) on a random input
        of ``input_shape`` (batch first); raise :class:`MeasurementFailed` on OOM/library error."""

    def measure_rounds(
        self, models: Sequence[torch.nn.Module], input_shape: tuple[int, ...], rounds: int, dtype: str = "fp32",
        layout: str = "nchw",
    ) -> tuple[list[list[TimingResult]], dict[int, MeasurementFailed]]:
        """Time ``models`` in turns: ``rounds`` rounds, each timing every model once under the protocol, in the
        order 0 1 2 …, then … 2 1 0 (so drift of the host hits them alike). Returns one result per round for
        each model, and the failures by model index (a failed model is skipped in the later rounds).

        This default calls :meth:`measure_model` each time; a backend may prepare each model only once.
        """
        results: list[list[TimingResult]] = [[] for _ in models]
        failed: dict[int, MeasurementFailed] = {}
        for r in range(rounds):
            for i in round_order(len(models), r):
                if i in failed:
                    continue
                try:
                    results[i].append(self.measure_model(models[i], input_shape, dtype=dtype, layout=layout))
                except MeasurementFailed as exc:
                    failed[i] = exc
        return results, failed

    def recorded_protocol(self) -> dict[str, Any]:
        """The protocol as stored beside its numbers: the effective timer, and the cuDNN/TF32 flags left out
        (None) where this backend never calls cuDNN."""
        out = {**self.protocol.to_dict(), "timer": self.timer}
        if not self.uses_cudnn:
            out.update(dict.fromkeys(CUDNN_FIELDS))
        return out

    def hardware(self) -> dict[str, Any]:
        """Description of the device this backend times on (see :mod:`profiler.hardware`)."""
        from profiler.hardware import detect_hardware

        return detect_hardware(self.name).to_dict()

    def settings(self) -> dict[str, Any]:
        """Backend state to store with the sweep beyond the protocol (e.g. effective TF32 flag)."""
        return {"timer": self.timer}

    def close(self) -> None:  # noqa: B027  (a no-op by default, not abstract)
        """Release device memory or threads; called once after a sweep."""
