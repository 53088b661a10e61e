from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from db.errors import LatlabError
from profiler.plan import trace_network
from pruning.importance import TaylorImportance, build_groups, conv_bn_pairs, magnitude_importance


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    trace = trace_network(model, 32)
    return model, build_groups(model, trace)


def _step(model: nn.Module) -> None:
    model.zero_grad()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()


def test_conv_bn_pairs(setup) -> None:
    model, groups = setup
    pairs = conv_bn_pairs(model)
    assert pairs["conv1"] == "bn1"
    assert pairs["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert pairs["layer3.1.conv2"] == "layer3.1.bn2"
    assert len(pairs) == 20
    stage2 = next(m for g, m in groups.items() if ("layer2.0.conv2", "layer2.0.bn2") in m)
    assert {c for c, _ in stage2} == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}


def test_taylor_shapes_and_split(setup) -> None:
    model, groups = setup
    imp = TaylorImportance(model, groups)
    for _ in range(3):
        _step(model)
        assert imp.accumulate()
    assert imp.count == 3 and imp.skipped == 0
    scores, layers = imp.scores(), imp.layer_scores()
    assert set(scores) == set(groups)
    for g, members in groups.items():
        width = model.get_submodule(members[0][0]).out_channels
        assert scores[g].shape == (width,) and scores[g].dtype == torch.float32
        assert (scores[g] >= 0).all() and scores[g].sum() > 0
        split = sum(layers[c] for c, _ in members)
        torch.testing.assert_close(split, scores[g], rtol=1e-4, atol=1e-9)
    # coupled group: one score computed with the sum inside the abs (§4.1)
    imp.reset()
    _step(model)
    imp.accumulate()
    g = next(g for g, m in groups.items() if len(m) == 3)
    bns = [model.get_submodule(b) for _, b in groups[g]]
    manual = sum(bn.weight * bn.weight.grad + bn.bias * bn.bias.grad for bn in bns).abs()
    torch.testing.assert_close(imp.scores()[g], manual.detach())
    imp.reset()
    assert imp.count == 0
    with pytest.raises(LatlabError):
        imp.scores()


def test_nan_skipped_and_state_round_trip(setup, tmp_path) -> None:
    model, groups = setup
    imp = TaylorImportance(model, groups)
    _step(model)
    imp.accumulate()
    model.layer1[0].bn1.weight.grad[0] = float("nan")
    assert not imp.accumulate()
    assert imp.count == 1 and imp.skipped == 1
    assert all(torch.isfinite(s).all() for s in imp.scores().values())
    imp.all_reduce()  # no-op without torch.distributed
    torch.save(imp.state_dict(), tmp_path / "imp.pt")
    other = TaylorImportance(model, groups)
    other.load_state_dict(torch.load(tmp_path / "imp.pt", weights_only=True))
    assert other.count == 1 and other.skipped == 1
    for g, s in imp.scores().items():
        torch.testing.assert_close(other.scores()[g], s)


def test_conv_fallback_and_magnitude(setup) -> None:
    model, groups = setup
    no_bn = {"stem": [("conv1", None)]}
    imp = TaylorImportance(model, no_bn)
    by_name = TaylorImportance(model, {g: [c for c, _ in m] for g, m in groups.items()}, conv_bn_pairs(model))
    assert by_name.groups == groups
    _step(model)
    imp.accumulate()
    w = model.conv1.weight
    torch.testing.assert_close(imp.scores()["stem"], (w * w.grad).flatten(1).sum(1).abs())
    mag = magnitude_importance(model, groups)
    g = next(iter(groups))
    torch.testing.assert_close(mag[g], sum(model.get_submodule(b).weight.abs() for _, b in groups[g]))
    assert magnitude_importance(model, no_bn)["stem"].shape == (64,)
    with pytest.raises(LatlabError):
        TaylorImportance(model, {"bad": [("conv1", "layer1.0.bn1"), ("layer2.0.conv1", None)]})


def test_all_reduce_single_rank(setup, tmp_path) -> None:
    import torch.distributed as dist

    model, groups = setup
    imp = TaylorImportance(model, groups)
    _step(model)
    imp.accumulate()
    before = {g: s.clone() for g, s in imp.scores().items()}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        imp.all_reduce()
    finally:
        dist.destroy_process_group()
    assert imp.count == 1
    for g, s in imp.scores().items():
        torch.testing.assert_close(s, before[g])


def test_batched_accumulation_matches_the_per_group_formulas(setup) -> None:
    """BN groups (coupled and single), a conv-only group and a BN without gradients, all in one pass."""
    model, groups = setup
    mixed = dict(groups)
    stem = next(g for g, m in groups.items() if ("conv1", "bn1") in m)
    mixed[stem] = [(c, None) for c, _ in groups[stem]]  # priced by conv terms
    imp = TaylorImportance(model, mixed)
    _step(model)
    frozen = model.layer4[1].bn2
    frozen.weight.grad = None  # e.g. a frozen BN: counts as 0
    assert imp.accumulate() and imp.count == 1
    for g, members in mixed.items():
        if members[0][1] is None:
            terms = [(w * w.grad).flatten(1).sum(1) for w in (model.get_submodule(c).weight for c, _ in members)]
        else:
            terms = [sum(p * p.grad for p in (bn.weight, bn.bias) if p.grad is not None)
                     for bn in (model.get_submodule(b) for _, b in members)]
        score = torch.stack(terms).sum(0).abs().detach()
        torch.testing.assert_close(imp.scores()[g], score)
        a = torch.stack(terms).abs().detach()
        total = torch.where(a.sum(0) == 0, torch.ones_like(score), a.sum(0))
        for (c, _), a_l in zip(members, a, strict=True):
            expected = score if len(members) == 1 else score * a_l / total
            torch.testing.assert_close(imp.layer_scores()[c], expected)
