"""Non-conv ops timed one by one and priced at pruned widths (profiler.other_ops)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from db.errors import LatlabError
from profiler.backends import get_backend
from profiler.backends.base import MeasurementFailed
from profiler.backends.fake import FakeBackend
from profiler.other_ops import measure_other_ops
from profiler.plan import trace_network
from profiler.protocol import TimingProtocol

SIZE = 64


def _cpu():  # type: ignore[no-untyped-def]
    return get_backend("cpu", TimingProtocol(warmup=1, repeats=3, min_repeats=3, num_threads=1))


@pytest.fixture(scope="module")
def resnet18_ops():  # type: ignore[no-untyped-def]
    net = torchvision.models.resnet18(num_classes=10).eval()
    trace = trace_network(net, SIZE)
    return trace, measure_other_ops(_cpu(), net, trace, batch=2)


def test_resnet18_other_ops_are_found_and_timed(resnet18_ops) -> None:  # type: ignore[no-untyped-def]
    _, other = resnet18_ops
    assert not other.failed
    counts = {row["op"]: row["count"] for row in other.table()}
    assert counts == {"MaxPool2d": 1, "BatchNorm2d": 20, "ReLU": 17, "add": 8, "AdaptiveAvgPool2d": 1, "Linear": 1}
    assert all(op.ms > 0 for op in other.ops)
    assert other.latency({}) == pytest.approx(other.dense_ms)
    ops = {op.node: op for op in other.ops}
    assert ops["maxpool"].sources == ("conv1",)  # the stem's pool follows the stem's width
    assert set(ops["fc"].sources) >= {"layer4.1.conv2"}


def test_pruned_widths_scale_each_op_by_the_channels_it_carries(resnet18_ops) -> None:  # type: ignore[no-untyped-def]
    trace, other = resnet18_ops
    ops = {op.node: op for op in other.ops}
    inner = ops["layer2_0_bn1"].ms + ops["layer2_0_relu"].ms  # the only ops on layer2.0.conv1's channels
    halved = {"layer2.0.conv1": (64, 64), "layer2.0.conv2": (64, 128)}
    assert other.latency(halved) == pytest.approx(other.dense_ms - inner / 2)
    removed = {"layer2.1.conv1": (0, 0), "layer2.1.conv2": (0, 0)}  # a removed block: its BNs, ReLU and add go
    gone = sum(ops[n].ms for n in ("layer2_1_bn1", "layer2_1_relu", "layer2_1_bn2", "add_3"))
    assert other.latency(removed) == pytest.approx(other.dense_ms - gone)
    stem = {"conv1": (3, 32), "layer1.0.conv1": (32, 64), "layer1.1.conv1": (32, 64), "layer2.0.conv1": (32, 128),
            "layer2.0.downsample.0": (32, 128), "layer1.0.conv2": (64, 32), "layer1.1.conv2": (64, 32)}
    assert other.latency(stem) < other.dense_ms - ops["maxpool"].ms / 2 + 1e-9
    with pytest.raises(LatlabError, match="unknown conv"):
        other.latency({"nope": (1, 1)})
    assert {layer.name for layer in trace.layers} == set(other.dense_cout)


def test_broadcast_operands_and_depthwise_networks_are_timed() -> None:
    net = torchvision.models.mobilenet_v3_small(num_classes=10).eval()  # squeeze-excitation: x * scale(x)
    trace = trace_network(net, SIZE)
    other = measure_other_ops(_cpu(), net, trace, batch=1)
    assert not other.failed
    kinds = {row["op"] for row in other.table()}
    assert {"mul", "Hardswish", "BatchNorm2d", "AdaptiveAvgPool2d", "Linear"} <= kinds
    assert other.dense_ms > 0


class _NoBatchNorm(FakeBackend):
    """The fake backend on a device that cannot run a BatchNorm2d alone."""

    def measure_model(self, model, input_shape, dtype="fp32", layout="nchw"):  # type: ignore[no-untyped-def]
        if isinstance(model, torch.nn.BatchNorm2d):
            raise MeasurementFailed("BatchNorm2d: not supported here (injected)", "error")
        return super().measure_model(model, input_shape, dtype, layout)


def test_an_op_the_backend_cannot_time_is_reported_not_summed() -> None:
    net = torchvision.models.resnet18(num_classes=10).eval()
    other = measure_other_ops(_NoBatchNorm(), net, trace_network(net, SIZE), batch=1)
    assert len(other.failed) == 20 and "not supported here" in next(iter(other.failed.values()))
    assert other.ops and other.dense_ms == sum(op.ms for op in other.ops)
    assert not measure_other_ops(FakeBackend(), net, trace_network(net, SIZE), batch=1).failed


def test_a_conv_bn_relu_lut_leaves_the_fused_batch_norms_and_relus_out() -> None:
    """Its entries time conv + BN + ReLU: those BNs and ReLUs must not be priced again (the ReLU after a
    residual add, the pooling, the adds and the classifier still are)."""
    from collections import Counter

    net = torchvision.models.resnet18(num_classes=10).eval()
    trace = trace_network(net, SIZE)
    plain = Counter(op.op for op in measure_other_ops(FakeBackend(), net, trace, batch=1).ops)
    fused = Counter(op.op for op in measure_other_ops(FakeBackend(), net, trace, batch=1, op="conv_bn_relu").ops)
    assert plain - fused == Counter({"BatchNorm2d": 20, "ReLU": 9})  # every BN; the stem's and each bn1's ReLU
    assert fused["ReLU"] == 8 and fused["add"] == 8 and fused["MaxPool2d"] == 1 and fused["Linear"] == 1


def test_fake_prices_an_op_with_a_full_batch_operand_per_image() -> None:
    """A residual add timed alone holds its second operand at the full batch: the fake backend's batch-1 trace
    then broadcasts to that batch, and must not count it twice (it did: 256× at batch 256)."""
    net = torchvision.models.resnet18(num_classes=10).eval()
    trace = trace_network(net, SIZE)
    launch = FakeBackend().launch_us / 1e3

    def adds(batch: int) -> float:
        ops = measure_other_ops(FakeBackend(noise=0.0), net, trace, batch=batch).ops
        return sum(op.ms - launch for op in ops if op.op == "add")

    assert adds(8) == pytest.approx(8 * adds(1), rel=1e-9)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_a_fake_network_costs_its_convs_plus_its_other_ops(arch: str) -> None:
    """The fake backend prices a whole network from the same parts (residual adds included), so
    `evaluate --measure-backend fake` compares latency models, not the backend with itself."""
    from db.keys import ConvConfig

    net = getattr(torchvision.models, arch)(num_classes=10).eval()
    trace = trace_network(net, SIZE)
    fake = FakeBackend(noise=0.0)
    convs = sum(fake.true_latency_ms(ConvConfig(layer.family, layer.cin, layer.cout, 16)) for layer in trace.layers)
    other = measure_other_ops(fake, net, trace, batch=16)
    assert "add" in {op.op for op in other.ops}
    assert convs + other.dense_ms == pytest.approx(fake.model_latency_ms(net, (16, 3, SIZE, SIZE)), rel=1e-9)
