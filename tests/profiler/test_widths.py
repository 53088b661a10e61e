from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from db.errors import LatlabError
from profiler._grids import rn50_group, rn50_group_q
from profiler.plan import TraceResult, resolve_model, trace_network
from profiler.widths import dense_widths, random_pruned_widths
from pruning.rebuild import rebuild_with_widths

INPUT = 64


@pytest.fixture(scope="module", params=["resnet18", "resnet50", "mobilenet_v2"])
def net(request: pytest.FixtureRequest) -> tuple[nn.Module, TraceResult]:
    torch.manual_seed(0)
    _, module = resolve_model(request.param)
    return module, trace_network(module, INPUT)


def _check_consistent(trace: TraceResult, widths: dict[str, tuple[int, int]], min_keep: float, q: int) -> None:
    layers = {layer.name: layer for layer in trace.layers}
    assert set(widths) == set(layers)
    for group in trace.groups:  # channel-coupled convs share one output width
        assert len({widths[name][1] for name in group}) == 1, group
    group_of = trace.group_of()
    for name, (cin, cout) in widths.items():
        layer = layers[name]
        assert math.ceil(min_keep * layer.cout) <= cout <= layer.cout
        if not layer.family.depthwise:
            assert cout % q == 0 or cout == layer.cout
        if not layer.producers:
            assert cin == layer.cin  # e.g. the stem keeps its 3 input channels
        else:
            producer_groups = {group_of[p]: widths[p][1] for p in layer.producers}
            assert cin == sum(producer_groups.values())
        if layer.family.depthwise:
            assert cin == cout == widths[layer.producers[0]][1]


def test_random_widths_are_consistent(net: tuple[nn.Module, TraceResult]) -> None:
    _, trace = net
    for seed in range(3):
        widths = random_pruned_widths(trace, np.random.default_rng(seed))
        _check_consistent(trace, widths, 0.3, 8)
    assert any(w != d for w, d in zip(widths.values(), dense_widths(trace).values(), strict=True))


def test_rebuilt_network_runs_with_requested_widths(net: tuple[nn.Module, TraceResult]) -> None:
    module, trace = net
    widths = random_pruned_widths(trace, 7)
    rebuilt = rebuild_with_widths(module, trace, widths)
    convs = {name: (m.in_channels, m.out_channels) for name, m in rebuilt.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs == widths
    depthwise = {layer.name for layer in trace.layers if layer.family.depthwise}
    for name, m in rebuilt.named_modules():
        if name in depthwise:
            assert m.groups == m.in_channels == m.out_channels
    with torch.inference_mode():
        out = rebuilt.eval()(torch.randn(2, 3, INPUT, INPUT))
    assert out.shape == (2, 1000)
    dense = dict(module.named_modules())
    for name, m in rebuilt.named_modules():  # every plain conv keeps the leading channels of the dense one
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            torch.testing.assert_close(m.weight, dense[name].weight[: m.out_channels, : m.in_channels], rtol=0, atol=0)
    # the original is untouched
    assert {n: (m.in_channels, m.out_channels) for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d)} == dense_widths(trace)


def test_seeded_and_min_keep_one_is_dense(net: tuple[nn.Module, TraceResult]) -> None:
    _, trace = net
    assert random_pruned_widths(trace, 3) == random_pruned_widths(trace, 3)
    assert random_pruned_widths(trace, 3, min_keep=1.0) == dense_widths(trace)


@pytest.fixture(scope="module")
def rn50() -> tuple[nn.Module, TraceResult]:
    _, module = resolve_model("resnet50")
    return module, trace_network(module, INPUT)


def test_group_sizes_halp_lattice(rn50: tuple[nn.Module, TraceResult]) -> None:
    _, trace = rn50
    sizes = {layer.name: rn50_group_q(rn50_group(layer.name)) for layer in trace.layers}
    for seed in range(3):
        widths = random_pruned_widths(trace, seed, group_sizes=sizes, min_keep=0.2)
        for name, (_, cout) in widths.items():
            assert cout % sizes[name] == 0, (name, cout)


def test_bad_arguments(rn50: tuple[nn.Module, TraceResult]) -> None:
    module, trace = rn50
    with pytest.raises(LatlabError, match="min_keep"):
        random_pruned_widths(trace, 0, min_keep=0.0)
    widths = dense_widths(trace)
    widths["layer1.0.conv2"] = (32, 64)  # its producer layer1.0.conv1 still has 64 channels
    with pytest.raises(LatlabError, match=r"layer1\.0\.conv2"):
        rebuild_with_widths(module, trace, widths)
    with pytest.raises(LatlabError, match="nope"):
        rebuild_with_widths(module, trace, {"nope": (1, 1)})


