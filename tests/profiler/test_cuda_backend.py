"""CUDA backend. Tests marked ``gpu`` need an NVIDIA GPU (skipped otherwise, see conftest.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from db.keys import ConvConfig, ConvFamily
from profiler.backends.base import BackendUnavailableError, MeasurementFailed, TimingResult
from profiler.protocol import TimingProtocol

L1 = ConvFamily.square(56, 3)  # ResNet50 layer1 3x3 64->64 @56
L4 = ConvFamily.square(7, 3)  # ResNet50 layer4 3x3 512->512 @7
TELEMETRY_KEYS = {"sm_clock_mhz", "mem_clock_mhz", "temperature_c", "power_w", "throttle_reasons"}

# (fp16/bf16 dense tensor-core TFLOP/s, fp32-via-TF32 TFLOP/s, HBM TB/s) from the measurement notes
_PEAKS = {"H100": (989.4, 494.7, 3.35), "H200": (989.4, 494.7, 4.8)}
_GENEROUS = (2500.0, 1250.0, 10.0)  # beats any current GPU: a physical lower bound elsewhere

Factory = Callable[..., Any]  # make_backend(**protocol_fields) -> CudaBackend


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_backend_unavailable_here() -> None:
    from profiler.backends.cuda import CudaBackend

    with pytest.raises(BackendUnavailableError) as err:
        CudaBackend()
    msg = str(err.value)
    assert msg.startswith("CUDA backend needs an NVIDIA GPU, but torch.cuda.is_available() is False")
    assert torch.__version__ in msg and "--backend cpu or --backend fake" in msg
    assert "\n" not in msg


# ------------------------------------------------------------------------------- GPU only


@pytest.fixture
def make_backend() -> Iterator[Factory]:
    from profiler.backends.cuda import CudaBackend

    made: list[CudaBackend] = []

    def factory(**proto: object) -> CudaBackend:
        defaults: dict[str, object] = {"warmup": 5, "repeats": 20, "min_repeats": 5}
        backend = CudaBackend(TimingProtocol(**{**defaults, **proto}))
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def _roofline_ms(config: ConvConfig) -> float:
    name = torch.cuda.get_device_name(0)
    peaks = next((v for k, v in _PEAKS.items() if k in name), _GENEROUS)
    half = config.dtype in ("fp16", "bf16")
    peak = (peaks[0] if half else peaks[1]) * 1e12
    f = config.family
    e = 2 if half else 4
    flops = 2 * f.macs(config.cin, config.cout, config.batch)
    elems = (config.batch * config.cin * f.in_h * f.in_w + config.cout * config.cin * f.kernel_h * f.kernel_w
             + config.batch * config.cout * f.out_h * f.out_w)
    return max(flops / peak, e * elems / (peaks[2] * 1e12)) * 1e3


def _check(result: TimingResult, n: int | None = None) -> None:
    assert all(math.isfinite(s) and s > 0 for s in result.samples_ms)
    if n is not None:
        assert result.n == n
    assert "peak_memory_mb" in result.telemetry


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "layout"), [("fp32", "nchw"), ("fp16", "nchw"), ("fp16", "nhwc"),
                                               ("bf16", "nhwc"), ("fp32", "nhwc")])
def test_resnet50_conv_dtypes_layouts(make_backend: Factory, dtype: str, layout: str) -> None:
    backend = make_backend()
    r = backend.measure(ConvConfig(L1, 64, 64, 32, dtype, layout))
    _check(r, 20)


@pytest.mark.gpu
def test_telemetry_keys_present(make_backend: Factory) -> None:
    r = make_backend().measure(ConvConfig(L1, 64, 64, 8, "fp16", "nhwc"))
    assert set(r.telemetry) >= TELEMETRY_KEYS, r.telemetry
    assert isinstance(r.telemetry["throttle_reasons"], int) and isinstance(r.telemetry["throttle"], str)


@pytest.mark.gpu
def test_cuda_graph_timer(make_backend: Factory) -> None:
    config = ConvConfig(L4, 512, 512, 1, "fp16", "nhwc")
    events = make_backend().measure(config)
    graph_backend = make_backend(timer="cuda_graph")
    assert graph_backend.timer == "cuda_graph" and graph_backend.settings()["timer"] == "cuda_graph"
    graph = graph_backend.measure(config)
    _check(graph, 20)
    assert graph.median_ms < 2 * events.median_ms + 0.05


@pytest.mark.gpu
def test_cuda_graph_conv_bn_relu_and_model(make_backend: Factory) -> None:
    torchvision = pytest.importorskip("torchvision")
    backend = make_backend(timer="cuda_graph", repeats=10)
    _check(backend.measure(ConvConfig(L1, 64, 64, 8, "fp16", "nhwc", "conv_bn_relu")), 10)
    model = torchvision.models.resnet18(num_classes=10)
    _check(backend.measure_model(model, (8, 3, 64, 64), "fp16", "nhwc"), 10)


@pytest.mark.gpu
def test_l2_flush(make_backend: Factory) -> None:
    config = ConvConfig(L4, 512, 512, 1, "fp16", "nhwc")
    cold_backend = make_backend(l2_flush=True)
    settings = cold_backend.settings()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert settings["l2_flush"] is True and settings["l2_flush_bytes"] >= l2
    cold = cold_backend.measure(config)
    warm = make_backend().measure(config)
    _check(cold, 20)
    assert cold.median_ms > 0.5 * warm.median_ms  # flushed caches never make it much faster


@pytest.mark.gpu
def test_conv_bn_relu(make_backend: Factory) -> None:
    backend = make_backend()
    conv = backend.measure(ConvConfig(L1, 64, 64, 32, "fp16", "nhwc"))
    fused = backend.measure(ConvConfig(L1, 64, 64, 32, "fp16", "nhwc", "conv_bn_relu"))
    _check(fused, 20)
    assert fused.median_ms > 0.5 * conv.median_ms


@pytest.mark.gpu
def test_oom_is_recorded_and_memory_freed(make_backend: Factory) -> None:
    backend = make_backend(warmup=1, repeats=3, min_repeats=3)
    before = torch.cuda.memory_allocated()
    with pytest.raises(MeasurementFailed) as err:
        backend.measure(ConvConfig(L1, 64, 64, 400_000, "fp32"))  # a ~320 GB input
    assert err.value.status == "oom"
    assert "out of memory" in str(err.value).lower()
    assert torch.cuda.memory_allocated() <= before + 64 * 2**20
    _check(backend.measure(ConvConfig(L1, 64, 64, 8)), 3)  # the backend still works


@pytest.mark.gpu
def test_median_within_roofline_band(make_backend: Factory) -> None:
    backend = make_backend(warmup=10, repeats=30)
    for config in (ConvConfig(L1, 64, 64, 256, "fp16", "nhwc"), ConvConfig(L1, 64, 64, 256, "fp32", "nhwc")):
        floor = _roofline_ms(config)
        med = backend.measure(config).median_ms
        assert 0.8 * floor <= med <= 30 * floor, (config.describe(), med, floor)


@pytest.mark.gpu
def test_flags_recorded_and_restored() -> None:
    from profiler.backends.cuda import CudaBackend

    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    backend = CudaBackend(TimingProtocol(cudnn_benchmark=False, cudnn_deterministic=True, allow_tf32=False))
    s = backend.settings()
    assert s["cudnn_benchmark"] is False and s["cudnn_deterministic"] is True
    assert s["cudnn_allow_tf32"] is False and s["matmul_allow_tf32"] is False
    assert s["cudnn_version"] and s["device_name"] and s["timer"] == "cuda_events"
    backend.close()
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.gpu
def test_stop_rule_and_zero_warmup(make_backend: Factory) -> None:
    backend = make_backend(warmup=0, repeats=200, min_repeats=7, max_rel_iqr=10.0)
    r = backend.measure(ConvConfig(L1, 64, 64, 8, "fp16", "nhwc"))
    assert r.n == 7


@pytest.mark.gpu
def test_measure_model_events(make_backend: Factory) -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50()
    r = make_backend(repeats=10).measure_model(model, (32, 3, 224, 224), "fp16", "nhwc")
    _check(r, 10)
    assert next(model.parameters()).device.type == "cpu", "the caller's model is not moved"


@pytest.mark.gpu
def test_hardware_cuda() -> None:
    from profiler.backends.cuda import CudaBackend
    from profiler.hardware import detect_hardware

    info = detect_hardware("cuda")
    assert info.kind == "cuda" and info.name == torch.cuda.get_device_name(0)
    assert info.sm_count and info.gpu_memory_mb and info.compute_capability
    assert info.cuda_version == torch.version.cuda and info.cudnn_version
    assert info.driver_version and info.gpu_uuid and info.gpu_uuid.startswith("GPU-"), info.notes
    backend = CudaBackend(TimingProtocol())
    assert backend.hardware()["fingerprint"] == info.fingerprint
    backend.close()
