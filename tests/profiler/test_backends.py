"""Fake and CPU backends, the backend registry and TimingResult statistics (fast, CPU only)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from db.errors import LatlabError
from db.keys import ConvConfig, ConvFamily
from profiler.backends import get_backend, list_backends
from profiler.backends._modules import build_conv_op, chunk_sizes, enough_samples
from profiler.backends.base import BackendUnavailableError, MeasurementFailed, TimingResult
from profiler.backends.cpu import CpuBackend
from profiler.backends.fake import FakeBackend
from profiler.protocol import TimingProtocol

L1 = ConvFamily.square(56, 3)  # ResNet50 layer1 3x3
F28 = ConvFamily.square(28, 3)
SMALL = ConvFamily.square(14, 3)
FAST = TimingProtocol(warmup=1, repeats=5, min_repeats=3)


def _cfg(family: ConvFamily = L1, cin: int = 64, cout: int = 64, batch: int = 32, **kw: str) -> ConvConfig:
    return ConvConfig(family, cin, cout, batch, **kw)


# ------------------------------------------------------------------------------- TimingResult


def test_timing_result_stats_match_numpy() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 5, 10, 31):
        data = list(rng.lognormal(0, 0.3, size=n))
        r = TimingResult(data)
        assert r.n == n
        assert math.isclose(r.median_ms, float(np.median(data)))
        assert math.isclose(r.mean_ms, float(np.mean(data)))
        assert math.isclose(r.min_ms, float(np.min(data)))
        q1, q3 = np.percentile(data, [25, 75])
        assert math.isclose(r.iqr_ms, float(q3 - q1), rel_tol=1e-9)
        assert math.isclose(r.rel_iqr, float((q3 - q1) / np.median(data)), rel_tol=1e-9)


def test_timing_result_single_sample() -> None:
    r = TimingResult([2.0])
    assert r.iqr_ms == 0.0 and r.rel_iqr == 0.0 and r.median_ms == 2.0
    with pytest.raises(ValueError):
        TimingResult([])


def test_stop_rule_helpers() -> None:
    p = TimingProtocol(repeats=20, min_repeats=5, max_rel_iqr=0.01)
    assert not enough_samples([1.0] * 4, p)
    assert enough_samples([1.0] * 5, p)
    assert not enough_samples([1.0, 2.0, 3.0, 4.0, 5.0], p)
    assert enough_samples([1.0, 2.0] * 10, p)  # repeats reached
    assert not enough_samples([1.0] * 19, TimingProtocol(repeats=20))  # rule disabled
    assert list(chunk_sizes(TimingProtocol(repeats=20))) == [20]
    sizes = list(chunk_sizes(p))
    assert sizes[0] == 5 and sum(sizes) == 20 and all(s >= 1 for s in sizes)
    for bad in (-0.1, float("nan")):  # NaN would never stop early, silently
        with pytest.raises(LatlabError, match="max_rel_iqr must be a number >= 0"):
            TimingProtocol(max_rel_iqr=bad)


# ------------------------------------------------------------------------------- registry


def test_registry_builtins() -> None:
    assert {"cuda", "cpu", "fake"} <= set(list_backends())
    fake = get_backend("fake", FAST, seed=3)
    assert isinstance(fake, FakeBackend) and fake.name == "fake" and fake.timer == "model"
    assert fake.seed == 3
    cpu = get_backend("cpu", FAST)
    assert isinstance(cpu, CpuBackend) and cpu.timer == "torch_benchmark"


def test_registry_unknown_name() -> None:
    with pytest.raises(LatlabError, match="unknown profiler backend 'nope'"):
        get_backend("nope")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_registry_cuda_unavailable_here() -> None:
    with pytest.raises(BackendUnavailableError, match=r"torch.cuda.is_available\(\) is False"):
        get_backend("cuda")


def test_importing_backends_does_not_initialise_cuda() -> None:
    code = (
        "import torch, profiler.backends.fake, profiler.backends.cpu, profiler.backends.cuda, "
        "profiler.backends._modules, profiler.hardware; "
        "assert not torch.cuda.is_initialized(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------------------- fake: model


def test_fake_true_latency_staircase_in_cout() -> None:
    fake = FakeBackend(noise=0.0)
    couts = list(range(1, 257))
    vals = [fake.true_latency_ms(_cfg(F28, 128, c, 32)) for c in couts]
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:], strict=False)), "non-decreasing in cout"
    assert vals[-1] > 2 * vals[0]
    assert len(set(vals)) <= 16, "flat steps, not a smooth curve"
    # constant inside a tile, a jump at a tile boundary
    assert fake.true_latency_ms(_cfg(F28, 128, 65, 32)) == fake.true_latency_ms(_cfg(F28, 128, 128, 32))
    jumps = [(c, vals[i + 1] / vals[i]) for i, c in enumerate(couts[:-1]) if vals[i + 1] > 1.05 * vals[i]]
    assert jumps, "expected at least one staircase step"
    assert all((c % 32) == 0 for c, _ in jumps), f"steps only at tile boundaries, got {jumps}"


def test_fake_increases_with_batch_and_cin() -> None:
    fake = FakeBackend(noise=0.0)
    assert fake.true_latency_ms(_cfg(batch=64)) > fake.true_latency_ms(_cfg(batch=8))
    assert fake.true_latency_ms(_cfg(cin=256)) > fake.true_latency_ms(_cfg(cin=64))


def test_fake_half_faster_at_large_shapes() -> None:
    fake = FakeBackend(noise=0.0)
    fp32 = fake.true_latency_ms(_cfg(batch=256, dtype="fp32"))
    for dt in ("fp16", "bf16"):
        assert fake.true_latency_ms(_cfg(batch=256, dtype=dt)) < fp32 / 3


def test_fake_nhwc_faster_for_fp16_and_bn_relu_costs() -> None:
    fake = FakeBackend(noise=0.0)
    nchw = fake.true_latency_ms(_cfg(batch=256, dtype="fp16"))
    nhwc = fake.true_latency_ms(_cfg(batch=256, dtype="fp16", layout="nhwc"))
    assert nhwc < nchw < 1.2 * nhwc
    assert fake.true_latency_ms(_cfg(op="conv_bn_relu")) > fake.true_latency_ms(_cfg())


def test_fake_roofline_floor_and_launch_overhead() -> None:
    fake = FakeBackend(noise=0.0)
    c = _cfg(batch=256, dtype="fp32")
    flops = 2 * c.family.macs(c.cin, c.cout, c.batch)
    assert fake.true_latency_ms(c) >= flops / 14e12 * 1e3
    tiny = ConvConfig(ConvFamily.square(7, 1), 8, 8, 1)
    assert 5e-3 <= fake.true_latency_ms(tiny) < 2e-2  # launch-bound: ~5 us


def test_fake_depthwise_and_grouped() -> None:
    fake = FakeBackend(noise=0.0)
    dw = ConvConfig(ConvFamily.square(56, 3, depthwise=True), 96, 96, 8)
    grouped = ConvConfig(ConvFamily.square(56, 3, groups=32), 128, 128, 8)
    for c in (dw, grouped):
        t = fake.true_latency_ms(c)
        assert math.isfinite(t) and t > 0
    assert fake.true_latency_ms(dw.with_channels(192, 192)) >= fake.true_latency_ms(dw)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_fake_prices_an_exported_program_like_its_module(arch: str) -> None:
    """A torch.export graph (what `latlab prune`/`train` save) is priced from its aten calls exactly as the
    nn.Module it came from, noise included; a TorchScript module is refused with the way out."""
    import torch
    import torchvision

    from profiler.backends.base import MeasurementFailed

    net = getattr(torchvision.models, arch)(num_classes=10).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    graph = torch.export.export(net, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},)).module()
    fake = FakeBackend(TimingProtocol(repeats=5, min_repeats=5, seed=1))
    assert fake.model_latency_ms(graph, (4, 3, 64, 64)) == fake.model_latency_ms(net, (4, 3, 64, 64)) > 0
    assert fake.measure_model(graph, (4, 3, 64, 64)).samples_ms == fake.measure_model(net, (4, 3, 64, 64)).samples_ms
    with pytest.raises(MeasurementFailed, match="cannot read TorchScript; time it with --backend cpu or cuda"):
        fake.measure_model(torch.jit.trace(torch.nn.Sequential(torch.nn.ReLU()), torch.randn(1, 3)), (1, 3))


class _OddLayers(torch.nn.Module):
    """What custom networks use: a functional conv, convs padding on their own (reflect, circular), a transposed
    conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1, padding_mode="reflect")
        self.kernel = torch.nn.Parameter(torch.randn(24, 16, 3, 3))
        self.up = torch.nn.ConvTranspose2d(24, 16, 2, stride=2)
        self.b = torch.nn.Conv2d(16, 8, 3, padding=1, padding_mode="circular")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.conv2d(torch.relu(self.a(x)), self.kernel, padding=1)
        return self.b(torch.relu(self.up(x)))


