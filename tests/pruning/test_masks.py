from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from db.errors import LatlabError
from profiler.plan import trace_network
from pruning.importance import build_groups
from pruning.masks import ChannelMasks


def _model_and_groups(seed: int = 0) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model = resnet18(num_classes=10)
    return model, build_groups(model, trace_network(model, 32))


def _random_masks(masks: ChannelMasks, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for g, w in masks._width.items():
        keep = torch.rand(w, generator=gen) < 0.6
        keep[0] = True
        masks.set(g, keep)


def test_masked_channel_bn_output_is_zero() -> None:
    model, groups = _model_and_groups()
    masks = ChannelMasks(model, groups)
    _random_masks(masks)
    g = next(g for g, m in groups.items() if ("layer2.0.conv1", "layer2.0.bn1") in m)
    drop = ~masks.mask(g)
    seen = {}
    model.layer2[0].bn1.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
    x = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        model.train(train)
        model(x)
        assert seen["out"][:, drop].abs().max() == 0
        assert seen["out"][:, ~drop].abs().max() > 0
    assert (model.layer2[0].bn1.running_mean[drop] == 0).all()
    assert (model.layer2[0].bn1.running_var[drop] == 0).all()
    # masked rows get no gradient through the parametrization; the original Parameter is kept
    model.train()
    model.zero_grad()
    model(x).sum().backward()
    orig = model.layer2[0].conv1.parametrizations.weight.original
    assert orig.grad[drop].abs().max() == 0
    assert masks.kept()[g] == int((~drop).sum())


def test_coupled_masks_equal() -> None:
    model, groups = _model_and_groups()
    masks = ChannelMasks(model, groups)
    _random_masks(masks)
    g = next(g for g, m in groups.items() if len(m) == 3)
    cm = masks.conv_masks()
    rows = [model.get_submodule(c).weight.flatten(1).abs().sum(1) > 0 for c, _ in groups[g]]
    for (c, b), nz in zip(groups[g], rows, strict=True):
        assert torch.equal(cm[c], masks.mask(g))
        assert torch.equal(nz, masks.mask(g))
        assert torch.equal(model.get_submodule(b).weight != 0, masks.mask(g))
    with pytest.raises(LatlabError):
        masks.set(g, torch.ones(3, dtype=torch.bool))


def test_checkpoint_round_trip(tmp_path) -> None:
    model, groups = _model_and_groups(0)
    masks = ChannelMasks(model, groups)
    _random_masks(masks)
    model.train()
    model(torch.randn(4, 3, 32, 32))
    torch.save({"model": model.state_dict(), "masks": masks.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)

    fresh, groups2 = _model_and_groups(5)
    masks2 = ChannelMasks(fresh, groups2)
    masks2.load_state_dict(ck["masks"])
    fresh.load_state_dict(ck["model"])
    model.eval()
    fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh(x), model(x))
    assert masks2.kept() == masks.kept()

    # baking leaves plain parameters with the masked rows zeroed and the same function
    ref = model(x)
    masks.remove(bake=True)
    assert not hasattr(model.layer1[0].conv1, "parametrizations")
    torch.testing.assert_close(model(x), ref)
