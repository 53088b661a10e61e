"""Structures whose channels a pruner must keep, found by the trace, and layers that keep their class when sliced.

Each network here is small and written the way timm writes it (ECA attention, ReXNet's partial residual, BN+act
modules, 'same'-padding and weight-standardised convs, pre-activation BN); the timm models themselves are checked
in test_timm.py when timm is installed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.ops import stochastic_depth

from db.errors import LatlabError
from profiler.plan import register_leaf_module, register_sliceable_conv, trace_network
from pruning.check import check_export
from pruning.export import export_pruned, masked_reference, verify_export
from pruning.graph import build_network_spec
from pruning.masks import BlockGates
from training.pruner import block_gates


class _BNAct(nn.BatchNorm2d):
    """BatchNorm followed by its activation, in one module (timm's BatchNormAct2d)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


@register_sliceable_conv
class _SameConv(nn.Conv2d):
    """A conv that pads on its own, asymmetrically, like timm's Conv2dSame (stride 2, even input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _StdConv(nn.Conv2d):
    """A weight-standardised conv (timm's StdConv2d): its weights are normalised over the input channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _cbr(cin: int, cout: int, **kw: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kw.pop("k", 1), bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU())


class _ECA(nn.Module):
    """Efficient channel attention: a Conv1d over the channel axis (timm's EcaModule)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * y.view(x.shape[0], -1, 1, 1).sigmoid()


class _EcaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.eca, self.b = _cbr(3, 8, k=3), _cbr(8, 16), _ECA(), _cbr(16, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.eca(self.a(self.stem(x)))).mean((2, 3)))


class _PartialResidual(nn.Module):
    """ReXNet's block: the shortcut is added to the first channels only."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cin, self.exp, self.pwl = cin, _cbr(cin, 2 * cin), nn.Sequential(nn.Conv2d(2 * cin, cout, 1),
                                                                           nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwl(self.exp(x))
        return torch.cat([y[:, : self.cin] + x, y[:, self.cin:]], dim=1)


class _RexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = _cbr(3, 8, k=3), _PartialResidual(8, 12), _cbr(12, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block(self.stem(x))).mean((2, 3)))


class _Subclasses(nn.Module):
    """BN+act modules, a self-padding conv and a weight-standardised conv between plain ones."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), _BNAct(8)
        self.down, self.bn1 = _SameConv(8, 16, 3, stride=2, bias=False), _BNAct(16)
        self.mid, self.bn2 = nn.Conv2d(16, 16, 1, bias=False), _BNAct(16)
        self.std, self.bn3 = _StdConv(16, 12, 1, bias=False), _BNAct(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.down(self.bn0(self.stem(x))))
        return self.fc(self.bn3(self.std(self.bn2(self.mid(x)))).mean((2, 3)))


class _PreAct(nn.Module):
    """A pre-activation residual (ResNetV2): the BN that reads the residual stream follows an add, not a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm, self.conv1, self.bn1, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), \
            nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem(x), 3, 1, 1)
        x = x + self.conv2(F.relu(self.bn1(self.conv1(F.relu(self.norm(x))))))
        return self.fc(x.mean((2, 3)))


