"""pruning.graph: channel groups, q, producers, BNs and removable blocks of torchvision CNNs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from db.errors import LatlabError
from latency_models.network import network_configs
from profiler import _grids
from profiler.plan import trace_network
from pruning.export import export_pruned, masked_reference, verify_export
from pruning.graph import NetworkSpec, auto_group_size, build_network_spec

# (convs, groups, coupled groups, removable blocks) of torchvision models; traced at 64x64 to stay fast
EXPECTED = {
    "resnet18": (20, 12, 4, 8),
    "resnet34": (36, 20, 4, 16),
    "resnet101": (104, 71, 4, 33),
    "resnet152": (155, 105, 4, 50),
    "resnext50_32x4d": (53, 37, 4, 16),
    "wide_resnet50_2": (53, 37, 4, 16),
    "mobilenet_v2": (52, 25, 22, 10),
    "mobilenet_v3_small": (52, 26, 15, 6),
    "regnet_y_400mf": (85, 53, 20, 16),
}


@pytest.fixture(scope="module")
def rn50() -> NetworkSpec:
    return build_network_spec("resnet50", 224, group_sizes="reference")


@pytest.fixture(scope="module")
def specs() -> dict[str, NetworkSpec]:
    return {name: build_network_spec(name, 64) for name in EXPECTED}


# ------------------------------------------------------------------------------------------------ ResNet50


def test_resnet50_reference_counts(rn50: NetworkSpec) -> None:
    assert rn50.summary() == {
        "convs": 53,
        "groups": 37,
        "coupled": 4,
        "singleton": 33,
        "prunable": 37,
        "items": 246,
        "blocks": 16,
    }
    coupled = [g for g in rn50.groups.values() if g.coupled]
    assert [(g.id, len(g.convs)) for g in coupled] == [("stage1", 4), ("stage2", 5), ("stage3", 7), ("stage4", 4)]
    assert list(rn50.groups)[0] == "conv1"
    assert sum(c.cout for c in rn50.convs) == 26560  # spec §2.1


def test_resnet50_table_2_3(rn50: NetworkSpec) -> None:
    g = rn50.groups
    # group: (dense n, q, m)
    table = {
        "conv1": (64, 2, 32),
        "layer1.1.conv2": (64, 32, 2),
        "layer2.0.conv1": (128, 32, 4),
        "layer3.0.conv2": (256, 64, 4),
        "layer3.3.conv1": (256, 128, 2),
        "layer3.3.conv2": (256, 32, 8),
        "layer4.0.conv1": (512, 64, 8),
        "layer4.2.conv2": (512, 32, 16),
        "stage1": (256, 64, 4),
        "stage2": (512, 128, 4),
        "stage3": (1024, 128, 8),
        "stage4": (2048, 128, 16),
    }
    for gid, (n, q, m) in table.items():
        assert (g[gid].width, g[gid].q, g[gid].m) == (n, q, m), gid
    for gid, group in g.items():
        assert group.q == _grids.rn50_group_q(gid)
        assert group.width == _grids.rn50_group_width(gid)
    fmaps = {
        "conv1": 224,
        "layer1.0.conv1": 56,
        "layer1.2.conv3": 56,
        "layer1.0.downsample.0": 56,
        "layer2.0.conv1": 56,
        "layer2.0.conv2": 56,
        "layer2.0.conv3": 28,
        "layer2.1.conv1": 28,
        "layer2.0.downsample.0": 56,
        "layer3.0.conv2": 28,
        "layer3.1.conv2": 14,
        "layer3.0.downsample.0": 28,
        "layer4.0.conv2": 14,
        "layer4.0.downsample.0": 14,
        "layer4.2.conv3": 7,
    }
    for conv, f in fmaps.items():
        assert rn50.conv(conv).fmap_in == f, conv


def test_resnet50_producers_bns_blocks(rn50: NetworkSpec) -> None:
    for c in rn50.convs:
        assert rn50.group_of(c.name) == _grids.rn50_group(c.name)
        assert rn50.producer_group(c.name) == _grids.rn50_spec_producer(c.name)
    assert rn50.conv("conv1").bn == "bn1"
    assert rn50.conv("layer2.3.conv3").bn == "layer2.3.bn3"
    assert rn50.conv("layer3.0.downsample.0").bn == "layer3.0.downsample.1"
    names = [b.name for b in rn50.blocks]
    assert names == [f"layer{s}.{b}" for s, n in enumerate(_grids.RN50_BLOCKS, 1) for b in range(n)]
    first = rn50.blocks[0]
    assert first.convs == ("layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3")  # downsample.0 stays
    assert (first.input_group, first.output_group) == ("conv1", "stage1")
    assert (rn50.blocks[3].input_group, rn50.blocks[3].output_group) == ("stage1", "stage2")
    assert all(len(b.convs) == 3 for b in rn50.blocks)


def test_resnet50_auto_and_forced_sizes() -> None:
    spec = build_network_spec("resnet50", 64, group_sizes=16)
    assert {g.q for g in spec.groups.values()} == {16}
    assert spec.n_items == sum(c.cout for c in spec.convs if c.name == spec.groups[c.group].convs[0]) // 16
    spec = build_network_spec("resnet50", 64, group_sizes={"stage1": 256, "layer1.0.conv1": 48, "conv1": 3})
    assert spec.groups["stage1"].q == 256
    assert spec.groups["layer1.0.conv1"].q == 16  # gcd(48, 64)
    assert spec.groups["conv1"].q == 1  # gcd(3, 64)
    assert spec.groups["stage4"].q == 32  # auto
    with pytest.raises(LatlabError, match="neither a conv nor a group"):
        build_network_spec("resnet50", 64, group_sizes={"nope": 8})
    with pytest.raises(LatlabError, match=">= 1"):
        build_network_spec("resnet50", 64, group_sizes=0)


def test_auto_group_size() -> None:
    assert [auto_group_size(w) for w in (16, 64, 72, 96, 256, 320, 1024, 1000)] == [8, 8, 8, 16, 16, 32, 32, 8]
    assert auto_group_size(3) == 1


# ------------------------------------------------------------------------------------------------ other models


@pytest.mark.parametrize("name", list(EXPECTED))
def test_model_counts(specs: dict[str, NetworkSpec], name: str) -> None:
    spec = specs[name]
    s = spec.summary()
    assert (s["convs"], s["groups"], s["coupled"], s["blocks"]) == EXPECTED[name]
    assert s["prunable"] == s["groups"]
    for g in spec.groups.values():
        assert g.width % g.q == 0 and g.m >= 1
        assert g.coupled == (len(g.convs) > 1)
    assert len({b.name for b in spec.blocks}) == len(spec.blocks)
    for b in spec.blocks:
        assert b.convs and all(spec.conv(c) for c in b.convs)
        if b.input_group == b.output_group:  # identity shortcut
            assert not any(spec.conv(c).family.stride_h > 1 for c in b.convs)
    json.dumps(spec.to_dict())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_conv_widths_consistent(specs: dict[str, NetworkSpec], name: str) -> None:
    spec = specs[name]
    dense = spec.conv_widths({})
    assert dense == {c.name: (c.cin, c.cout) for c in spec.convs}
    rng = np.random.default_rng(0)
    widths = {gid: g.q * int(rng.integers(1, g.m + 1)) for gid, g in spec.groups.items()}
    removed = [b.name for b in spec.blocks[::2]]
    out = spec.conv_widths(widths, removed)
    gone = {c for b in spec.blocks[::2] for c in b.convs}
    for c in spec.convs:
        if c.name in gone:
            assert out[c.name] == (0, 0)
            continue
        cin, cout = out[c.name]
        assert cout == widths[c.group]
        if c.depthwise:
            assert cin == cout
        elif c.producer_group is None:
            assert cin == c.cin
        else:
            assert cin == widths[c.producer_group]
        if c.family.groups > 1:
            assert cin % c.family.groups == 0 and cout % c.family.groups == 0
    configs = network_configs(spec.convs, out, batch=1)
    assert len(configs) == len(spec.convs) - len(gone)


def test_depthwise_and_se_groups(specs: dict[str, NetworkSpec]) -> None:
    for name in ("mobilenet_v2", "mobilenet_v3_small"):
        spec = specs[name]
        for c in spec.convs:
            if c.depthwise:
                assert c.group == c.producer_group
    v3 = specs["mobilenet_v3_small"]
    # features.4: expand -> dw -> SE(fc1, fc2) * x -> project
    assert (
        v3.group_of("features.4.block.2.fc2")
        == v3.group_of("features.4.block.1.0")
        == v3.group_of("features.4.block.0.0")
    )
    fc1 = v3.groups[v3.group_of("features.4.block.2.fc1")]
    assert fc1.convs == ("features.4.block.2.fc1",) and fc1.prunable and not fc1.coupled
    assert v3.producer_group("features.4.block.2.fc1") == v3.group_of("features.4.block.1.0")
    assert v3.conv("features.4.block.2.fc1").bn is None
    assert {b.name for b in v3.blocks} == {
        "features.3",
        "features.5",
        "features.6",
        "features.8",
        "features.10",
        "features.11",
    }
    assert "features.5.block.2.fc1" in v3.blocks[1].convs  # SE convs belong to the block
    v2 = specs["mobilenet_v2"]
    assert [b.name for b in v2.blocks] == [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
    rg = specs["regnet_y_400mf"]
    blk = rg.blocks[0]
    assert blk.name == "trunk_output.block1.block1-0" and len(blk.convs) == 5
    assert rg.group_of("trunk_output.block1.block1-0.f.se.fc2") == rg.group_of("trunk_output.block1.block1-0.f.b.0")


def test_grouped_conv_stripes(specs: dict[str, NetworkSpec]) -> None:
    spec = specs["resnext50_32x4d"]
    conv2 = spec.conv("layer1.0.conv2")
    assert conv2.family.groups == 32
    for gid in (conv2.group, conv2.producer_group):  # written and read by the grouped conv: one position = 32 ch
        assert (spec.groups[gid].stripes, spec.groups[gid].q, spec.groups[gid].m) == (32, 32, 4)
    assert spec.groups[spec.group_of("layer1.0.conv3")].stripes == 1
    # RegNetY-400MF: the grouped conv (55 groups of 8) and its SE scale share 440 channels; an item is one
    # position (55 channels), not the lcm of 32 and 55 (440: the whole group, nothing to prune)
    rg = specs["regnet_y_400mf"]
    wide = rg.groups[rg.group_of("trunk_output.block4.block4-0.f.b.0")]
    assert (wide.width, wide.stripes, wide.q, wide.m) == (440, 55, 55, 8)
    assert "trunk_output.block4.block4-0.f.se.fc2" in wide.convs
    assert all(g.q % g.stripes == 0 and g.width % g.q == 0 for s in specs.values() for g in s.groups.values())


def test_striped_q() -> None:
    assert _grids.striped_q(16, 128, 1) == 16
    assert _grids.striped_q(16, 128, 32) == 32  # at least one position
    assert _grids.striped_q(64, 128, 32) == 64  # two positions of the four
    assert _grids.striped_q(48, 128, 32) == 32  # 1.5 positions: the most that fit and divide a stripe
    assert _grids.striped_q(32, 400, 25) == 25
    assert _grids.striped_q(64, 400, 25) == 50
    assert _grids.striped_q(16, 100, 3) == 48  # stripes not dividing the width: the lcm


# ------------------------------------------------------------------------------------------------ edge cases


class _Fixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pw = nn.Conv2d(3, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.pw(self.dw(x)))))


class _Concat(nn.Module):
    """A stem feeding two branches that are concatenated (or, with ``join=torch.maximum``, joined by an op that
    neither adds nor concatenates) into a conv."""

    def __init__(self, join=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.join = join
        self.s = nn.Conv2d(3, 16, 1)
        self.a = nn.Conv2d(16, 8, 1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.c = nn.Conv2d(8 if join else 16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.s(x))
        y = self.join(self.a(x), self.b(x)) if self.join else torch.cat([self.a(x), self.b(x)], 1)
        return self.c(y).mean((2, 3))


class _ScaledBranch(nn.Module):
    """A layer-scaled residual (ConvNeXt style): x + γ·bn(a(x))."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.bn(self.a(x))


