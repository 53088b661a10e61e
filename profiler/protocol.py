"""The timing protocol: *how* a latency was measured, recorded beside every number."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from db.errors import LatlabError


@dataclass(frozen=True)
class TimingProtocol:
    """Settings that change what a measured latency means. Stored on the ``sweeps`` row.

    Attributes:
        warmup: untimed calls before sampling (per configuration: cuDNN autotunes per shape).
        repeats: timed samples to take (upper bound when ``max_rel_iqr`` stops early).
        min_repeats: samples always taken before the stop rule may end sampling.
        max_rel_iqr: stop once IQR/median falls below this (0 disables the rule).
        timer: backend-specific timer (``cuda_events``, ``cuda_graph``, ``torch_benchmark``, ``model``).
        cudnn_benchmark / cudnn_deterministic / allow_tf32: cuDNN and math-mode flags (CUDA).
        l2_flush: overwrite an L2-sized buffer before each timed call (cold-cache numbers).
        llc_flush: CPU only: overwrite a buffer twice the last-level cache before each timed call, then
            read the input back: everything but the input starts out of the cache, as inside a network
            too big for the cache.
        num_threads: intra-op threads for the CPU backend (None: torch's default).
        seed: RNG seed for inputs and the fake backend's noise.
    """

    warmup: int = 10
    repeats: int = 50
    min_repeats: int = 10
    max_rel_iqr: float = 0.0
    timer: str = "auto"
    cudnn_benchmark: bool = True
    cudnn_deterministic: bool = False
    allow_tf32: bool = True
    l2_flush: bool = False
    llc_flush: bool = False
    num_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise LatlabError(f"warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise LatlabError(f"repeats must be >= 1, got {self.repeats}")
        if not 1 <= self.min_repeats <= self.repeats:
            object.__setattr__(self, "min_repeats", max(1, min(self.min_repeats, self.repeats)))
        if not self.max_rel_iqr >= 0:  # NaN too: the rule would never stop sampling, silently
            raise LatlabError(f"max_rel_iqr must be a number >= 0, got {self.max_rel_iqr}")
        if self.l2_flush and self.llc_flush:
            raise LatlabError("choose one of l2_flush and llc_flush (llc_flush flushes the whole cache)")
        if self.num_threads is not None and self.num_threads < 1:
            raise LatlabError(f"num_threads must be >= 1, got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (what a ``sweeps`` row stores)."""
        return asdict(self)

    def fingerprint(self, backend: str) -> str:
        """Stable hash of backend + protocol; one sweep row per (hardware, fingerprint, name). Fields added
        after the first release count only when set, so older sweeps keep their fingerprint."""
        fields_ = {k: v for k, v in self.to_dict().items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
        blob = json.dumps({"backend": backend, **fields_}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_LATER_FIELDS: dict[str, Any] = {"llc_flush": False}  # field -> default, left out of the hash at that value
CACHE_FIELDS = ("l2_flush", "llc_flush")
CUDNN_FIELDS = ("cudnn_benchmark", "cudnn_deterministic", "allow_tf32")


def cache_flags(source: Any) -> dict[str, bool]:
    """The cache settings (``l2_flush``, ``llc_flush``) of a protocol or a stored ``sweeps`` row, so that
    ops priced next to a LUT's convs can be timed the way the convs were."""
    return {name: bool(getattr(source, name, False)) for name in CACHE_FIELDS}