class _MixedDepthwise(nn.Module):
    """MixNet's mixed conv: a split of one conv's channels, a depthwise conv per part, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = _cbr(3, 16)
        self.dw3, self.dw5 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.out = _cbr(16, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.pw(x), 8, dim=1)
        return self.fc(self.out(torch.cat([self.dw3(a), self.dw5(b)], 1)).mean((2, 3)))


class _ShapeBranchingHead(nn.Module):
    """A head whose forward branches on the input size (timm's VGG ``ConvMlp`` does): fx cannot trace it."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(cin, 10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 4:
            x = F.adaptive_avg_pool2d(x, 4)
        return self.fc(x).flatten(1)


class _HeadNet(nn.Module):
    def __init__(self, head: type[nn.Module]) -> None:
        super().__init__()
        self.a, self.b = _cbr(3, 16, k=3, padding=1), _cbr(16, 32, k=3, padding=1)
        self.head = head(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


@register_leaf_module
class _LeafHead(_ShapeBranchingHead):
    pass


def _fixed_by(model: nn.Module) -> dict[tuple[str, ...], str]:
    return {g.convs: g.fixed_by for g in build_network_spec(model, 16).groups.values()}  # "" when prunable


def test_a_reshape_of_the_channel_axis_fixes_the_channels() -> None:
    """ECA's view(B, 1, C) turns channels into a length a Conv1d slides over: the convs feeding it keep their
    width, the rest prunes, and the export matches the masked network."""
    fixed = _fixed_by(_EcaNet())
    assert fixed[("a.0",)] == "view in eca"
    assert fixed[("stem.0",)] == fixed[("b.0",)] == ""
    model = _EcaNet().eval()
    half = torch.tensor([1, 0] * 4, dtype=torch.bool)
    slim = export_pruned(model, trace_network(model, 16), {"stem.0": half, "b.0": half})
    assert (slim.stem[0].out_channels, slim.a[0].out_channels, slim.b[0].out_channels) == (4, 16, 4)
    assert verify_export(masked_reference(model, {"stem.0": half, "b.0": half}), slim, (2, 3, 16, 16)) < 1e-9


def test_a_slice_of_the_channels_fixes_them_and_what_is_added_to_it() -> None:
    """ReXNet: y[:, :C] + x. The slice fixes the block's last conv, the add fixes the stem (its channels meet a
    slice), and the block cannot be removed (the rest of y is still used)."""
    spec = build_network_spec(_RexNet(), 16)
    fixed = {g.convs: g.fixed_by for g in spec.groups.values()}
    assert fixed[("block.pwl.0",)].startswith("getitem in block")
    assert fixed[("stem.0",)].startswith("add in block with getitem")
    assert fixed[("block.exp.0",)] == fixed[("head.0",)] == ""
    assert not spec.blocks
    assert check_export(_RexNet(), spec).max_logit_delta < 1e-9


def test_a_registered_leaf_module_is_opaque() -> None:
    """A module fx cannot trace is refused with a hint; registered as a leaf, it is not entered: the channels it
    reads stay whole, its conv is not planned, and the rest prunes and exports."""
    with pytest.raises(LatlabError, match=r"inside module 'head'.*register_leaf_module"):
        build_network_spec(_HeadNet(_ShapeBranchingHead), 16)
    spec = build_network_spec(_HeadNet(_LeafHead), 16)
    assert [c.name for c in spec.convs] == ["a.0", "b.0"]
    assert {g.convs: g.fixed_by for g in spec.groups.values()} == {("a.0",): "", ("b.0",): "_LeafHead head"}
    assert check_export(_HeadNet(_LeafHead), spec).max_logit_delta < 1e-9
    # a torch.nn leaf with layers inside is opaque in the same way
    net = nn.Sequential(_cbr(3, 16, k=3, padding=1), _cbr(16, 16, k=1), nn.Flatten(2), nn.TransformerEncoderLayer(
        64, 2, 32, batch_first=True))
    assert {g.convs: g.fixed_by for g in build_network_spec(net, 8).groups.values()} == {
        ("0.0",): "", ("1.0",): "TransformerEncoderLayer 3"}


def test_layer_subclasses_keep_their_class_when_sliced() -> None:
    """A BN subclass with its activation and a self-padding conv are layers like any other: they prune, and
    the slim network keeps their classes; a weight-standardised conv keeps its channels on both sides."""
    model = _Subclasses().eval()
    trace = trace_network(model, 16)
    down = next(layer for layer in trace.layers if layer.name == "down")
    assert (down.family.pad_h, down.family.pad_w) == (1, 1)  # the symmetric padding giving its 8x8 output
    spec = build_network_spec(model, 16)
    fixed = {g.convs: g.fixed_by for g in spec.groups.values()}
    assert fixed[("std",)] == fixed[("mid",)] == "_StdConv std (its own forward)"
    assert fixed[("stem",)] == fixed[("down",)] == ""
    masks = {"stem": torch.tensor([1, 0] * 4, dtype=torch.bool), "down": torch.tensor([1, 1, 0, 0] * 4).bool()}
    slim = export_pruned(model, trace, masks)
    assert type(slim.bn0) is _BNAct and slim.bn0.num_features == 4 and isinstance(slim.bn0.act, nn.ReLU)
    assert type(slim.down) is _SameConv and (slim.down.in_channels, slim.down.out_channels) == (4, 8)
    assert type(slim.std) is _StdConv and slim.std.in_channels == 16
    assert verify_export(masked_reference(model, masks), slim, (2, 3, 16, 16)) < 1e-9


def test_a_bn_after_an_add_fixes_the_channels_it_reads() -> None:
    """Masking zeroes the BN right after a conv; a pre-activation BN reading the residual stream would turn the
    stream's masked zeros into its bias, which the slim network cannot reproduce. The stream stays whole."""
    fixed = _fixed_by(_PreAct())
    assert fixed[("stem", "conv2")] == "BatchNorm2d norm (not right after a conv)"
    assert fixed[("conv1",)] == ""
    assert check_export(_PreAct(), build_network_spec(_PreAct(), 16)).max_logit_delta < 1e-9


def test_depthwise_convs_on_a_split_have_groups_of_their_own() -> None:
    """MixNet: depthwise convs on halves of one conv's channels are not that conv's group; they stay whole."""
    trace = trace_network(_MixedDepthwise(), 16)
    groups = trace.mask_groups()
    assert ["dw3"] in groups and ["dw5"] in groups
    fixed = _fixed_by(_MixedDepthwise())
    assert fixed[("pw.0",)] == "split" and fixed[("dw3",)] == fixed[("dw5",)] == "cat"
    assert fixed[("out.0",)] == ""


def test_export_is_verified_in_float64() -> None:
    """verify_export compares structure, not rounding: an exact export differs by float64 rounding only."""
    model = _EcaNet().eval()
    assert verify_export(model, export_pruned(model, trace_network(model, 16), {}), (2, 3, 16, 16)) < 1e-12
    broken = export_pruned(model, trace_network(model, 16), {})
    with torch.no_grad():
        broken.fc.bias += 1e-2
    with pytest.raises(Exception, match="differs from the masked model"):
        verify_export(model, broken, (2, 3, 16, 16))


def test_export_check_is_relative_to_tiny_outputs() -> None:
    """Logits of 1e-4 (an untrained head): an error of their own size is caught, not hidden by an absolute 1e-3."""
    model = _EcaNet().eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e-4)
        model.fc.bias.mul_(1e-4)
    exact = export_pruned(model, trace_network(model, 16), {})
    assert verify_export(model, exact, (2, 3, 16, 16)) < 1e-15
    with torch.no_grad():
        exact.fc.bias += 1e-4
    with pytest.raises(LatlabError, match=r"max \|Δ\| = 0.0001 > 1e-06 × max \|output\|"):
        verify_export(model, exact, (2, 3, 16, 16))


class _SEBlock(nn.Module):
    """A residual branch that ends in a squeeze-excitation after its last BN (SE-ResNeXt, ECA-ResNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(x + y * self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))).sigmoid())


class _SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.fc = _cbr(3, 8, k=3), _SEBlock(), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_a_branch_ending_in_squeeze_excitation_is_a_removable_block() -> None:
    """Gating the BN before the SE zeroes the branch (x * gate is 0 when x is), so the block can go."""
    model = _SENet().eval()
    spec = build_network_spec(model, 16)
    assert [b.name for b in spec.blocks] == ["block"]
    slim = export_pruned(model, trace_network(model, 16), {}, ["block"])
    assert not any(isinstance(m, nn.Conv2d) for m in slim.block.modules())
    assert verify_export(masked_reference(model, {}, ["block"]), slim, (2, 3, 16, 16)) < 1e-12


class _PreActBlock(nn.Module):
    """ResNetV2's pre-activation block: a BN before each conv, so the branch ends in a conv (with a bias here)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class _PreActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.fc = nn.Conv2d(3, 8, 3, padding=1), _PreActBlock(), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(F.max_pool2d(self.stem(x), 3, 1, 1)).mean((2, 3)))


def test_a_pre_activation_block_is_removable_by_gating_its_last_conv() -> None:
    """No BN ends the branch: zeroing the last conv's weight and bias zeroes it, in the masked reference and in
    the training gate alike, and the export drops the block."""
    model = _PreActNet().eval()
    spec = build_network_spec(model, 16)
    assert [(b.name, b.gate) for b in spec.blocks] == [("block", "block.conv2")]
    slim = export_pruned(model, trace_network(model, 16), {}, ["block"])
    assert not any(isinstance(m, nn.Conv2d) for m in slim.block.modules())
    ref = masked_reference(model, {}, ["block"])
    assert verify_export(ref, slim, (2, 3, 16, 16)) < 1e-12
    gates = BlockGates(model, block_gates(spec))
    gates.set_removed(["block"])
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), ref(x), atol=1e-6)
    assert "block.conv2.parametrizations.bias.0.gate" in model.state_dict()