@pytest.mark.parametrize("name", ["densenet121", "resnext50_32x4d", "mobilenet_v3_small"])
def test_rebuilt_zoo_networks_have_the_requested_widths(name: str) -> None:
    """Concats (DenseNet), grouped convs (ResNeXt: their groups kept), squeeze-excitation and depthwise convs."""
    torch.manual_seed(0)
    _, module = resolve_model(name)
    trace = trace_network(module, INPUT)
    widths = random_pruned_widths(trace, 5, min_keep=0.5)
    assert widths != dense_widths(trace)
    rebuilt = rebuild_with_widths(module, trace, widths)
    dense = dict(module.named_modules())
    convs = {n: m for n, m in rebuilt.named_modules() if isinstance(m, nn.Conv2d)}
    assert {n: (m.in_channels, m.out_channels) for n, m in convs.items()} == widths
    for n, m in convs.items():
        depthwise = dense[n].groups == dense[n].in_channels > 1
        assert m.groups == (m.in_channels if depthwise else dense[n].groups)
    with torch.inference_mode():
        assert rebuilt.eval()(torch.randn(1, 3, INPUT, INPUT)).shape == (1, 1000)


class _Concat(nn.Module):
    """Two branches concatenated into a 1x1 conv, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(40)
        self.c = nn.Conv2d(40, 32, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(torch.flatten(self.pool(self.c(y)), 1))


def test_concat_inputs_stay_dense_and_rebuild_as_a_sum() -> None:
    model = _Concat().eval()
    trace = trace_network(model, 16)
    widths = random_pruned_widths(trace, 0, multiple=8, min_keep=0.5, keep=0.5)
    assert widths == {"a": (3, 16), "b": (3, 24), "c": (40, 16)}  # the pruner keeps concatenated channels
    widths = {"a": (3, 8), "b": (3, 16), "c": (24, 16)}  # a rebuild follows any widths through the concat
    rebuilt = rebuild_with_widths(model, trace, widths)
    assert rebuilt.bn.num_features == 24 and rebuilt.fc.in_features == 16
    assert rebuilt(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def test_random_widths_of_a_shufflenet_match_its_lattice() -> None:
    """Channel shuffles and splits: the sampled widths are what the pruner asks for, so a lattice LUT has them,
    and the network rebuilds with them (the channels after a chunk are the chunk's, not its producer's)."""
    from profiler._grids import auto_group_size
    from profiler.plan import build_plan

    _, model = resolve_model("shufflenet_v2_x0_5")
    trace = trace_network(model, 64)
    lattice = {(c.family, c.cin, c.cout) for c in build_plan(trace, "lattice", batch=1).configs}
    by_name = {layer.name: layer for layer in trace.layers}
    auto = {n: auto_group_size(layer.cout) for n, layer in by_name.items()}  # the lattice's group sizes
    for seed in range(3):
        widths = random_pruned_widths(trace, seed, group_sizes=auto)
        assert widths != dense_widths(trace)
        assert {(by_name[n].family, ci, co) for n, (ci, co) in widths.items()} <= lattice
        assert rebuild_with_widths(model, trace, widths)(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


class _GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.gn = nn.GroupNorm(4, 16)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gn(self.conv(x)))


class _ScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.scale = nn.Parameter(torch.ones(1, 16, 1, 1))
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x) * self.scale)


class _UpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.conv(x)))


class _ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.channel_shuffle(self.conv(x), 2))


@pytest.mark.parametrize(("cls", "culprit"), [(_GroupNormNet, "gn"), (_ScaleNet, "scale"), (_UpNet, "up"),
                                              (_ShuffleNet, "channel_shuffle")])
def test_unsupported_structures_name_the_module(cls: type[nn.Module], culprit: str) -> None:
    # a channel shuffle of pruned channels once gave a network whose forward failed
    model = cls().eval()
    trace = trace_network(model, 12)
    widths = dense_widths(trace)
    widths["conv"] = (3, 8)
    if cls is not _UpNet:
        widths["head"] = (8, 8)
    with pytest.raises(LatlabError, match=culprit):
        rebuild_with_widths(model, trace, widths)


def test_uniform_keep_ratio_snaps_to_group_sizes() -> None:
    from profiler._grids import rn50_group, rn50_group_q
    from profiler.plan import trace_network
    from profiler.widths import random_pruned_widths

    trace = trace_network("resnet50", 224)
    sizes = {layer.name: rn50_group_q(rn50_group(layer.name)) for layer in trace.layers}
    widths = random_pruned_widths(trace, 0, keep=0.1, group_sizes=sizes)
    assert widths["conv1"] == (3, 6)  # 6.4 -> nearest multiple of q=2
    assert widths["layer1.0.conv1"] == (6, 32)  # cin follows the stem; 6.4 -> at least q=32
    assert widths["layer3.1.conv1"][1] == 128  # 25.6 -> at least q=128
    assert widths["layer4.2.conv3"] == (64, 256)  # conv2 of layer4.2: q=32, 51.2 -> 64; residual 204.8 -> 256
    assert random_pruned_widths(trace, 0, keep=1.0, group_sizes=sizes)["layer2.0.conv2"] == (128, 128)


def _cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class _Structures(nn.Module):
    """``kind``: ``input_cat`` (a conv on the image concatenated with a conv), ``dw_on_cat`` / ``grouped_on_cat``
    (a depthwise / 4-group conv on a concat of two convs), ``residual_dw`` (a depthwise conv in a residual add),
    ``twice`` (one conv called twice)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a = _cbr(3, 16)
        if kind.endswith("_on_cat"):
            self.b = _cbr(3, 16)
        self.m = {"input_cat": _cbr(19, 16), "dw_on_cat": _cbr(32, 32, groups=32), "grouped_on_cat": _cbr(32, 32, 4),
                  "residual_dw": _cbr(16, 16, groups=16), "twice": _cbr(16, 16)}[kind]
        self.c = _cbr(self.m[0].out_channels, 8)
        self.fc = nn.Linear(8 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.kind == "input_cat":
            y = self.m(torch.cat([x, y], dim=1))
        elif self.kind in ("dw_on_cat", "grouped_on_cat"):
            y = self.m(torch.cat([y, self.b(x)], dim=1))
        elif self.kind == "residual_dw":
            y = y + self.m(y)
        else:
            y = self.m(self.m(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.c(y), 2), 1))