def test_fake_prices_odd_layers_of_an_exported_program_like_its_module() -> None:
    net = _OddLayers().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    graph = torch.export.export(net, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},)).module()
    fake = FakeBackend(TimingProtocol(repeats=5, min_repeats=5, seed=1))
    assert fake.measure_model(graph, (2, 3, 64, 64)).samples_ms == fake.measure_model(net, (2, 3, 64, 64)).samples_ms
    priced = fake.model_latency_ms(net, (2, 3, 64, 64))
    assert priced > fake.model_latency_ms(torch.nn.Sequential(net.a), (2, 3, 64, 64)) > 0


def test_fake_settings_and_hardware() -> None:
    fake = FakeBackend(FAST, seed=5, bandwidth_gbs=900.0)
    s = fake.settings()
    assert s["timer"] == "model" and s["seed"] == 5 and s["bandwidth_gbs"] == 900.0 and s["sm_count"] == 80
    hw = fake.hardware()
    assert hw["kind"] == "fake" and "900 GB/s" in hw["name"] and hw["fingerprint"]


def test_fake_rejects_bad_parameters() -> None:
    with pytest.raises(LatlabError):
        FakeBackend(peak_tflops=0)
    with pytest.raises(LatlabError):
        FakeBackend(noise=-1)


# ------------------------------------------------------------------------------- fake: sampling


