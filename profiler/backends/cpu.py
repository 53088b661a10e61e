"""CPU timing backend: ``torch.utils.benchmark.Timer`` blocks of at least ~1 ms per sample.

With the protocol's ``l2_flush`` each sample is instead one call, timed alone with ``perf_counter``
right after a buffer of twice the L2 size per thread has been overwritten (cold-cache numbers). With
``llc_flush`` the buffer is twice the last-level cache and the call's input is read back after it: the
conv starts with its weights, its output memory and everything else but its input out of the cache, as
inside a network too big for the cache.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from db.errors import LatlabError
from db.keys import ConvConfig
from profiler.backends._modules import (
    build_conv_op,
    config_input_shape,
    copy_model,
    enough_samples,
    make_input,
    prepare_module,
    torch_threads,
)
from profiler.backends.base import Backend, MeasurementFailed, TimingResult, round_order
from profiler.protocol import TimingProtocol

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MIN_BLOCK_S = 1e-3  # each sample times a block of calls at least this long
MAX_NUMBER = 100_000  # calls per block, upper bound
L2_FALLBACK_BYTES = 2 * 2**20  # per-core L2 assumed when /sys does not say
LLC_FALLBACK_BYTES = 32 * 2**20  # last-level cache assumed when /sys does not say
_CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_OOM_MARKERS = ("not enough memory", "out of memory", "cannot allocate memory", "bad_alloc")


def _failure(exc: BaseException, what: str, dtype: str) -> MeasurementFailed:
    """Map an exception from torch to :class:`MeasurementFailed` with status oom/error."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MemoryError) or any(m in msg.lower() for m in _OOM_MARKERS):
        return MeasurementFailed(f"out of memory on CPU for {what}: {msg}", "oom")
    if dtype == "fp16" and ("Half" in msg or "not implemented" in msg.lower()):
        import torch

        return MeasurementFailed(
            f"fp16 is not supported on CPU by torch {torch.__version__} for {what}: {msg}", "error"
        )
    return MeasurementFailed(f"CPU measurement failed for {what}: {type(exc).__name__}: {msg}", "error")