@pytest.mark.parametrize(("kind", "widths"), [
    ("input_cat", {"a.0": (3, 8), "m.0": (11, 16)}),  # the image's 3 channels are kept
    ("dw_on_cat", {"a.0": (3, 8), "b.0": (3, 16), "m.0": (24, 24), "c.0": (24, 8)}),
    ("grouped_on_cat", {"a.0": (3, 8), "b.0": (3, 16), "m.0": (24, 16), "c.0": (16, 8)}),  # shapes, not channels
    ("residual_dw", {"a.0": (3, 8), "m.0": (8, 8), "c.0": (8, 8)}),
    ("twice", {"a.0": (3, 8), "m.0": (8, 8), "m.0#2": (8, 8), "c.0": (8, 8)}),
])
def test_rebuild_follows_concats_depthwise_grouped_and_repeated_convs(kind: str, widths: dict) -> None:
    model = _Structures(kind).eval()
    trace = trace_network(model, 16)
    widths = {**dense_widths(trace), **widths}
    rebuilt = rebuild_with_widths(model, trace, widths)
    convs = {n: (m.in_channels, m.out_channels) for n, m in rebuilt.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs == {n: w for n, w in widths.items() if "#" not in n}
    assert rebuilt.m[0].groups == {"dw_on_cat": 24, "grouped_on_cat": 4, "residual_dw": 8}.get(kind, 1)
    assert rebuilt(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize(("kind", "widths", "error"), [
    ("dw_on_cat", {"a.0": (3, 8), "m.0": (32, 32)}, r"conv m\.0 asks for cin=32 but its input carries 24"),
    ("dw_on_cat", {"a.0": (3, 8), "m.0": (24, 16)}, r"depthwise conv needs cin == cout, got 24 and 16"),
    ("grouped_on_cat", {"a.0": (3, 8), "m.0": (24, 30)}, r"multiples of the conv's 4 groups"),
    ("residual_dw", {"a.0": (3, 8), "m.0": (16, 16)}, r"coupled convs a\.0, m\.0 have different output widths"),
    ("twice", {"a.0": (3, 8), "m.0": (8, 16), "m.0#2": (16, 16)}, r"module m\.0 is called twice"),
    ("twice", {"a.0": (3, 0)}, r"widths must be >= 1"),
])
def test_inconsistent_widths_are_refused_clearly(kind: str, widths: dict, error: str) -> None:
    model = _Structures(kind).eval()
    trace = trace_network(model, 16)
    with pytest.raises(LatlabError, match=error):
        rebuild_with_widths(model, trace, {**dense_widths(trace), **widths})