def test_fake_deterministic_across_instances_and_order() -> None:
    p = TimingProtocol(repeats=20, seed=7)
    configs = [_cfg(cout=c) for c in (16, 64, 100, 256)]
    a = FakeBackend(p)
    first = {c: a.measure(c).samples_ms for c in configs}
    b = FakeBackend(p)
    second = {c: b.measure(c).samples_ms for c in reversed(configs)}
    assert first == second
    assert a.measure(configs[0]).samples_ms == first[configs[0]]  # repeat on the same instance


def test_fake_deterministic_across_processes() -> None:
    code = (
        "from db.keys import ConvConfig, ConvFamily; from profiler.backends.fake import FakeBackend; "
        "from profiler.protocol import TimingProtocol; "
        "c = ConvConfig(ConvFamily.square(56, 3), 64, 64, 32); "
        "print(repr(FakeBackend(TimingProtocol(repeats=5, seed=7)).measure(c).samples_ms))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.returncode == 0, out.stderr
    here = FakeBackend(TimingProtocol(repeats=5, seed=7)).measure(_cfg()).samples_ms
    assert out.stdout.strip() == repr(here)


def test_fake_seed_changes_samples() -> None:
    c = _cfg()
    a = FakeBackend(TimingProtocol(repeats=10, seed=1)).measure(c).samples_ms
    b = FakeBackend(TimingProtocol(repeats=10, seed=2)).measure(c).samples_ms
    c_ = FakeBackend(TimingProtocol(repeats=10, seed=1), seed=2).measure(c).samples_ms
    assert a != b
    assert b == c_  # the seed argument overrides protocol.seed


def test_fake_noise_level() -> None:
    fake = FakeBackend(TimingProtocol(repeats=400), noise=0.05)
    c = _cfg()
    samples = np.array(fake.measure(c).samples_ms)
    ratio = np.log(samples / fake.true_latency_ms(c))
    assert abs(ratio.mean()) < 0.01 and 0.04 < ratio.std() < 0.06
    r = fake.measure(c)
    assert r.telemetry["true_ms"] == pytest.approx(fake.true_latency_ms(c))


def test_fake_repeats_and_stop_rule() -> None:
    c = _cfg()
    assert FakeBackend(TimingProtocol(repeats=17)).measure(c).n == 17
    noiseless = FakeBackend(TimingProtocol(repeats=50, min_repeats=6, max_rel_iqr=0.01), noise=0.0)
    r = noiseless.measure(c)
    assert r.n == 6 and r.iqr_ms == 0.0
    noisy = FakeBackend(TimingProtocol(repeats=50, min_repeats=6, max_rel_iqr=1e-6), noise=0.05)
    assert noisy.measure(c).n == 50
    # early stopping takes a prefix of the same sample sequence (resume-safe)
    full = FakeBackend(TimingProtocol(repeats=50)).measure(c).samples_ms
    early = FakeBackend(TimingProtocol(repeats=50, min_repeats=5, max_rel_iqr=0.2)).measure(c).samples_ms
    assert len(early) < 50 and full[: len(early)] == early


def test_fake_failure_injection() -> None:
    def fail(c: ConvConfig) -> str | None:
        return "oom" if c.batch >= 128 else ("error" if c.cout == 13 else None)

    fake = FakeBackend(FAST, fail_on=fail)
    with pytest.raises(MeasurementFailed) as err:
        fake.measure(_cfg(batch=128))
    assert err.value.status == "oom" and "batch=128" in str(err.value)
    with pytest.raises(MeasurementFailed) as err:
        fake.measure(_cfg(cout=13))
    assert err.value.status == "error"
    assert fake.measure(_cfg()).n == FAST.repeats


def test_fake_delay() -> None:
    fake = FakeBackend(FAST, delay_s=0.05)
    start = time.perf_counter()
    fake.measure(_cfg())
    assert time.perf_counter() - start >= 0.05


# ------------------------------------------------------------------------------- fake: models


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding="valid", groups=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = self.pool(self.relu(self.dw(x)))
        return self.fc(self.drop(torch.flatten(x, 1)))


def test_fake_measure_model_tiny() -> None:
    fake = FakeBackend(TimingProtocol(repeats=8), noise=0.0)
    model = _Tiny().train()
    t2 = fake.model_latency_ms(model, (2, 3, 32, 32))
    t64 = fake.model_latency_ms(model, (64, 3, 32, 32))
    assert model.training, "the caller's mode is restored"
    c1 = ConvConfig(ConvFamily.square(32, 3), 3, 16, 2)
    dw = ConvConfig(ConvFamily(32, 32, 3, 3, 2, 2, 0, 0, depthwise=True), 16, 16, 2)
    assert t2 > fake.true_latency_ms(c1) + fake.true_latency_ms(dw)
    assert t64 > t2
    r = fake.measure_model(model, (2, 3, 32, 32))
    assert r.n == 8 and r.median_ms == pytest.approx(t2)


def test_fake_measure_model_resnet18() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    fake = FakeBackend(TimingProtocol(repeats=10, seed=3))
    a = fake.measure_model(model, (2, 3, 32, 32))
    b = FakeBackend(TimingProtocol(repeats=10, seed=3)).measure_model(model, (2, 3, 32, 32))
    assert a.samples_ms == b.samples_ms and a.n == 10
    # 20 convs + ~40 other layers, each at least a launch (5 us)
    assert a.median_ms > 60 * 5e-3
    half = fake.model_latency_ms(model, (256, 3, 224, 224), dtype="fp16", layout="nhwc")
    full = fake.model_latency_ms(model, (256, 3, 224, 224), dtype="fp32")
    assert half < full


# ------------------------------------------------------------------------------- CPU backend


def test_cpu_measure_basic() -> None:
    cpu = CpuBackend(TimingProtocol(warmup=2, repeats=6, min_repeats=3, num_threads=1))
    r = cpu.measure(ConvConfig(SMALL, 16, 32, 2))
    assert r.n == 6
    assert all(math.isfinite(s) and s > 0 for s in r.samples_ms)
    assert r.median_ms < 100
    assert r.telemetry["calls_per_sample"] >= 1 and r.telemetry["num_threads"] == 1
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize(
    ("dtype", "layout", "op"),
    [("fp32", "nhwc", "conv"), ("fp32", "nchw", "conv_bn_relu"), ("bf16", "nchw", "conv"),
     ("bf16", "nhwc", "conv_bn_relu")],
)
def test_cpu_dtypes_layouts_ops(dtype: str, layout: str, op: str) -> None:
    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=3, min_repeats=3))
    r = cpu.measure(ConvConfig(SMALL, 16, 32, 2, dtype, layout, op))
    assert r.n == 3 and all(s > 0 for s in r.samples_ms)