class _GroupNormBlock(nn.Module):
    """A branch ending in a GroupNorm that tracing enters (timm's GroupNorm: F.group_norm of its parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gn = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.group_norm(self.conv(x), 2, self.gn.weight, self.gn.bias)


def test_a_branch_ending_in_a_traced_norm_is_not_removable() -> None:
    """Zeroing the conv before a norm leaves the norm's bias: no gate, no block (ResNet-50-GN)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(3, 1, 1), _GroupNormBlock())
    assert build_network_spec(model, 16).blocks == []


class _SharedConv(nn.Module):
    """``shared`` is called twice (recurrent refinement): its input is ``a``'s output, then its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bna = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(16), nn.BatchNorm2d(16)
        self.c, self.bnc = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bna(self.a(x)))
        x = F.relu(self.bn2(self.shared(F.relu(self.bn1(self.shared(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.bnc(self.c(x))), 1), 1))


def test_a_conv_called_twice_keeps_its_channels_and_the_rest_prunes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One weight read by two inputs: its group and its producers' stay whole (fixed, saying why), both calls are
    priced, and the rest of the network prunes, exports and writes HALP/MDP tables of module names."""
    from pruning.mdp_tables import write_mdp_tables

    spec = build_network_spec(_SharedConv().eval(), 16)
    why = "shared is called 2 times (shared weights)"
    assert {g.convs: (g.prunable, g.fixed_by) for g in spec.groups.values()} == {
        ("a",): (False, why), ("shared", "shared#2"): (False, why), ("c",): (True, "")}
    assert [c.name for c in spec.convs] == ["a", "shared", "shared#2", "c"]
    assert {m for members in spec.group_members().values() for m in members} == {
        ("a", "bna"), ("shared", "bn1"), ("c", "bnc")}
    assert check_export(_SharedConv().eval(), spec, seed=1).max_logit_delta < 1e-9
    tables = write_mdp_tables(spec, tmp_path, "shared")
    assert not any("#" in path.read_text() for path in tables.values())


class _Between(nn.Module):
    """conv+BN, then ``op`` on its output, then a conv reading it (and a classifier)."""

    def __init__(self, op, **extra: nn.Module) -> None:
        super().__init__()
        self.a, self.b = _cbr(3, 16, k=3, padding=1), nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn, self.fc, self.op = nn.BatchNorm2d(16), nn.Linear(16, 5), op
        for name, module in extra.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.b(self.op(self, self.a(x)))).mean((2, 3)))


_ORDERING_OPS = {
    "flip": lambda m, y: y.flip(1), "roll": lambda m, y: torch.roll(y, 1, 1), "sort": lambda m, y: y.sort(1).values,
    "gather": lambda m, y: torch.gather(y, 1, y.argsort(-1)), "getitem": lambda m, y: y[:, [i ^ 1 for i in range(16)]],
    "getitem ": lambda m, y: y[:, torch.arange(15, -1, -1)],
}
_NONZERO_OPS = {
    "sigmoid": lambda m, y: torch.sigmoid(y), "Hardsigmoid": lambda m, y: m.gate(y), "add": lambda m, y: y + 0.5,
    "sub": lambda m, y: 1 - y, "clamp": lambda m, y: y.clamp(min=0.1), "softplus": lambda m, y: F.softplus(y),
    "pad": lambda m, y: F.pad(y, (1, 1, 1, 1), value=1.0)[:, :, 1:-1, 1:-1],
}
_ZERO_KEEPING_OPS = {
    "relu": lambda m, y: F.relu(y), "silu by hand": lambda m, y: y * torch.sigmoid(y),
    "hardswish by hand": lambda m, y: y * F.relu6(y + 3.0) / 6.0, "gelu": lambda m, y: F.gelu(y),
    "clamp": lambda m, y: y.clamp(0, 6), "squeeze-excitation": lambda m, y: y * torch.sigmoid(y.mean((2, 3), True)),
    "spatial flip": lambda m, y: y.flip(-1), "zero pad": lambda m, y: F.pad(y, (1, 1, 1, 1))[:, :, 1:-1, 1:-1],
    "square": lambda m, y: y**2, "divide": lambda m, y: F.relu6(y) / 6.0,
    "stochastic depth": lambda m, y: y + stochastic_depth(F.relu(y), 0.2, "row", m.training),
    "swish as a division": lambda m, y: y / (1 + torch.exp(-y)), "clamp_min": lambda m, y: y.clamp_min(0),
    "maximum": lambda m, y: torch.maximum(y, torch.zeros_like(y)), "where": lambda m, y: torch.where(y > 0, y, 0.1 * y),
    "add with alpha": lambda m, y: torch.add(y, F.relu(y), alpha=0.5),
    "spatial attention (CBAM)": lambda m, y: y * torch.sigmoid(m.sa(y)),  # a 1-channel map: once refused
    "sigmoid into a depthwise conv": lambda m, y: m.dw(torch.sigmoid(y)), "size arithmetic": lambda m, y: F.pad(
        y, (0, 16 - y.size(3), 0, 16 - y.size(2))),
    "channel count as a view size": lambda m, y: y.view(y.shape[0], y.size(1), -1).reshape(y.shape),
    "channel count sizing a new tensor": lambda m, y: y * y.new_ones(1, y.shape[1], 1, 1),
}
_COUNTING_OPS = {  # values that depend on the number of channels: pruned, the value changes
    "mul": lambda m, y: y * (1.0 / y.shape[1]), "truediv": lambda m, y: y / y.size(1) ** 0.5,
    "mul ": lambda m, y: y * y.shape[-3], "truediv ": lambda m, y: y / y.numel(),
    "mul  ": lambda m, y: y * y.size()[1],
}


@pytest.mark.parametrize("why", list(_ORDERING_OPS) + list(_NONZERO_OPS))
def test_ops_that_reorder_channels_or_make_pruned_ones_non_zero_fix_them(why: str) -> None:
    # before, these groups were prunable and export dropped channels the masked network still read
    net = _Between({**_ORDERING_OPS, **_NONZERO_OPS}[why], gate=nn.Hardsigmoid())
    spec = build_network_spec(net, 16)
    fixed = {g.convs[0]: g.fixed_by for g in spec.groups.values() if not g.prunable}
    assert fixed["a.0"].startswith(why.strip()), fixed
    assert why in _ORDERING_OPS or "makes its pruned channels non-zero before conv b" in fixed["a.0"]
    for seed in range(3):
        assert check_export(net, spec, seed=seed).max_logit_delta < 1e-9
    keep = torch.arange(16) % 2 == 0  # and export refuses to drop its channels, through the Python API too
    with pytest.raises(LatlabError, match="a.0 must keep all its channels|moves, slices or mixes pruned channels"):
        export_pruned(net.eval(), trace_network(net, 16), {"a.0": keep})


@pytest.mark.parametrize("op", list(_COUNTING_OPS))
def test_a_value_computed_from_the_channel_count_fixes_the_channels(op: str) -> None:
    # before, export changed the count and the network's output with it: refused at export, with no reason
    net = _Between(_COUNTING_OPS[op])
    spec = build_network_spec(net, 16)
    fixed = {g.convs[0]: g.fixed_by for g in spec.groups.values() if not g.prunable}
    assert fixed == {"a.0": f"{op.strip()} uses the channel count as a number"}
    assert check_export(net, spec).max_logit_delta < 1e-9


