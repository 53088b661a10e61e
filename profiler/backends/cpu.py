"""CPU timing backend: ``torch.utils.benchmark.Timer`` blocks of at least ~1 ms per sample."""

from __future__ import annotations

import functools
import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
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
    call count ``number`` makes the block last at least ~1 ms, so timer overhead is negligible.
    """

    name: ClassVar[str] = "cpu"
    default_timer: ClassVar[str] = "torch_benchmark"

    def __init__(self, protocol: TimingProtocol | None = None) -> None:
        super().__init__(protocol)
        if self.timer != "torch_benchmark":
            raise LatlabError(f"the cpu backend supports timer 'torch_benchmark' only, not {self.timer!r}")

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
                samples, number = self._time(lambda: module(x))
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
        prepared: dict[int, tuple[Any, int]] = {}
        with torch_threads(self.num_threads) as threads:
            for i, model in enumerate(models):
                what = f"{type(model).__name__} input={tuple(input_shape)} dtype={dtype} layout={layout}"
                try:
                    x = make_input(input_shape, dtype, layout, seed=self.protocol.seed)
                    with torch.inference_mode():
                        prepared[i] = self._prepare(functools.partial(copy_model(model, dtype, layout), x), threads)
                except (RuntimeError, MemoryError, NotImplementedError) as exc:
                    failed[i] = _failure(exc, what, dtype)
            with torch.inference_mode():
                for r in range(rounds):
                    for i in round_order(len(models), r):
                        if i not in prepared:
                            continue
                        timer, number = prepared[i]
                        try:
                            samples = self._sample(timer, number)
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
                               "min_block_ms": MIN_BLOCK_S * 1e3}
        try:
            info = torch.__config__.parallel_info()
            backend = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if "parallel backend" in ln]
            if backend:
                out["parallel_backend"] = backend[0]
        except Exception:  # purely informative
            logger.debug("torch.__config__.parallel_info() failed", exc_info=True)
        return out

    # ---------------------------------------------------------------------------- timing

    def _time(self, fn: Callable[[], Any]) -> tuple[list[float], int]:
        """Warm up, choose the block size, then sample until the stop rule says enough."""
        with torch_threads(self.num_threads) as threads:
            timer, number = self._prepare(fn, threads)
            return self._sample(timer, number), number

    def _prepare(self, fn: Callable[[], Any], threads: int) -> tuple[Any, int]:
        """Warm ``fn`` up and choose its block size: (its ``torch.utils.benchmark`` timer, calls per block)."""
        for _ in range(self.protocol.warmup):
            fn()
        number = _calibrate(fn)
        return _benchmark_timer()(stmt="fn()", globals={"fn": fn}, num_threads=threads, label="latlab"), number

    def _sample(self, timer: Any, number: int) -> list[float]:
        """Timed blocks of ``number`` calls (ms per call) until the protocol's stop rule says enough."""
        samples: list[float] = []
        while not enough_samples(samples, self.protocol):
            samples.append(_block_seconds(timer, number) / number * 1e3)
        return samples

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


def _block_seconds(timer: Any, number: int) -> float:
    """Seconds for ``number`` calls. ``Timer.timeit`` would add its own warm-up of ``number // 100``
    (>= 2) calls per sample; the per-config warm-up is already done, so use the bare block timer
    when this torch has it."""
    bare = getattr(timer, "_timeit", None)
    if callable(bare):
        return float(bare(number))
    return float(timer.timeit(number).raw_times[0])