def test_cpu_fp16_runs_or_fails_cleanly() -> None:
    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=3, min_repeats=3))
    try:
        r = cpu.measure(ConvConfig(SMALL, 16, 32, 2, "fp16"))
    except MeasurementFailed as exc:
        assert exc.status == "error" and "fp16" in str(exc)
    else:
        assert r.n == 3


def test_cpu_grouped_and_depthwise() -> None:
    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=3, min_repeats=3))
    assert cpu.measure(ConvConfig(ConvFamily.square(14, 3, depthwise=True), 32, 32, 2)).n == 3
    assert cpu.measure(ConvConfig(ConvFamily.square(14, 3, groups=4), 16, 32, 2)).n == 3


def test_cpu_stop_rule() -> None:
    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=40, min_repeats=4, max_rel_iqr=10.0))
    assert cpu.measure(ConvConfig(SMALL, 16, 32, 2)).n == 4


def test_cpu_errors_become_measurement_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    import profiler.backends.cpu as cpu_mod

    cpu = CpuBackend(FAST)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB")

    monkeypatch.setattr(cpu_mod, "make_input", boom)
    with pytest.raises(MeasurementFailed) as err:
        cpu.measure(ConvConfig(SMALL, 16, 32, 2))
    assert err.value.status == "oom"

    def bad(*args: object, **kwargs: object) -> None:
        raise RuntimeError("mkldnn primitive creation failed")

    monkeypatch.setattr(cpu_mod, "make_input", bad)
    with pytest.raises(MeasurementFailed) as err:
        cpu.measure(ConvConfig(SMALL, 16, 32, 2))
    assert err.value.status == "error" and "mkldnn" in str(err.value)