class CpuBackend(Backend):
    """Times convolutions and whole models on the host CPU (eval, ``torch.inference_mode``).

    Each sample is ``block_time / number`` from one ``torch.utils.benchmark.Timer`` block whose
    call count ``number`` makes the block last at least ~1 ms, so timer overhead is negligible. With
    ``l2_flush`` a sample is one call made right after the flush buffer was overwritten (by every thread:
    twice the L2 size per thread), so weights and input come from the shared last-level cache or memory.
    With ``llc_flush`` the buffer is twice the last-level cache and the input is re-read before the call.
    """

    name: ClassVar[str] = "cpu"
    default_timer: ClassVar[str] = "torch_benchmark"
    supports_llc_flush: ClassVar[bool] = True

    def __init__(self, protocol: TimingProtocol | None = None) -> None:
        super().__init__(protocol)
        if self.timer != "torch_benchmark":
            raise LatlabError(f"the cpu backend supports timer 'torch_benchmark' only, not {self.timer!r}")
        self._flush_buffer: torch.Tensor | None = None

    @property
    def num_threads(self) -> int:
        import torch

        return self.protocol.num_threads or torch.get_num_threads()

    # ---------------------------------------------------------------------------- public API

    def measure(self, config: ConvConfig) -> TimingResult:
        """Time ``config`` on the CPU; OOM and library errors raise :class:`MeasurementFailed`."""
        import torch

        what = config.describe()
        try:
            module = prepare_module(build_conv_op(config, self.protocol.seed), config.dtype, config.layout)
            x = make_input(config_input_shape(config), config.dtype, config.layout, seed=self.protocol.seed)
            with torch.inference_mode():
                samples, number = self._time(lambda: module(x), x)
        except (RuntimeError, MemoryError, NotImplementedError) as exc:
            failure = _failure(exc, what, config.dtype)
        else:
            return TimingResult(samples, telemetry=self._telemetry(number))
        gc.collect()  # drop the failed attempt's tensors before the next configuration
        raise failure

    def measure_model(
        self, model: torch.nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32",
        layout: str = "nchw",
    ) -> TimingResult:
        """Time one forward pass of a copy of ``model`` (eval, inference mode, dtype/layout applied)."""
        results, failed = self.measure_rounds([model], input_shape, 1, dtype=dtype, layout=layout)
        if failed:
            gc.collect()  # drop the failed attempt's tensors before the next model
            raise failed[0]
        return results[0][0]

    def measure_rounds(
        self, models: Sequence[torch.nn.Module], input_shape: tuple[int, ...], rounds: int, dtype: str = "fp32",
        layout: str = "nchw",
    ) -> tuple[list[list[TimingResult]], dict[int, MeasurementFailed]]:
        """As :meth:`Backend.measure_rounds`, but each model is copied, warmed up and calibrated once, so a
        round is nothing but timed blocks of every model in turn."""
        import torch

        results: list[list[TimingResult]] = [[] for _ in models]
        failed: dict[int, MeasurementFailed] = {}
        prepared: dict[int, tuple[Callable[[], float], int]] = {}
        with torch_threads(self.num_threads) as threads:
            for i, model in enumerate(models):
                what = f"{type(model).__name__} input={tuple(input_shape)} dtype={dtype} layout={layout}"
                try:
                    x = make_input(input_shape, dtype, layout, seed=self.protocol.seed)
                    with torch.inference_mode():
                        prepared[i] = self._prepare(functools.partial(copy_model(model, dtype, layout), x), threads, x)
                except (RuntimeError, MemoryError, NotImplementedError) as exc:
                    failed[i] = _failure(exc, what, dtype)
            with torch.inference_mode():
                for r in range(rounds):
                    for i in round_order(len(models), r):
                        if i not in prepared:
                            continue
                        sample, number = prepared[i]
                        try:
                            samples = self._sample(sample)
                        except (RuntimeError, MemoryError, NotImplementedError) as exc:
                            failed[i] = _failure(exc, type(models[i]).__name__, dtype)
                            del prepared[i]
                            continue
                        results[i].append(TimingResult(samples, telemetry=self._telemetry(number)))
        return results, failed

    def settings(self) -> dict[str, Any]:
        """Timer, thread count and the ATen parallel backend line."""
        import torch

        out: dict[str, Any] = {"timer": self.timer, "num_threads": self.num_threads,
                               "min_block_ms": 0.0 if self._flushing else MIN_BLOCK_S * 1e3,
                               "l2_flush": self.protocol.l2_flush, "llc_flush": self.protocol.llc_flush,
                               "flush_bytes": self._flush_bytes() if self._flushing else 0}
        try:
            info = torch.__config__.parallel_info()
            backend = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if "parallel backend" in ln]
            if backend:
                out["parallel_backend"] = backend[0]
        except Exception:  # purely informative
            logger.debug("torch.__config__.parallel_info() failed", exc_info=True)
        return out

    # ---------------------------------------------------------------------------- timing

    def close(self) -> None:
        """Free the flush buffer."""
        self._flush_buffer = None
        super().close()

    def _time(self, fn: Callable[[], Any], *inputs: torch.Tensor) -> tuple[list[float], int]:
        """Warm up, choose the block size, then sample until the stop rule says enough."""
        with torch_threads(self.num_threads) as threads:
            sample, number = self._prepare(fn, threads, *inputs)
            return self._sample(sample), number

    def _prepare(self, fn: Callable[[], Any], threads: int, *inputs: torch.Tensor) -> tuple[Callable[[], float], int]:
        """Warm ``fn`` up and choose how to sample it: (one sample in ms per call, calls per sample).
        ``inputs`` are re-read after each flush under ``llc_flush``."""
        for _ in range(self.protocol.warmup):
            fn()
        flush = self._flush()
        if flush is not None:
            return functools.partial(_cold_call_ms, fn, flush, inputs if self.protocol.llc_flush else ()), 1
        number = _calibrate(fn)
        timer = _benchmark_timer()(stmt="fn()", globals={"fn": fn}, num_threads=threads, label="latlab")
        return functools.partial(_block_ms, timer, number), number

    def _sample(self, sample: Callable[[], float]) -> list[float]:
        """Samples (ms per call) until the protocol's stop rule says enough."""
        samples: list[float] = []
        while not enough_samples(samples, self.protocol):
            samples.append(sample())
        return samples

    @property
    def _flushing(self) -> bool:
        return self.protocol.l2_flush or self.protocol.llc_flush

    def _flush_bytes(self) -> int:
        if self.protocol.llc_flush:
            return 2 * last_level_cache_bytes()
        return 2 * cache_bytes(2, L2_FALLBACK_BYTES) * self.num_threads

    def _flush(self) -> torch.Tensor | None:
        """The flush buffer, allocated on first use; None when the protocol flushes nothing."""
        import torch

        if not self._flushing:
            return None
        if self._flush_buffer is None:
            with torch.inference_mode(False):  # a normal tensor: in-place updates allowed in and out of the mode
                self._flush_buffer = torch.zeros(self._flush_bytes() // 4, dtype=torch.float32)
        return self._flush_buffer

    def _telemetry(self, number: int) -> dict[str, Any]:
        out: dict[str, Any] = {"calls_per_sample": number, "num_threads": self.num_threads}
        try:
            import psutil

            freq = psutil.cpu_freq()
            if freq is not None and freq.current:
                out["cpu_freq_mhz"] = round(float(freq.current), 1)
        except Exception:  # psutil missing or no cpufreq in this VM
            logger.debug("no CPU frequency reading", exc_info=True)
        return out


def _calibrate(fn: Callable[[], Any]) -> int:
    """Calls per block so that one block lasts >= ``MIN_BLOCK_S``: time 1, 2, 4, ... calls (untimed
    for the result) until a batch takes a fifth of that, then extrapolate."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_BLOCK_S / 5 or n >= MAX_NUMBER:
            break
        n *= 2
    per_call = max(elapsed / n, 1e-9)
    return int(min(MAX_NUMBER, max(1, math.ceil(MIN_BLOCK_S / per_call))))


def _benchmark_timer() -> type:
    """``torch.utils.benchmark.Timer``, imported without the "No CUDA runtime is found" warning
    that ``torch.utils.cpp_extension`` logs at import on a CUDA build of torch without a GPU."""
    noisy = logging.getLogger("torch.utils.cpp_extension")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        noisy.setLevel(level)
    return Timer


def _block_ms(timer: Any, number: int) -> float:
    """Milliseconds per call over one block of ``number`` calls. ``Timer.timeit`` would add its own
    warm-up of ``number // 100`` (>= 2) calls per sample; the per-config warm-up is already done, so use
    the bare block timer when this torch has it."""
    bare = getattr(timer, "_timeit", None)
    seconds = float(bare(number)) if callable(bare) else float(timer.timeit(number).raw_times[0])
    return seconds / number * 1e3


def _cold_call_ms(fn: Callable[[], Any], flush: torch.Tensor, inputs: Sequence[torch.Tensor] = ()) -> float:
    """Milliseconds of one call of ``fn`` made right after every thread overwrote its share of ``flush``
    (then ``inputs`` are read again, back into the cache)."""
    flush.add_(1.0)  # an ATen elementwise op: split across the intra-op threads, each dirtying its part
    for tensor in inputs:
        tensor.sum()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _caches() -> dict[int, int]:
    """``{level: bytes}`` of this CPU's data/unified caches, read from ``/sys`` (Linux); empty if unreadable."""
    out: dict[int, int] = {}
    try:
        for index in sorted(_CPU_CACHE_DIR.glob("index*")):
            if (index / "type").read_text().strip() != "Instruction":
                out[int((index / "level").read_text())] = _parse_size((index / "size").read_text())
    except (OSError, ValueError):
        logger.debug("no cache sizes in %s", _CPU_CACHE_DIR, exc_info=True)
        return {}
    return out


def cache_bytes(level: int, fallback: int) -> int:
    """Size of one cache of ``level`` (per core for L1/L2 on most CPUs), or ``fallback`` when unknown."""
    return _caches().get(level, fallback)


def last_level_cache_bytes() -> int:
    """Size of the highest cache level (usually the shared L3), or :data:`LLC_FALLBACK_BYTES`."""
    caches = _caches()
    return caches[max(caches)] if caches else LLC_FALLBACK_BYTES


def _parse_size(text: str) -> int:
    """``"1024K"`` → 1048576 (sysfs cache sizes: a number with an optional K/M/G suffix)."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale
