from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torchvision.models import (
    mobilenet_v2,
    mobilenet_v3_small,
    regnet_x_400mf,
    regnet_y_400mf,
    resnet18,
    resnet50,
    resnext50_32x4d,
)

from db.errors import LatlabError
from profiler.measure import count_params_and_macs
from profiler.plan import trace_network
from pruning.check import check_export, randomise_bn
from pruning.check import random_masks as spec_masks
from pruning.export import export_pruned, masked_reference, verify_export
from pruning.graph import build_network_spec
from pruning.slices import Slices, take
from tests.pruning.random_masks import random_masks

SHAPE = (2, 3, 64, 64)
ONE = (1, 3, 64, 64)


def param_and_mac_counts(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    counts = count_params_and_macs(model, shape)
    return counts["params"], counts["macs_per_image"]


def _model(factory, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = factory(num_classes=10).eval()
    randomise_bn(model, seed)
    return model


@pytest.mark.parametrize("factory", [resnet18, resnet50, mobilenet_v2])
def test_export_matches_masked(factory) -> None:
    model = _model(factory, 0)
    trace = trace_network(model, 64)
    masks = random_masks(trace, 1)
    exported = export_pruned(model, trace, masks)
    ref = masked_reference(model, masks)
    assert verify_export(ref, exported, SHAPE) < 1e-3
    p0, m0 = param_and_mac_counts(model, ONE)
    p1, m1 = param_and_mac_counts(exported, ONE)
    assert p1 < p0 and m1 < m0
    if factory is resnet50:
        return
    # the source model is untouched and unmasked models export to themselves
    dense = export_pruned(model, trace, {})
    assert verify_export(model, dense, SHAPE, rtol=1e-9) <= 1e-9
    assert param_and_mac_counts(dense, ONE) == (p0, m0)


@pytest.mark.parametrize(("factory", "conv"), [(resnext50_32x4d, "layer2.1.conv2"),
                                               (regnet_y_400mf, "trunk_output.block3.block3-1.f.b.0")])
def test_export_grouped_convs(factory, conv: str) -> None:
    """Striped masks (the pruner's) keep the same positions in every conv group: the conv stays grouped."""
    model = _model(factory, 7)
    spec = build_network_spec(model, 64)
    masks = spec_masks(spec, 8)
    slices: Slices = {}
    exported = export_pruned(model, trace_network(model, 64), masks, slices=slices)
    assert verify_export(masked_reference(model, masks), exported, SHAPE) < 1e-3
    dense, slim = model.get_submodule(conv), exported.get_submodule(conv)
    in_keep, out_keep = masks[spec.groups[spec.producer_group(conv)].convs[0]], masks[conv]
    assert (slim.groups, slim.in_channels, slim.out_channels) == (dense.groups, int(in_keep.sum()), int(out_keep.sum()))
    assert slim.in_channels < dense.in_channels and slim.out_channels < dense.out_channels
    torch.testing.assert_close(take(dense.weight.detach(), slices[f"{conv}.weight"]), slim.weight)
    # one position differs between two conv groups: refused, naming the conv
    bad = {k: v.clone() for k, v in masks.items()}
    for name in spec.groups[spec.group_of(conv)].convs:
        bad[name] = out_keep.clone()
        bad[name][int(out_keep.nonzero()[0])] = False
    with pytest.raises(LatlabError, match=f"conv {conv}: grouped conv with groups={dense.groups}"):
        export_pruned(model, trace_network(model, 64), bad)


def test_export_slices_by_indices() -> None:
    model = _model(resnet18, 3)
    trace = trace_network(model, 64)
    masks = random_masks(trace, 4)
    exported = export_pruned(model, trace, masks)
    keep = masks["layer3.0.conv1"]
    idx = keep.nonzero().flatten()
    assert exported.layer3[0].conv1.out_channels == int(keep.sum())
    in_idx = masks["layer2.1.conv2"].nonzero().flatten()
    torch.testing.assert_close(exported.layer3[0].conv1.weight, model.layer3[0].conv1.weight[idx][:, in_idx])
    torch.testing.assert_close(exported.layer3[0].bn1.running_mean, model.layer3[0].bn1.running_mean[idx])
    assert exported.fc.in_features == int(masks["layer4.1.conv2"].sum())


def test_remove_block_resnet18() -> None:
    model = _model(resnet18, 5)
    trace = trace_network(model, 64)
    masks = random_masks(trace, 6)
    removed = ["layer2.1", "layer3.0"]  # identity shortcut, and a projection (downsample) shortcut
    exported = export_pruned(model, trace, masks, removed)
    assert isinstance(exported.layer2[1], nn.Identity)
    assert not any(
        isinstance(m, nn.Conv2d) for m in exported.layer3[0].modules() if m is not exported.layer3[0].downsample[0]
    )
    ref = masked_reference(model, masks, removed)
    assert verify_export(ref, exported, SHAPE) < 1e-3
    # the masked equivalent of removing layer2.1 is relu(identity): its residual branch adds 0
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        h = ref.layer2[0](ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))
        torch.testing.assert_close(ref.layer2[1](h), torch.relu(h))
    assert param_and_mac_counts(exported, ONE)[0] < param_and_mac_counts(export_pruned(model, trace, masks), ONE)[0]


def test_export_errors() -> None:
    model = _model(resnet18, 7)
    trace = trace_network(model, 64)
    masks = random_masks(trace, 8)
    bad = dict(masks)
    bad["layer1.0.conv2"] = torch.ones(64, dtype=torch.bool)  # differs from its coupled group's mask
    if torch.equal(bad["layer1.0.conv2"], masks["layer1.0.conv2"]):
        bad["layer1.0.conv2"][0] = False
    with pytest.raises(LatlabError):
        export_pruned(model, trace, bad)
    with pytest.raises(LatlabError):
        export_pruned(model, trace, masks, ["layer2"])
    with pytest.raises(LatlabError):
        export_pruned(model, trace, {"layer1.0.conv1": torch.zeros(64, dtype=torch.bool)})
    wrong = export_pruned(model, trace, masks)
    with torch.no_grad():
        wrong.fc.bias += 1.0
    with pytest.raises(LatlabError):
        verify_export(masked_reference(model, masks), wrong, SHAPE)


def test_export_of_channel_masked_model_after_training() -> None:
    from pruning.importance import build_groups
    from pruning.masks import ChannelMasks

    model = _model(resnet18, 9)
    trace = trace_network(model, 64)
    cm = ChannelMasks(model, build_groups(model, trace))
    gen = torch.Generator().manual_seed(10)
    for g, w in cm._width.items():
        keep = torch.rand(w, generator=gen) < 0.5
        keep[0] = True
        cm.set(g, keep)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,))).backward()
        opt.step()
    exported = export_pruned(model, trace, cm.conv_masks())
    assert type(exported.layer1[0].conv1) is nn.Conv2d
    assert verify_export(model, exported, SHAPE) < 1e-3


class _CatNet(nn.Module):
    """Concat of two branches, a depthwise conv on the concat, then a 1x1 conv and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(10, 10, 3, padding=1, groups=10, bias=False), nn.BatchNorm2d(10), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(10, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        y = self.pw(self.dw(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 2), 1))


def test_export_concat_depthwise_and_flatten() -> None:
    model = _model(lambda num_classes: _CatNet(), 11)
    trace = trace_network(model, 16)
    ka = torch.tensor([True, False, True, True, False, True])
    kb = torch.tensor([False, True, True, False])
    masks = {"a.0": ka, "b.0": kb, "dw.0": torch.cat([ka, kb]), "pw.0": torch.tensor([1, 0, 1, 1, 0, 0, 1, 1]).bool()}
    exported = export_pruned(model, trace, masks)
    assert exported.dw[0].groups == exported.dw[0].in_channels == 6
    assert exported.pw[0].in_channels == 6 and exported.fc.in_features == 5 * 4
    assert verify_export(masked_reference(model, masks), exported, (2, 3, 16, 16)) < 1e-5
    masks["dw.0"] = torch.ones(10, dtype=torch.bool)
    with pytest.raises(LatlabError):
        export_pruned(model, trace, masks)


@pytest.mark.parametrize(("factory", "block", "shortcut_conv"), [
    (mobilenet_v2, "features.5", None),  # inverted residual: x + branch(x)
    (mobilenet_v3_small, "features.5", None),  # with SE inside the branch
    (regnet_x_400mf, "trunk_output.block2.block2-0", "proj.0"),  # relu(proj(x) + branch(x)): proj and relu stay
])
def test_remove_blocks_beyond_resnet(factory, block: str, shortcut_conv: str | None) -> None:
    model = _model(factory, 9)
    spec = build_network_spec(model, 64)
    assert block in {b.name for b in spec.blocks}
    masks = spec_masks(spec, 10)
    exported = export_pruned(model, trace_network(model, 64), masks, [block])
    assert verify_export(masked_reference(model, masks, [block]), exported, SHAPE) < 1e-3
    left = exported.get_submodule(block)
    assert isinstance(left, fx.GraphModule)
    convs = [name for name, m in left.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == ([shortcut_conv] if shortcut_conv else [])
    if shortcut_conv:
        assert any(isinstance(m, nn.ReLU) for m in left.modules())


def test_remove_block_errors() -> None:
    model = _model(mobilenet_v2, 11)
    trace = trace_network(model, 64)
    with pytest.raises(LatlabError, match="'features.99' is not a submodule"):
        export_pruned(model, trace, {}, ["features.99"])
    with pytest.raises(LatlabError, match="block 'features.1': 0 residual adds"):  # no shortcut: not a block
        export_pruned(model, trace, {}, ["features.1"])


@pytest.mark.parametrize("name", ["efficientnet_b0", "mnasnet0_5", "densenet121", "squeezenet1_1", "googlenet",
                                  "shufflenet_v2_x0_5"])
def test_export_more_architectures(name: str) -> None:
    """The README's list of networks that prune end to end: channels and every other removable block (networks
    with concats and channel shuffles: the channels that are not concatenated, no blocks)."""
    from torchvision.models import get_model

    kwargs = {"init_weights": False} if name == "googlenet" else {}
    model = get_model(name, num_classes=10, **kwargs)
    spec = build_network_spec(model, 64)
    check = check_export(model, spec, seed=13)  # random masks, every other block removed, torch.export
    assert bool(check.removed_blocks) == (name in ("efficientnet_b0", "mnasnet0_5"))
    assert check.removed_blocks == [b.name for b in spec.blocks][::2]
    assert check.max_logit_delta < 1e-4 and 0 < check.kept_items < check.items
    assert check.counts["macs_pruned"] < check.counts["macs_dense"]


class _InputCat(nn.Module):
    """A conv reading the input image concatenated with a conv's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(11, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(torch.cat([x, self.a(x)], dim=1)).mean((2, 3)))


def test_export_concat_with_an_untracked_input_keeps_its_channels() -> None:
    model = _model(lambda num_classes: _InputCat(), 12)
    masks = {"a.0": torch.tensor([1, 0, 1, 1, 0, 1, 1, 0]).bool()}
    exported = export_pruned(model, trace_network(model, 16), masks)
    assert exported.b[0].in_channels == 3 + 5
    assert verify_export(masked_reference(model, masks), exported, (2, 3, 16, 16)) < 1e-5


class _Applied(nn.Module):
    """A conv's channels scaled by a (C, 1, 1) parameter (``how="scale"``) or read by a ConvTranspose2d."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a = how, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gamma, self.up = nn.Parameter(torch.rand(8, 1, 1)), nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.offset = nn.Parameter(torch.rand(1))  # one number: the same for every channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) * self.offset
        return (y * self.gamma if self.how == "scale" else self.up(y)).mean((2, 3))


@pytest.mark.parametrize(("how", "error"), [("scale", "parameter gamma is applied to pruned channels"),
                                            ("up", r"module up \(ConvTranspose2d\) has per-channel state or mixes")])
def test_export_refuses_what_it_cannot_resize_instead_of_a_broken_network(how: str, error: str) -> None:
    # before, both exported a network whose forward failed
    model = _Applied(how).eval()
    trace = trace_network(model, 16)
    keep = torch.arange(8) < 4
    with pytest.raises(LatlabError, match=error):
        export_pruned(model, trace, {"a.0": keep})
    assert export_pruned(model, trace, {"a.0": torch.ones(8, dtype=torch.bool)})(torch.zeros(1, 3, 16, 16)).shape[1] \
        == (8 if how == "scale" else 4)


def test_inexact_export_keeps_shapes_where_an_exact_one_refuses() -> None:
    """exact=False (networks for timing): nonzero convs may be pruned, a grouped conv keeps its first positions."""

    class GroupedOnCat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.bn, self.g = nn.BatchNorm2d(16), nn.Conv2d(16, 8, 3, padding=1, groups=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.g(torch.sigmoid(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))).mean((2, 3))

    model = GroupedOnCat().eval()
    trace = trace_network(model, 16)
    assert "a" in trace.nonzero  # the sigmoid makes its pruned channels non-zero
    masks = {"a": torch.arange(8) < 4}
    with pytest.raises(LatlabError, match="a must keep all its channels"):
        export_pruned(model, trace, masks)
    slim = export_pruned(model, trace, masks, exact=False)
    assert (slim.g.in_channels, slim.g.groups, slim.a.out_channels, slim.bn.num_features) == (12, 4, 4, 12)
    assert slim(torch.zeros(1, 3, 16, 16)).shape == (1, 8)
    with pytest.raises(LatlabError, match="multiples of the conv's 4 groups"):
        export_pruned(model, trace, {"a": torch.arange(8) < 3}, exact=False)