@pytest.mark.parametrize("op", list(_ZERO_KEEPING_OPS))
def test_ops_that_keep_pruned_channels_zero_let_them_prune(op: str) -> None:
    net = _Between(_ZERO_KEEPING_OPS[op], dw=nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                   sa=nn.Conv2d(16, 1, 7, padding=3))
    spec = build_network_spec(net, 16)
    assert all(g.prunable or g.width == 1 for g in spec.groups.values()), {
        g.convs[0]: g.fixed_by for g in spec.groups.values()}
    for seed in range(3):
        assert check_export(net, spec, seed=seed).max_logit_delta < 1e-9


class _TwoNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc((F.relu(self.bn1(y)) + F.relu(self.bn2(y))).mean((2, 3)))


class _HardCodedView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _cbr(3, 16, k=3, padding=1, stride=2), _cbr(16, 16, k=3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.a(x)).view(-1, 16 * 4 * 4))


def test_a_conv_feeding_two_norms_and_a_hard_coded_view_fix_their_channels() -> None:
    spec = build_network_spec(_TwoNorms(), 16)
    assert [g.fixed_by for g in spec.groups.values()] == ["conv conv feeds 2 BatchNorms (bn1, bn2)"]
    spec = build_network_spec(_HardCodedView(), 16)
    assert {g.convs[0]: g.fixed_by for g in spec.groups.values()} == {"a.0": "", "b.0": "view"}
    assert check_export(_HardCodedView(), spec).max_logit_delta < 1e-9


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc1, self.fc2 = _cbr(3, 16, k=3), nn.Linear(16, 5), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        f = self.a(x).mean((2, 3))
        return {"heads": (self.fc1(f), self.fc2(f))}


def test_networks_with_several_outputs_export_and_verify() -> None:
    spec = build_network_spec(_TwoHeads(), 16)
    assert all(g.prunable for g in spec.groups.values())
    check = check_export(_TwoHeads(), spec)
    assert check.max_logit_delta < 1e-9 and check.kept_items < spec.n_items  # the check always prunes something


class _Mixed(nn.Module):
    """A Linear squeeze-excitation with expand_as, a (C, 1, 1) layer scale and a transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _cbr(3, 16, k=3), _cbr(16, 16, k=3, padding=1), _cbr(16, 16, k=3, padding=1)
        self.fc, self.gamma = nn.Linear(16, 16), nn.Parameter(torch.rand(16, 1, 1))
        self.up, self.head = nn.ConvTranspose2d(16, 8, 2, stride=2), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y * torch.sigmoid(self.fc(y.mean((2, 3)))).view(-1, 16, 1, 1).expand_as(y)
        z = self.b(y)
        z = z + self.gamma * self.c(z)
        return self.head(self.up(z).mean((2, 3)))


def test_squeeze_excitation_by_linear_layer_scale_and_transposed_conv_keep_their_channels() -> None:
    spec = build_network_spec(_Mixed(), 16)
    fixed = {g.convs[0]: g.fixed_by for g in spec.groups.values() if not g.prunable}
    assert fixed["a.0"] == "mul with expand_as (not one conv group's channels)"
    assert fixed["c.0"] == "mul with parameter gamma" and fixed["b.0"].startswith("add with mul")
    assert set(fixed) == {"a.0", "b.0", "c.0"}  # b's channels also reach the ConvTranspose2d up
    assert check_export(_Mixed(), spec).max_logit_delta < 1e-9