def test_cpu_rejects_gpu_timer() -> None:
    with pytest.raises(LatlabError, match="torch_benchmark"):
        CpuBackend(TimingProtocol(timer="cuda_events"))


def test_cpu_settings() -> None:
    s = CpuBackend(TimingProtocol(num_threads=1)).settings()
    assert s["timer"] == "torch_benchmark" and s["num_threads"] == 1


def test_cpu_measure_model_resnet18() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=3, min_repeats=3))
    r = cpu.measure_model(model, (2, 3, 32, 32))
    assert r.n == 3 and all(math.isfinite(s) and s > 0 for s in r.samples_ms)
    r = cpu.measure_model(model, (2, 3, 32, 32), dtype="bf16", layout="nhwc")
    assert r.n == 3
    assert model.training and next(model.parameters()).dtype == torch.float32
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the caller's model is untouched"


class _Breaks(nn.Module):
    """Runs fine until its ``calls_left`` run out, then fails the way an out-of-memory CPU op does."""

    def __init__(self, calls_left: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.calls_left = calls_left

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.001)  # ~1 ms a call: one call per timed block, so calls_left counts blocks
        self.calls_left -= 1
        if self.calls_left < 0:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return self.conv(x)


def test_cpu_measure_rounds_prepares_once_and_records_failures() -> None:
    cpu = CpuBackend(TimingProtocol(warmup=2, repeats=2, min_repeats=2))
    models = [nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), _Breaks(0), _Breaks(6)]
    results, failed = cpu.measure_rounds(models, (1, 3, 16, 16), rounds=4)
    assert [len(r) for r in results[:2]] == [4, 0] and all(t.n == 2 for t in results[0])
    assert failed[1].status == "oom"  # failed in its warm-up: never timed
    assert 2 in failed and 0 < len(results[2]) < 4  # failed in a later round: kept what it had
    assert 0 not in failed


def test_build_conv_op_geometry() -> None:
    fam = ConvFamily(20, 30, 3, 5, 2, 1, 1, 2, 1, 2, groups=2)
    c = ConvConfig(fam, 8, 12, 3, op="conv_bn_relu")
    op = build_conv_op(c)
    assert not op.training
    conv = op[0]
    assert isinstance(conv, nn.Conv2d) and conv.bias is None and conv.groups == 2
    assert isinstance(op[1], nn.BatchNorm2d) and isinstance(op[2], nn.ReLU)
    with torch.inference_mode():
        y = op(torch.randn(3, 8, 20, 30))
    assert tuple(y.shape) == (3, 12, fam.out_h, fam.out_w)
    a, b = build_conv_op(c, seed=1), build_conv_op(c, seed=1)
    assert torch.equal(a[0].weight, b[0].weight)


