"""CUDA timing backend: CUDA events (or CUDA-graph replays) around single calls, one sync per chunk.

Hygiene (see the measurement notes): cuDNN autotunes per shape when ``cudnn.benchmark`` is on, so
every configuration is warmed up on its own, with at least two calls even when
``protocol.warmup == 0`` (the first triggers the autotuning, which must not land in a sample; the
rest estimate the host's enqueue cost per call).
Events are recorded asynchronously and read after one ``synchronize`` per chunk of samples; the
stop rule is checked per chunk, never per sample. ``l2_flush`` overwrites an L2-sized buffer before
each timed call, outside the event pair.

Convolutions are timed behind a *queue backlog*: a ``torch.cuda._sleep`` kernel long enough to cover
the host's enqueueing of the whole chunk runs first, so the calls execute back to back and each event
pair holds GPU time only. Without it, a kernel shorter than its host launch cost (tens of µs through
PyTorch + cuDNN) is timed together with the idle gap before it: on an H200 that inflated fp16 batch-256
ResNet-50 convs by up to 2× and batch-1 convs by 10-30× against torch.profiler's kernel times
(``benchmarks/results/cuda_vs_torch_profiler_*``). Whole models (:meth:`CudaBackend.measure_model`) are
timed without it: their number is the eager forward latency a user sees, launch gaps included.

The TF32 math mode and cuDNN flags actually in effect are reported by :meth:`CudaBackend.settings`;
clocks, temperature, power and throttle reasons are read through NVML after every configuration.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from db.errors import LatlabError
from db.keys import ConvConfig
from profiler.backends._modules import (
    build_conv_op,
    chunk_sizes,
    config_input_shape,
    copy_model,
    enough_samples,
    make_input,
    prepare_module,
)
from profiler.backends.base import Backend, BackendUnavailableError, MeasurementFailed, TimingResult
from profiler.protocol import TimingProtocol

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TIMERS = ("cuda_events", "cuda_graph")
L2_FLUSH_FALLBACK_BYTES = 64 * 2**20
_GRAPH_WARMUP_CALLS = 3  # side-stream calls before capture, as the torch CUDA-graph docs require
_BACKLOG_MARGIN = 1.5  # sleep this many times the measured host enqueue time of a chunk
_BACKLOG_MAX_MS = 250.0
_SLEEP_CALIBRATION_CYCLES = 2_000_000
_ERROR_MARKERS = ("cudnn", "cuda", "cublas", "cufft", "curand", "cusolver", "nvrtc")
_OOM_MARKERS = ("out of memory", "alloc_failed", "status_alloc")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _classify(exc: BaseException, what: str) -> MeasurementFailed | None:
    """OOM / CUDA-library errors -> :class:`MeasurementFailed`; anything else -> None (a bug)."""
    import torch

    msg = _first_line(exc)
    low = str(exc).lower()
    if isinstance(exc, torch.cuda.OutOfMemoryError) or any(m in low for m in _OOM_MARKERS):
        return MeasurementFailed(f"CUDA out of memory for {what}: {msg}", "oom")
    if isinstance(exc, RuntimeError) and any(m in low for m in _ERROR_MARKERS):
        return MeasurementFailed(f"CUDA error for {what}: {type(exc).__name__}: {msg}", "error")
    return None


class CudaBackend(Backend):
    """Times convolutions and whole models on one NVIDIA GPU (eval, ``torch.inference_mode``).

    Timers: ``cuda_events`` (default; an event pair around each call) or ``cuda_graph`` (the call
    is captured once into a CUDA graph; each sample is an event pair around ``graph.replay()``,
    which removes launch overhead for tiny kernels). Sets the cuDNN/TF32 flags from the protocol
    process-wide and restores the previous values in :meth:`close`.
    """

    name: ClassVar[str] = "cuda"
    default_timer: ClassVar[str] = "cuda_events"
    uses_cudnn: ClassVar[bool] = True

    def __init__(self, protocol: TimingProtocol | None = None, device_index: int = 0,
                 queue_backlog: bool = True) -> None:
        """``queue_backlog=False`` times convolutions like whole models, launch gaps included (for comparison)."""
        super().__init__(protocol)
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "CUDA backend needs an NVIDIA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "use --backend cpu or --backend fake"
            )
        if self.timer not in TIMERS:
            raise LatlabError(f"the cuda backend supports timers {', '.join(TIMERS)}, not {self.timer!r}")
        count = torch.cuda.device_count()
        if not 0 <= device_index < count:
            raise BackendUnavailableError(f"no CUDA device {device_index}: {count} visible to this process")
        self.device_index = int(device_index)
        self.device = torch.device("cuda", self.device_index)
        self._flush_buffer: torch.Tensor | None = None
        self._cycles_per_ms: float | None = None
        self.queue_backlog = bool(queue_backlog)
        self._saved_flags = self._apply_flags()

    # ---------------------------------------------------------------------------- flags

    def _apply_flags(self) -> dict[str, bool]:
        import torch

        saved = {
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
        p = self.protocol
        torch.backends.cudnn.benchmark = p.cudnn_benchmark
        torch.backends.cudnn.deterministic = p.cudnn_deterministic
        torch.backends.cudnn.allow_tf32 = p.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = p.allow_tf32
        return saved

    def _ensure_flags(self) -> None:
        """Re-apply the protocol's flags if :meth:`close` restored the previous ones (backend reused)."""
        if not self._saved_flags:
            self._saved_flags = self._apply_flags()

    def _restore_flags(self) -> None:
        import torch

        saved, self._saved_flags = self._saved_flags, {}
        if not saved:
            return
        torch.backends.cudnn.benchmark = saved["cudnn.benchmark"]
        torch.backends.cudnn.deterministic = saved["cudnn.deterministic"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul.allow_tf32"]

    # ---------------------------------------------------------------------------- public API

    def measure(self, config: ConvConfig) -> TimingResult:
        """Time ``config`` on the GPU; OOM / cuDNN / CUDA errors raise :class:`MeasurementFailed`."""
        import torch

        self._ensure_flags()

        def run() -> list[float]:
            with torch.cuda.device(self.device), torch.inference_mode():
                module = build_conv_op(config, self.protocol.seed)
                module = prepare_module(module, config.dtype, config.layout, self.device)
                x = make_input(config_input_shape(config), config.dtype, config.layout, self.device,
                               self.protocol.seed)
                return self._time(lambda: module(x), backlog=self.queue_backlog)

        return self._guarded(run, config.describe())

    def measure_model(
        self, model: torch.nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32",
        layout: str = "nchw",
    ) -> TimingResult:
        """Time one forward pass of a copy of ``model`` on the GPU (input built on the device,
        outside the timed region); the protocol's timer applies (events or a CUDA graph)."""
        import torch

        self._ensure_flags()

        def run() -> list[float]:
            with torch.cuda.device(self.device), torch.inference_mode():
                net = copy_model(model, dtype, layout, self.device)
                x = make_input(input_shape, dtype, layout, self.device, self.protocol.seed)
                return self._time(lambda: net(x))

        what = f"{type(model).__name__} input={tuple(input_shape)} dtype={dtype} layout={layout}"
        return self._guarded(run, what)

    def settings(self) -> dict[str, Any]:
        """Effective cuDNN / TF32 flags, cuDNN version, device, timer and L2-flush size."""
        import torch

        props = torch.cuda.get_device_properties(self.device_index)
        out: dict[str, Any] = {
            "timer": self.timer,
            "device_index": self.device_index,
            "device_name": str(props.name),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "min_warmup_calls": 2,
            "l2_flush": self.protocol.l2_flush,
            "conv_queue_backlog": self.queue_backlog,
            "model_queue_backlog": False,
            "l2_flush_bytes": self._flush_bytes() if self.protocol.l2_flush else 0,
        }
        conv_precision = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
        if conv_precision is not None:
            out["cudnn_conv_fp32_precision"] = str(conv_precision)
        return out

    def hardware(self) -> dict[str, Any]:
        """The GPU this backend times on (device ``device_index``) and its host."""
        from profiler.hardware import detect_hardware

        return detect_hardware("cuda", self.device_index).to_dict()

    def close(self) -> None:
        """Free the flush buffer and cached memory; restore the cuDNN / TF32 flags."""
        import torch

        self._flush_buffer = None
        gc.collect()
        torch.cuda.empty_cache()
        self._restore_flags()

    # ---------------------------------------------------------------------------- internals

    def _guarded(self, run: Callable[[], list[float]], what: str) -> TimingResult:
        """Run a measurement; on OOM/library errors free memory and raise MeasurementFailed."""
        self._reset_peak_memory()
        try:
            samples = run()
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            failure = _classify(exc, what)
            if failure is None:
                raise
        else:
            telemetry = self._telemetry()
            return TimingResult(samples, telemetry=telemetry)
        # Outside the except block the traceback (and the frames holding the tensors) is gone.
        self._free_memory()
        logger.info("%s", failure)
        raise failure

    def _reset_peak_memory(self) -> None:
        """Reset the allocator's peak counter (its per-device state exists only after a first allocation)."""
        import torch

        try:
            torch.cuda.reset_peak_memory_stats(self.device)
        except RuntimeError:
            torch.empty(1, device=self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _free_memory(self) -> None:
        import torch

        gc.collect()
        try:
            torch.cuda.synchronize(self.device)
        except RuntimeError:  # a sticky CUDA error; nothing more to free
            logger.warning("torch.cuda.synchronize failed after a failed measurement", exc_info=True)
        torch.cuda.empty_cache()

    def _telemetry(self) -> dict[str, Any]:
        import torch

        from profiler.hardware import gpu_telemetry

        out = gpu_telemetry(self.device_index)
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out

    def _flush_bytes(self) -> int:
        import torch

        l2 = int(getattr(torch.cuda.get_device_properties(self.device_index), "L2_cache_size", 0) or 0)
        return 2 * l2 if l2 > 0 else L2_FLUSH_FALLBACK_BYTES

    def _flush(self) -> torch.Tensor | None:
        """The L2-flush buffer (twice the L2 size), allocated on first use; None without l2_flush."""
        import torch

        if not self.protocol.l2_flush:
            return None
        if self._flush_buffer is None:
            self._flush_buffer = torch.empty(self._flush_bytes(), dtype=torch.uint8, device=self.device)
        return self._flush_buffer

    def _time(self, fn: Callable[[], Any], backlog: bool = False) -> list[float]:
        """Warm up (>= 2 calls), optionally capture a CUDA graph, then sample in chunks.

        With ``backlog`` each chunk is queued behind a sleep kernel that outlasts its host enqueueing.
        """
        import time

        import torch

        proto = self.protocol
        fn()  # cuDNN autotuning happens here, synchronously; it is not part of the host-cost estimate
        extra = max(1, proto.warmup - 1)
        t0 = time.perf_counter()
        for _ in range(extra):
            fn()
        host_ms = 1e3 * (time.perf_counter() - t0) / extra
        torch.cuda.synchronize(self.device)
        call: Callable[[], Any] = fn
        keep: list[Any] = []
        if self.timer == "cuda_graph":
            graph, static_out = self._capture(fn)
            keep = [graph, static_out]  # the graph's output buffers live as long as the graph
            call = graph.replay
            graph.replay()  # the first replay uploads the graph
            replays = max(1, min(proto.warmup, 3))
            t0 = time.perf_counter()
            for _ in range(replays):
                graph.replay()
            host_ms = 1e3 * (time.perf_counter() - t0) / replays
            torch.cuda.synchronize(self.device)
        flush = self._flush()
        samples: list[float] = []
        for size in chunk_sizes(proto):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(size)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(size)]
            if backlog:
                self._sleep_ms(min(_BACKLOG_MAX_MS, _BACKLOG_MARGIN * size * host_ms + 0.2))
            for start, end in zip(starts, ends, strict=True):
                if flush is not None:
                    flush.zero_()
                start.record()
                call()
                end.record()
            ends[-1].synchronize()
            samples.extend(float(s.elapsed_time(e)) for s, e in zip(starts, ends, strict=True))
            if enough_samples(samples, proto):
                break
        del keep
        return samples

    def _sleep_ms(self, ms: float) -> None:
        """Enqueue a GPU spin of about ``ms`` milliseconds (cycles calibrated once per backend)."""
        import torch

        if self._cycles_per_ms is None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(_SLEEP_CALIBRATION_CYCLES)  # first call loads the kernel
            start.record()
            torch.cuda._sleep(_SLEEP_CALIBRATION_CYCLES)
            end.record()
            end.synchronize()
            self._cycles_per_ms = _SLEEP_CALIBRATION_CYCLES / max(start.elapsed_time(end), 1e-3)
        torch.cuda._sleep(int(ms * self._cycles_per_ms))

    def _capture(self, fn: Callable[[], Any]) -> tuple[Any, Any]:
        """Capture one call of ``fn`` in a CUDA graph after side-stream warm-up (per torch docs)."""
        import torch

        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(_GRAPH_WARMUP_CALLS):
                fn()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out