class _Scaled(nn.Module):
    """A layer-scaled residual block, then two parallel convs added (not a block)."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.block = _ScaledBranch(bn)
        self.b = nn.Conv2d(8, 16, 1)
        self.c = nn.Conv2d(8, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        return (self.b(x) + self.c(x)).mean((2, 3))


def test_generic_blocks() -> None:
    spec = build_network_spec(_Scaled(), 16)
    assert [(b.name, b.convs, b.input_group, b.output_group) for b in spec.blocks] == [
        ("block", ("block.a",), "stem", "block.a")]
    # the layer scale γ is a parameter export does not slice: the channels it scales, and those added to them, stay
    assert {g.convs: g.fixed_by for g in spec.groups.values()} == {
        ("stem",): "add in block with mul (not one conv group's channels)",
        ("block.a",): "mul in block with parameter block.gamma", ("b", "c"): "network output"}
    assert spec.conv_widths({}, [spec.blocks[0].name])["b"] == (8, 16)
    model = _Scaled().eval()
    exported = export_pruned(model, trace_network(model, 16), {}, ["block"])
    assert not any(isinstance(m, nn.Conv2d) for m in exported.block.modules())
    assert verify_export(masked_reference(model, {}, ["block"]), exported, (2, 3, 16, 16)) < 1e-6
    # without a BN, the branch's last conv is the gate (through the layer scale: γ·0 = 0)
    assert [b.gate for b in build_network_spec(_Scaled(bn=False), 16).blocks] == ["block.a"]


def test_keep_fixes_the_stem_and_matching_convs_with_their_blocks(rn50: NetworkSpec) -> None:
    """HALP/MDP never prune the stem (spec §4.4, §8.2); globs keep convs, group ids keep groups, blocks stay."""
    kept = rn50.keeping(["stem", "layer4.*", "stage3"])
    assert [g.id for g in kept.groups.values() if not g.prunable] == [
        "conv1", "stage3", "layer4.0.conv1", "layer4.0.conv2", "stage4", "layer4.1.conv1", "layer4.1.conv2",
        "layer4.2.conv1", "layer4.2.conv2"]
    assert kept.groups["conv1"].fixed_by == "keep stem" and kept.groups["stage4"].fixed_by == "keep layer4.*"
    assert kept.groups["stage3"].fixed_by == "keep stage3"
    assert kept.n_items == rn50.n_items - 32 - 8 - (8 + 8 + 16 + 4 * 16)
    # a block holding a kept conv is no longer removable: layer3.* (their conv3 is in stage3) and layer4.*
    assert [b.name for b in kept.blocks] == [b.name for b in rn50.blocks if b.name[:6] not in ("layer3", "layer4")]
    assert rn50.groups["conv1"].prunable and len(rn50.blocks) == 16  # the original is untouched
    with pytest.raises(LatlabError, match="keep pattern 'layer9.*' matches no conv or channel group of 'resnet50'"):
        rn50.keeping(["layer9.*"])
    with pytest.raises(LatlabError, match="not prunable"):
        kept.conv_widths({"conv1": 32})
    # a group fixed for its own reason keeps that reason; the stem of ResNet-18 is coupled to stage 1's residual
    assert build_network_spec(_Fixed(), 16, keep=["stem"]).groups["dw"].fixed_by == "depthwise on the input"
    r18 = build_network_spec("resnet18", 64, keep=["stem"])
    stem = r18.groups[r18.group_of("conv1")]
    assert stem.fixed_by == "keep stem" and len(stem.convs) == 3


def test_fixed_groups() -> None:
    spec = build_network_spec(_Fixed(), 16)
    assert not spec.groups["dw"].prunable  # depthwise on the RGB input
    assert not spec.groups["head"].prunable  # reaches the network output
    assert spec.groups["pw"].prunable and spec.conv("pw").bn == "bn"
    assert spec.items == {"pw": 2}
    assert spec.conv_widths({"pw": 8})["head"] == (8, 5)
    with pytest.raises(LatlabError, match="not prunable"):
        spec.conv_widths({"head": 4})
    with pytest.raises(LatlabError, match="no channel group"):
        spec.conv_widths({"nope": 4})
    with pytest.raises(LatlabError, match="no removable block"):
        spec.conv_widths({}, ["layer9"])


def test_concatenated_channels_are_fixed() -> None:
    """A conv reading a concat has a fixed cin; the concatenated groups keep their width, the stem stays prunable."""
    spec = build_network_spec(_Concat(), 16)
    assert spec.items == {"s": 2}
    assert [g.fixed_by for g in spec.groups.values()] == ["", "cat", "cat", "network output"]
    assert not any(spec.groups[g].prunable for g in ("a", "b", "c"))
    assert (spec.producer_group("a"), spec.producer_group("c")) == ("s", None)
    assert spec.conv_widths({"s": 8}) == {"s": (3, 8), "a": (8, 8), "b": (8, 8), "c": (16, 8)}


@pytest.mark.parametrize(("model", "prunable"), [
    ("densenet121", r"features\.denseblock\d\.denselayer\d+\.conv1"),  # each dense layer's bottleneck
    ("squeezenet1_1", r"features\.(0|\d+\.squeeze)"),  # the stem and the squeeze convs feeding both expands
    ("googlenet", r"conv\d\.conv|inception\w+\.branch[23]\.0\.conv"),  # the stem and the 3x3/5x5 branches' reductions
    # the stem with the depthwise conv it feeds, each branch2's 1x1 with its depthwise conv, the conv before the fc
    ("shufflenet_v2_x0_5", r"(conv1|stage\d\.\d\.branch2)\.0:coupled|conv5\.0"),
])
def test_networks_with_concats_prune_what_is_not_concatenated(model: str, prunable: str) -> None:
    spec = build_network_spec(model, 64)
    ids = [g.id for g in spec.groups.values() if g.prunable]
    assert ids and all(re.fullmatch(prunable, gid) for gid in ids), ids
    why = {g.fixed_by for g in spec.groups.values() if not g.prunable}
    fixed = r"(cat|chunk|transpose) in \S+|depthwise on a concat or split|network output"
    assert all(re.fullmatch(fixed, w) for w in why), why
    assert spec.conv_widths({gid: spec.groups[gid].q for gid in ids})  # any widths of them are consistent


def test_unsupported_graphs() -> None:
    with pytest.raises(LatlabError, match=r"conv c is fed by several channel groups \(a, b\) that are not joined"):
        build_network_spec(_Concat(torch.maximum), 16)
    # an op the zero rule does not know keeps its operands' channels whole instead (profiler._zeros)
    spec = build_network_spec(_Concat(torch.atan2), 16)
    assert {g.convs[0]: g.fixed_by for g in spec.groups.values() if g.convs[0] in "ab"} == dict.fromkeys(
        "ab", "atan2 makes its pruned channels non-zero before conv c")
    with pytest.raises(LatlabError, match="unknown torchvision model"):
        build_network_spec("resnet5O")
    with pytest.raises(LatlabError, match="use group_sizes='auto'"):
        build_network_spec("resnet18", 32, group_sizes="reference")


def test_resnet_blocks_have_no_shortcut_convs(specs: dict[str, NetworkSpec]) -> None:
    for name in ("resnet18", "resnet101"):
        spec = specs[name]
        assert all("downsample" not in c for b in spec.blocks for c in b.convs)


def test_channels_export_cannot_slice_are_fixed() -> None:
    """ConvNeXt's channels pass through permutes and LayerNorms: no prunable group, and pruning says so."""
    from torchvision.models import convnext_tiny

    from latency_models.base import get_model
    from pruning.cost import Settings, build_problem

    spec = build_network_spec(convnext_tiny(), 64, name="convnext_tiny")  # a module, named as the user called it
    assert spec.groups and not any(g.prunable for g in spec.groups.values()) and not spec.blocks
    assert {g.fixed_by.split(" in ")[0] for g in spec.groups.values()} <= {"permute", "add"}
    with pytest.raises(LatlabError, match="convnext_tiny: nothing for mdp to prune .*no removable block"):
        build_problem(spec, get_model("llm"), {}, method="mdp", target=0.5, settings=Settings(1))