def test_cpu_l2_flush_times_single_calls_after_a_flush() -> None:
    from profiler.backends.cpu import L2_FALLBACK_BYTES, cache_bytes

    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=5, min_repeats=5, l2_flush=True, num_threads=2))
    settings = cpu.settings()
    assert settings["l2_flush"] is True and settings["flush_bytes"] == 2 * cache_bytes(2, L2_FALLBACK_BYTES) * 2
    r = cpu.measure(ConvConfig(SMALL, 16, 32, 2))
    assert r.n == 5 and r.telemetry["calls_per_sample"] == 1 and r.median_ms > 0
    buffer = cpu._flush_buffer
    assert buffer is not None and buffer.numel() * 4 == settings["flush_bytes"]
    assert float(buffer[0]) == float(buffer[-1]) == 5.0  # the whole buffer rewritten before each sample
    results, failed = cpu.measure_rounds([torch.nn.Conv2d(3, 8, 3)], (1, 3, 16, 16), rounds=2)
    assert not failed and [x.n for x in results[0]] == [5, 5] and float(buffer[0]) == 15.0
    cpu.close()
    assert cpu._flush_buffer is None
    assert CpuBackend(FAST).settings()["flush_bytes"] == 0


def test_cpu_llc_flush_flushes_the_last_level_cache_and_rereads_the_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import profiler.backends.cpu as cpu_mod

    reread: list[tuple[int, ...]] = []
    real = cpu_mod._cold_call_ms

    def spy(fn, flush, inputs=()):  # type: ignore[no-untyped-def]
        reread.extend(tuple(t.shape) for t in inputs)
        return real(fn, flush, inputs)

    monkeypatch.setattr(cpu_mod, "_cold_call_ms", spy)
    monkeypatch.setattr(cpu_mod, "last_level_cache_bytes", lambda: 4 * 2**20)
    cpu = CpuBackend(TimingProtocol(warmup=1, repeats=3, min_repeats=3, llc_flush=True, num_threads=1))
    assert cpu.settings()["llc_flush"] is True and cpu.settings()["flush_bytes"] == 8 * 2**20
    r = cpu.measure(ConvConfig(SMALL, 16, 32, 2))
    assert r.n == 3 and r.telemetry["calls_per_sample"] == 1
    assert reread == [(2, 16, SMALL.in_h, SMALL.in_w)] * 3  # the conv's input, after every flush
    assert float(cpu._flush_buffer[0]) == 3.0
    results, failed = cpu.measure_rounds([torch.nn.Conv2d(3, 8, 3)], (1, 3, 16, 16), rounds=1)
    assert not failed and results[0][0].n == 3 and reread[-1] == (1, 3, 16, 16)


def test_llc_flush_protocol() -> None:
    with pytest.raises(LatlabError, match="choose one"):
        TimingProtocol(l2_flush=True, llc_flush=True)
    with pytest.raises(LatlabError, match="does not implement llc_flush"):
        FakeBackend(TimingProtocol(llc_flush=True))
    # a field added later leaves the fingerprint of protocols that do not set it unchanged
    assert TimingProtocol().fingerprint("cpu") == "2a67617529a217f4"  # as before the field existed
    assert TimingProtocol(llc_flush=True).fingerprint("cpu") != TimingProtocol().fingerprint("cpu")
    from profiler.protocol import cache_flags

    assert cache_flags(TimingProtocol(llc_flush=True)) == {"l2_flush": False, "llc_flush": True}


def test_cache_sizes_read_from_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import profiler.backends.cpu as cpu_mod

    for name, level, kind, size in (("index0", "1", "Data", "32K"), ("index1", "1", "Instruction", "32K"),
                                    ("index2", "2", "Unified", "1024K"), ("index3", "3", "Unified", "32768K")):
        (tmp_path / name).mkdir()
        for field_name, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field_name).write_text(value + "\n")
    monkeypatch.setattr(cpu_mod, "_CPU_CACHE_DIR", tmp_path)
    assert cpu_mod.cache_bytes(2, 0) == 2**20 and cpu_mod.last_level_cache_bytes() == 32 * 2**20
    monkeypatch.setattr(cpu_mod, "_CPU_CACHE_DIR", tmp_path / "missing")
    assert cpu_mod.cache_bytes(2, 123) == 123 and cpu_mod.last_level_cache_bytes() == cpu_mod.LLC_FALLBACK_BYTES
    assert cpu_mod._parse_size("2M") == 2 * 2**20 and cpu_mod._parse_size("4096") == 4096


def test_with_protocol_reuses_or_rebuilds() -> None:
    from profiler.backends import with_protocol

    cpu = CpuBackend(FAST)
    assert with_protocol(cpu) is cpu and with_protocol(cpu, llc_flush=False) is cpu
    cold = with_protocol(cpu, llc_flush=True)
    assert isinstance(cold, CpuBackend) and cold.protocol.llc_flush and cold.protocol.repeats == FAST.repeats
