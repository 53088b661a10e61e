"""Tests for profiler.plan: tracing torchvision models into conv layers and expanding sweep grids."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from db.errors import LatlabError
from db.keys import ConvConfig, ConvFamily
from profiler import _grids
from profiler.plan import (
    GridSpec,
    SweepPlan,
    TraceResult,
    build_plan,
    parse_grid,
    plan_from_layers,
    resolve_model,
    shape_families,
    trace_convs,
    trace_network,
)

REPO = Path(__file__).resolve().parents[2]

# halp_mdp_spec.md §3.2: the (fmap, k, stride) configs of the MDP ResNet50 LUT.
SPEC_FAMILIES = [
    (224, 7, 2), (56, 1, 1), (56, 3, 1), (56, 1, 2), (56, 3, 2), (28, 1, 1), (28, 3, 1), (28, 1, 2),
    (28, 3, 2), (14, 1, 1), (14, 3, 1), (14, 1, 2), (14, 3, 2), (7, 1, 1), (7, 3, 1),
]
# Number of distinct six-token keys in [M] pkls/used_lut_keys.pkl (spec §3.2).
SPEC_USED_LUT_KEYS = 1423
RN50_REFERENCE_CONFIGS = 1423
RN50_FULL8_CONFIGS = 95944


@pytest.fixture(scope="module")
def rn50() -> TraceResult:
    return trace_network("resnet50")


@pytest.fixture(scope="module")
def rn50_reference(rn50: TraceResult) -> SweepPlan:
    return build_plan(rn50, "reference")


@pytest.fixture(scope="module")
def rn50_full8(rn50: TraceResult) -> SweepPlan:
    return build_plan(rn50, "full:8")


@pytest.fixture(scope="module")
def mbv2() -> TraceResult:
    return trace_network("mobilenet_v2")


def _by_name(trace: TraceResult) -> dict:
    return {layer.name: layer for layer in trace.layers}


def _points(plan: SweepPlan, fam: ConvFamily) -> set[tuple[int, int]]:
    return {(c.cin, c.cout) for c in plan.configs if c.family == fam}


# ------------------------------------------------------------------------------------------ tracing

def test_resnet50_has_53_convs_in_forward_order(rn50: TraceResult) -> None:
    assert len(rn50.layers) == 53
    assert [layer.name for layer in rn50.layers] == _grids.rn50_conv_names()
    assert sum(layer.cout for layer in rn50.layers) == 26560  # spec §2.1
    stem = rn50.layers[0]
    assert (stem.cin, stem.cout, stem.producers) == (3, 64, ())
    assert stem.family == ConvFamily.square(224, 7, 2)


def test_resnet50_families_match_spec(rn50: TraceResult) -> None:
    fams = shape_families(rn50.layers)
    assert len(fams) == 15
    assert {(f.in_h, f.kernel_h, f.stride_h) for f in fams} == set(SPEC_FAMILIES)
    for f in fams:  # square, 'same' padding, dense
        assert f == ConvFamily.square(f.in_h, f.kernel_h, f.stride_h)
    names = {(f.in_h, f.kernel_h, f.stride_h): [layer.name for layer in ls] for f, ls in fams.items()}
    # torchvision ResNet50 is v1.5: the stride sits on conv2 of block 0, and the shortcut conv.
    assert names[(56, 3, 2)] == ["layer2.0.conv2"]
    assert names[(56, 1, 2)] == ["layer2.0.downsample.0"]
    assert names[(28, 1, 2)] == ["layer3.0.downsample.0"]
    assert names[(14, 1, 2)] == ["layer4.0.downsample.0"]
    # stage-1's shortcut has stride 1, and layer2.0.conv1 (256->128) still runs at 56x56.
    assert "layer1.0.downsample.0" in names[(56, 1, 1)]
    assert "layer2.0.conv1" in names[(56, 1, 1)]
    assert len(names[(56, 1, 1)]) == 8  # 3 conv1 + 3 conv3 + shortcut of layer1, layer2.0.conv1


def test_shape_families_first_appearance_order(rn50: TraceResult) -> None:
    fams = list(shape_families(rn50.layers))
    firsts = []
    for layer in rn50.layers:
        if layer.family not in firsts:
            firsts.append(layer.family)
    assert fams == firsts


def test_resnet50_coupled_groups(rn50: TraceResult) -> None:
    coupled = [set(g) for g in rn50.groups if len(g) > 1]
    expected = []
    for s, blocks in enumerate(_grids.RN50_BLOCKS, start=1):
        expected.append({f"layer{s}.0.downsample.0"} | {f"layer{s}.{b}.conv3" for b in range(blocks)})
    assert coupled == expected
    assert [len(g) for g in coupled] == [4, 5, 7, 4]
    assert len(rn50.groups) == 37  # 33 singletons + 4 coupled (spec §2.2)


def test_resnet50_producers_match_spec(rn50: TraceResult) -> None:
    layers = _by_name(rn50)
    group_of = rn50.group_of()
    stream = {g[0].split(".")[0]: g for g in rn50.groups if len(g) > 1}  # "layerS" -> coupled group
    for layer in rn50.layers:
        spec = _grids.rn50_spec_producer(layer.name)
        if spec is None:
            assert layer.producers == ()
            continue
        # all producers found by fx lie in one group, the one spec §2.2 names
        assert len({group_of[p] for p in layer.producers}) == 1
        if spec.startswith("stage"):
            assert set(layer.producers) <= set(stream[f"layer{spec[5:]}"])
        else:
            assert layer.producers == (spec,)
    assert layers["layer1.0.conv1"].producers == ("conv1",)
    assert layers["layer1.0.downsample.0"].producers == ("conv1",)
    assert layers["layer3.0.conv2"].producers == ("layer3.0.conv1",)
    assert set(layers["layer2.0.conv1"].producers) == set(stream["layer1"])
    assert layers["layer2.0.downsample.0"].producers == layers["layer2.0.conv1"].producers
    assert layers["layer3.1.conv1"].producers == ("layer3.0.conv3", "layer3.0.downsample.0")


def test_mobilenet_v2_depthwise_diagonal(mbv2: TraceResult) -> None:
    plan = build_plan(mbv2, "full:8")
    dw = [f for f in plan.families() if f.depthwise]
    assert dw and all(f.groups == 1 for f in dw)
    for fam in dw:
        assert all(c.cin == c.cout for c in plan.configs if c.family == fam)
    dense = {layer.cin for layer in plan.layers if layer.family.depthwise}
    assert 960 in dense and 32 in dense
    assert all((c, c) in _points(plan, layer.family)
               for layer in plan.layers if layer.family.depthwise for c in [layer.cin])


def test_resnext_grouped_families() -> None:
    plan = build_plan("resnext50_32x4d", "full:8")
    grouped = [f for f in plan.families() if f.groups > 1]
    assert grouped and all(f.groups == 32 and not f.depthwise for f in grouped)
    for c in plan.configs:
        if c.family.groups == 32:
            assert c.cin % 32 == 0 and c.cout % 32 == 0
    l1 = next(layer for layer in plan.layers if layer.name == "layer1.0.conv2")
    assert (l1.cin, l1.cout, l1.family.groups) == (128, 128, 32)
    assert {ci for ci, _ in _points(plan, l1.family)} >= {32, 64, 96, 128}


def test_resnet18_and_non_square_input() -> None:
    layers = trace_convs("resnet18", input_size=(224, 160))
    assert len(layers) == 20
    fams = shape_families(layers)
    assert len(fams) == 11
    stem = layers[0].family
    assert (stem.in_h, stem.in_w, stem.out_h, stem.out_w) == (224, 160, 112, 80)
    last = layers[-1].family
    assert (last.in_h, last.in_w) == (7, 5)
    assert not stem.is_square
    plan = build_plan("resnet18", "full:32", input_size=(224, 160))
    assert plan.description["input_size"] == [224, 160]
    assert len(plan.families()) == 11


def test_trace_failure_is_latlab_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.conv(x)
            return x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = Branchy()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    with pytest.raises(LatlabError) as info:
        trace_convs(Outer())
    msg = str(info.value)
    assert "Outer" in msg and "'body'" in msg and "\n" not in msg


def test_shape_failure_names_node() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8 * 30 * 30, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(LatlabError, match=r"Fixed.*fc"):
        trace_convs(Fixed(), input_size=64)
    assert len(trace_convs(Fixed(), input_size=32)) == 1


def test_module_mode_preserved_and_producers_stop_at_linear() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(16, 4, 3, padding=1)
            self.fc = nn.Linear(4, 4)
            self.d = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1))
            z = self.fc(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.d(z) + y

    net = Net().train()
    trace = trace_network(net, 16)
    assert net.training
    layers = _by_name(trace)
    assert layers["c"].producers == ("a", "b")
    assert layers["d"].producers == ()  # a Linear mixes channels: not a conv producer
    assert {frozenset(g) for g in trace.groups} == {frozenset({"a"}), frozenset({"b"}), frozenset({"c", "d"})}


def test_import_does_not_initialise_cuda() -> None:
    code = "import torch, profiler.plan; assert not torch.cuda.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------------------------------ models

def test_resolve_model_by_name() -> None:
    name, module = resolve_model("ResNet18", num_classes=10)
    assert name == "resnet18" and not module.training
    assert module.fc.out_features == 10


def test_unknown_model_suggests() -> None:
    with pytest.raises(LatlabError) as info:
        resolve_model("resnet5O")
    msg = str(info.value)
    assert "resnet5O" in msg and "resnet50" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ grid syntax

@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("full", GridSpec("full")),
        ("full:16", GridSpec("full", step=16)),
        ("lattice", GridSpec("lattice")),
        (" Reference ", GridSpec("reference")),
        ("explicit:cin=16:256:16,cout=16:256:16",
         GridSpec("explicit", cin=(16, 256, 16), cout=(16, 256, 16))),
        ("explicit:cout=8:8:1, cin=3:3:1", GridSpec("explicit", cin=(3, 3, 1), cout=(8, 8, 1))),
        ("random:200", GridSpec("random", n=200)),
        ("random:200:16", GridSpec("random", step=16, n=200)),
        ("lhs:50:4:seed=3", GridSpec("lhs", step=4, n=50, seed=3)),
        ("lhs:200", GridSpec("lhs", n=200)),
    ],
)
def test_parse_grid_valid(text: str, spec: GridSpec) -> None:
    parsed = parse_grid(text)
    assert parsed == spec
    assert parse_grid(parsed.text) == parsed
    json.dumps(parsed.to_dict())


@pytest.mark.parametrize(
    "text",
    ["full:0", "full:-8", "full:8:2", "lhs", "lhs:0", "random:x", "random:10:y", "random:1:2:3",
     "explicit:cin=1:2", "explicit:cin=1:2:1", "explicit:cin=4:2:1,cout=1:2:1",
     "explicit:cin=0:8:1,cout=1:8:1",
     "explicit:cin=1:8:1,cout=1:8:0", "explicit:cin=1:8:1,cin=1:8:1", "explicit:foo=1:2:3", "reference:2", "lattice:8",
     "bogus", "", "   "],
)
def test_parse_grid_invalid(text: str) -> None:
    with pytest.raises(LatlabError) as info:
        parse_grid(text)
    msg = str(info.value)
    assert "\n" not in msg and "valid:" in msg and "full[:STEP]" in msg


def test_gridspec_validates_directly() -> None:
    with pytest.raises(LatlabError):
        GridSpec("nope")
    with pytest.raises(LatlabError):
        GridSpec("random")
    with pytest.raises(LatlabError):
        GridSpec("explicit", cin=(1, 8, 1))


# ------------------------------------------------------------------------------------------ reference

def test_reference_lattice_facts(rn50: TraceResult, rn50_reference: SweepPlan) -> None:
    grids = _grids.reference_grids(rn50)
    # layer3.1.conv1: q=128, n=256; producer = stage-3 coupled group, q=128, n=1024
    assert grids["layer3.1.conv1"] == {(ci, co) for ci in range(128, 1025, 128) for co in (128, 256)}
    # stem: cin fixed at 3, cout on q=2
    assert grids["conv1"] == {(3, co) for co in range(2, 65, 2)}
    # layer1.0.conv1: cin on the stem's lattice (q=2), cout q=32
    assert grids["layer1.0.conv1"] == {(ci, co) for ci in range(2, 65, 2) for co in (32, 64)}
    # stage-2 coupled q = max(128, 64) = 128; the shortcut reads stage 1's lattice (q=64)
    assert grids["layer2.0.downsample.0"] == {
        (ci, co) for ci in (64, 128, 192, 256) for co in (128, 256, 384, 512)
    }
    stem_fam = ConvFamily.square(224, 7, 2)
    assert _points(rn50_reference, stem_fam) == {(3, co) for co in range(2, 65, 2)}
    # every channel count is 2..64 by 2 or a multiple of 32, as in the MDP LUT keys (spec §3.2)
    for c in rn50_reference.configs:
        for v in (c.cout, c.cin if c.cin != 3 else 2):
            assert (v <= 64 and v % 2 == 0) or v % 32 == 0


def _independent_reference_count() -> int:
    """Count the reference lattice straight from spec §2.2/§2.3, without profiler code."""
    keys: set[tuple[int, int, int, int, int]] = set()  # (fmap, k, stride, cin, cout)

    def add(f: int, k: int, s: int, q_in: int, n_in: int, q: int, n: int) -> None:
        cins = [3] if q_in == 0 else range(q_in, n_in + 1, q_in)
        keys.update((f, k, s, ci, co) for ci in cins for co in range(q, n + 1, q))

    add(224, 7, 2, 0, 3, 2, 64)  # stem
    fmaps = [56, 28, 14, 7]
    stream_q = [64, 128, 128, 128]
    prev_q, prev_n = 2, 64  # the stem feeds stage 1
    for s, blocks in enumerate((3, 4, 6, 3)):
        width, out = 64 << s, 256 << s
        f_out = fmaps[s]
        f_in = fmaps[s - 1] if s else 56
        stride = 1 if s == 0 else 2
        for b in range(blocks):
            if s == 2 and b > 0:
                q1, q2 = 128, 32
            elif s in (2, 3) and b == 0:
                q1 = q2 = 64
            else:
                q1 = q2 = 32
            if b == 0:
                add(f_in, 1, 1, prev_q, prev_n, q1, width)              # conv1 reads the previous stream
                add(f_in, 3, stride, q1, width, q2, width)              # conv2 (v1.5 stride)
                add(f_in, 1, stride, prev_q, prev_n, stream_q[s], out)  # downsample.0
            else:
                add(f_out, 1, 1, stream_q[s], out, q1, width)
                add(f_out, 3, 1, q1, width, q2, width)
            add(f_out, 1, 1, q2, width, stream_q[s], out)               # conv3
        prev_q, prev_n = stream_q[s], out
    assert {(f, k, s) for f, k, s, _, _ in keys} == set(SPEC_FAMILIES)
    return len(keys)


def test_reference_config_count(rn50_reference: SweepPlan) -> None:
    assert _independent_reference_count() == RN50_REFERENCE_CONFIGS
    assert len(rn50_reference) == RN50_REFERENCE_CONFIGS
    # the same number as the distinct keys an MDP ResNet50 run read from its LUT (spec §3.2)
    assert RN50_REFERENCE_CONFIGS == SPEC_USED_LUT_KEYS
    got = {(c.family.in_h, c.family.kernel_h, c.family.stride_h) for c in rn50_reference.configs}
    assert got == set(SPEC_FAMILIES)
    assert rn50_reference.description["grid"]["kind"] == "reference"


def test_reference_only_for_resnet50() -> None:
    with pytest.raises(LatlabError) as info:
        build_plan("resnet18", "reference")
    msg = str(info.value)
    assert "resnet50" in msg and "--grid lattice" in msg and "\n" not in msg


def test_reference_rejects_resnet50_lookalike(rn50: TraceResult) -> None:
    layers = list(rn50.layers)
    i = next(i for i, layer in enumerate(layers) if layer.name == "layer3.1.conv1")
    layers[i] = type(layers[i])(layers[i].name, layers[i].family, layers[i].cin, 512, layers[i].producers)
    fake = TraceResult("wide", rn50.input_size, layers, rn50.groups)
    with pytest.raises(LatlabError, match="only for resnet50"):
        build_plan(fake, "reference")


# ------------------------------------------------------------------------------------------ lattice

def _pruner_points(model: str, keep: tuple[str, ...] = ()) -> set[tuple[ConvFamily, int, int]]:
    """Every (family, cin, cout) the pruner can ask for with auto group sizes (from its own network spec)."""
    from pruning.graph import build_network_spec

    spec = build_network_spec(model, 224, group_sizes="auto", keep=keep)
    out: set[tuple[ConvFamily, int, int]] = set()
    for conv in spec.convs:
        g = spec.groups[conv.group]
        couts = range(g.q, g.width + 1, g.q) if g.prunable else [g.width]
        if conv.depthwise:
            out.update((conv.family, c, c) for c in couts)
            continue
        p = spec.groups.get(conv.producer_group or "")
        cins = range(p.q, p.width + 1, p.q) if p is not None and p.prunable else [conv.cin]
        out.update((conv.family, ci, co) for ci in cins for co in couts)
    return out


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2", "resnext50_32x4d", "regnet_y_400mf", "densenet121",
                                   "shufflenet_v2_x0_5", "convnext_tiny"])
def test_lattice_grid_is_what_the_pruner_asks_for(model: str) -> None:
    plan = build_plan(model, "lattice", input_size=224, batch=1)
    assert {(c.family, c.cin, c.cout) for c in plan.configs} == _pruner_points(model)
    assert plan.description["grid"]["text"] == "lattice"


@pytest.mark.parametrize(("model", "keep"), [("resnet50", ("stem",)), ("mobilenet_v2", ("stem", "features.1[78].*"))])
def test_lattice_with_keep_is_what_the_pruner_asks_for_with_keep(model: str, keep: tuple[str, ...]) -> None:
    """`latlab profile --grid lattice --keep` sweeps kept groups at their whole width, like `latlab prune --keep`."""
    from pruning.graph import trace_keeping

    plan = build_plan(trace_keeping(model, 224, keep), "lattice", batch=1)
    points = {(c.family, c.cin, c.cout) for c in plan.configs}
    assert points == _pruner_points(model, keep)
    assert points < {(c.family, c.cin, c.cout) for c in build_plan(model, "lattice", batch=1).configs}


# ------------------------------------------------------------------------------------------ full / others

def test_full_grid_count_and_contents(rn50: TraceResult, rn50_full8: SweepPlan) -> None:
    expected: set[tuple[ConvFamily, int, int]] = set()
    for layer in rn50.layers:
        cins = [3] if layer.name == "conv1" else sorted(set(range(8, layer.cin + 1, 8)) | {layer.cin})
        couts = sorted(set(range(8, layer.cout + 1, 8)) | {layer.cout})
        expected.update((layer.family, ci, co) for ci in cins for co in couts)
    assert len(expected) == RN50_FULL8_CONFIGS
    assert len(rn50_full8) == RN50_FULL8_CONFIGS
    assert {(c.family, c.cin, c.cout) for c in rn50_full8.configs} == expected
    assert parse_grid("full").step == 8  # so "full" plans these too


def test_plan_order_unique_valid_and_described(rn50: TraceResult, rn50_full8: SweepPlan) -> None:
    plan = rn50_full8
    keys = [(c.family, c.cin, c.cout) for c in plan.configs]
    assert len(set(keys)) == len(keys)
    fam_order = list(shape_families(rn50.layers))
    assert plan.families() == fam_order
    assert keys == sorted(keys, key=lambda k: (fam_order.index(k[0]), k[1], k[2]))
    for c in plan.configs[::97]:
        assert ConvConfig(c.family, c.cin, c.cout, c.batch, c.dtype, c.layout, c.op) == c
        assert (c.batch, c.dtype, c.layout, c.op) == (256, "fp32", "nchw", "conv")
    assert build_plan(rn50, "full:32").configs == build_plan(rn50, "full:32").configs
    desc = json.loads(json.dumps(plan.description))
    assert desc["model"] == "resnet50" and desc["input_size"] == [224, 224]
    assert desc["n_layers"] == 53 and desc["n_families"] == 15 and desc["n_configs"] == len(plan)
    assert desc["grid"]["text"] == "full:8" and desc["batch"] == 256


def test_plan_settings(rn50: TraceResult) -> None:
    plan = build_plan(rn50, "full:64", batch=32, dtype="fp16", layout="nhwc", op="conv_bn_relu")
    settings = {(c.batch, c.dtype, c.layout, c.op) for c in plan.configs}
    assert settings == {(32, "fp16", "nhwc", "conv_bn_relu")}
    with pytest.raises(LatlabError):
        build_plan(rn50, "full:64", dtype="fp64")
    with pytest.raises(LatlabError):
        build_plan(rn50, "full:64", batch=0)


def test_explicit_grid(rn50: TraceResult) -> None:
    plan = build_plan(rn50, "explicit:cin=16:256:16,cout=32:128:32")
    stem = ConvFamily.square(224, 7, 2)
    assert _points(plan, stem) == {(3, co) for co in (32, 64, 96, 128)}
    other = ConvFamily.square(7, 3, 1)
    assert _points(plan, other) == {(ci, co) for ci in range(16, 257, 16) for co in (32, 64, 96, 128)}
    assert len(plan) == 16 * 4 * 14 + 4


def test_explicit_depthwise(mbv2: TraceResult) -> None:
    layers = mbv2.layers
    configs = plan_from_layers(layers, parse_grid("explicit:cin=8:64:8,cout=16:48:16"))
    for c in configs:
        if c.family.depthwise:
            assert c.cin == c.cout and c.cout in (16, 32, 48)
    assert {c.cout for c in configs if c.family.depthwise} == {16, 32, 48}


@pytest.mark.parametrize("kind", ["random", "lhs"])
def test_sampled_grids(rn50: TraceResult, rn50_full8: SweepPlan, kind: str) -> None:
    plan = build_plan(rn50, f"{kind}:40")
    full = {(c.family, c.cin, c.cout) for c in rn50_full8.configs}
    got = {(c.family, c.cin, c.cout) for c in plan.configs}
    assert got <= full
    fams = shape_families(rn50.layers)
    for fam, layers in fams.items():
        pts = _points(plan, fam)
        dense = {(layer.cin, layer.cout) for layer in layers}
        assert dense <= pts
        grid_size = len(_points(rn50_full8, fam))
        if kind == "random":
            assert len(pts) == min(grid_size, max(40, len(dense)))
        else:
            assert len(pts) <= 40 + len(dense)
            assert len(pts) >= min(grid_size, 10)
    assert plan_keys(build_plan(rn50, f"{kind}:40")) == plan_keys(plan)
    assert plan_keys(build_plan(rn50, f"{kind}:40:8:seed=1")) != plan_keys(plan)
    stem = ConvFamily.square(224, 7, 2)
    assert {ci for ci, _ in _points(plan, stem)} == {3}


def plan_keys(plan: SweepPlan) -> list[tuple[ConvFamily, int, int]]:
    return [(c.family, c.cin, c.cout) for c in plan.configs]


def test_lhs_spreads_over_grid(rn50: TraceResult) -> None:
    plan = build_plan(rn50, "lhs:64:8")
    fam = ConvFamily.square(7, 3, 1)  # 512 x 512, a single 64 x 64 lattice
    pts = _points(plan, fam)
    assert len(pts) >= 60
    cins = sorted(ci for ci, _ in pts)
    assert cins[0] <= 64 and cins[-1] >= 448  # covers the range, not clumped


def test_depthwise_sampled(mbv2: TraceResult) -> None:
    layers = mbv2.layers
    for kind in ("random:5", "lhs:5"):
        configs = plan_from_layers(layers, parse_grid(kind))
        assert all(c.cin == c.cout for c in configs if c.family.depthwise)


def test_convs_no_lut_prices_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A transposed, 1-D or 3-D conv is not swept: its latency is left out, and the trace says so."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Conv2d(8, 4, 1))
    with caplog.at_level(logging.WARNING):
        layers = trace_convs(net, 16)
    assert [layer.name for layer in layers] == ["0", "2"]
    assert "ConvTranspose2d 1 is not planned (only nn.Conv2d modules are): no LUT prices it" in caplog.text
