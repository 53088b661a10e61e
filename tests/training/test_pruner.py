"""TrainingPruner and block gates without the training loop: gates, momentum zeroing, solver failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812
from torchvision.models import resnet18

from db.errors import LatlabError
from latency_models.base import LatencyModel
from latency_models.features import as_frame
from pruning.cost import Settings, spec_latency
from pruning.export import masked_reference
from pruning.graph import build_network_spec
from pruning.masks import BlockGates, ChannelMasks
from pruning.schedule import LatencySchedule
from tests.training.helpers import make_pruner, train_step
from training.optim import build_optimizer, param_groups
from training.pruner import TrainingPruner, baked_copy, block_gates


def test_block_gates_match_masked_reference_and_checkpoint() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    spec = build_network_spec(model, 32, group_sizes=32)
    bns = block_gates(spec)
    assert bns["layer1.0"] == "layer1.0.bn2"
    ref = masked_reference(model, {}, ["layer1.0", "layer3.1"])
    masks = ChannelMasks(model, {gid: [(c, spec.conv(c).bn) for c in g.convs] for gid, g in spec.groups.items()})
    gates = BlockGates(model, bns)
    gates.set_removed(["layer3.1", "layer1.0"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), ref(x), atol=1e-5)
    state = model.state_dict()
    assert "layer1.0.bn2.parametrizations.weight.1.gate" in state
    fresh = resnet18(num_classes=10).eval()
    ChannelMasks(fresh, masks.groups)
    g2 = BlockGates(fresh, bns)
    fresh.load_state_dict(state)
    g2.load_state_dict(gates.state_dict())
    assert g2.removed() == ["layer1.0", "layer3.1"] and torch.allclose(fresh(x), ref(x), atol=1e-5)
    assert torch.allclose(baked_copy(model)(x), ref(x), atol=1e-5)
    assert torch.allclose(model(x), ref(x), atol=1e-5)  # the original still works after a baked copy
    assert torch.allclose(baked_copy(model)(x), ref(x), atol=1e-5)
    with pytest.raises(LatlabError, match="unknown blocks"):
        gates.set_removed(["layer9.9"])


def test_prune_step_zeroes_weights_and_momentum(lut_db: str) -> None:
    model, pruner = make_pruner(lut_db, "mdp", 0.3)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
    assert train_step(model, opt, pruner, 0) is None
    rec = train_step(model, opt, pruner, 1)
    assert rec is not None and rec["step"] == 1 and rec["solver_status"] in ("optimal", "feasible")
    assert pruner.predicted_latency() <= rec["target_ms"] * (1 + 1e-6)
    gid = next(g for g, m in pruner.masks.groups.items() if not bool(pruner.masks.mask(g).all()))
    conv = dict(model.named_modules())[pruner.masks.groups[gid][0][0]]
    raw = conv.parametrizations.weight.original
    drop = ~pruner.masks.mask(gid)
    for _ in range(2):  # weight decay + momentum cannot revive a dead row
        train_step(model, opt, pruner, 10)
        assert raw[drop].abs().max() == 0 and opt.state[raw]["momentum_buffer"][drop].abs().max() == 0
    assert pruner.importance.count == 0  # reset after the step; accumulation is over


def test_solver_failure_names_step_and_target(lut_db: str) -> None:
    model, pruner = make_pruner(lut_db, "mdlm", 0.97)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    train_step(model, opt, pruner, 0)
    with pytest.raises(LatlabError, match=r"pruning step 1/1 \(global step 1, target .* ms = 3\.0% .*infeasible"):
        train_step(model, opt, pruner, 1)
    assert all(bool(pruner.masks.mask(g).all()) for g in pruner.masks.groups)  # nothing silently applied


def test_unreachable_later_step_gives_the_reach_as_a_share_of_the_dense_network(lut_db: str) -> None:
    """After a first step, the problem starts from the pruned network; the hint still speaks of the dense one."""
    import dataclasses
    import re


    model, pruner = make_pruner(lut_db, "halp", 0.45)  # targets 74%, then 55%; HALP reaches about 70%
    pruner.schedule = dataclasses.replace(pruner.schedule, steps=2)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    errors = []
    for g in range(8):
        try:
            train_step(model, opt, pruner, g)
        except LatlabError as exc:
            errors.append(str(exc))
            break
    assert errors and "step 2/2" in errors[0], errors
    floor = float(re.search(r"minimum achievable latency ([\d.e+-]+)", errors[0]).group(1))
    reach = float(re.search(r"lowest target this network reaches is ([\d.]+)", errors[0]).group(1))
    assert reach == pytest.approx(floor / pruner.schedule.l0, abs=1e-3)


def test_resume_with_another_latency_model_is_refused(lut_db: str) -> None:
    """A checkpoint's budgets are fractions of the dense latency its run priced: another LUT would misprice them."""
    _, pruner = make_pruner(lut_db, "mdp", 0.3)
    state = pruner.state_dict()
    pruner.load_state_dict(state)  # the same latency model: fine
    state["schedule"]["l0"] *= 2
    with pytest.raises(LatlabError, match="priced the dense network at .* the LUT or the latency-model settings"):
        pruner.load_state_dict(state)


def test_weight_decay_groups_by_module_type() -> None:
    model = resnet18(num_classes=10)
    decay, plain = param_groups(model, 0.1)
    ids = {id(p) for p in plain["params"]}
    assert id(model.layer2[0].downsample[1].weight) in ids  # shortcut BN: no decay, unlike the reference
    assert id(model.fc.bias) not in ids and plain["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


class _EqualWidthsSlow(LatencyModel):
    """cin·cout, twice as slow when cin == cout: a non-monotone model under which a group would gain latency by
    growing back past its live channels."""

    kind = "equal-widths-slow"

    def fit(self, X, y):  # type: ignore[no-untyped-def]
        return self

    def predict(self, X):  # type: ignore[no-untyped-def]
        f = as_frame(X)
        cin, cout = f["cin"].to_numpy(float), f["cout"].to_numpy(float)
        return cin * cout * 1e-4 * np.where(cin == cout, 2.0, 1.0)


def test_pruned_channels_stay_pruned_so_the_recorded_latency_is_the_masks() -> None:
    """Each step's problem caps every group at its live channels: the solver's latency is the latency of the
    masks it leaves, within the target, even where the model would price a wider group cheaper."""
    torch.manual_seed(1)
    net = resnet18(num_classes=10)
    spec = build_network_spec(net, 32, group_sizes=16)
    model, settings = _EqualWidthsSlow(), Settings(1)
    pruner = TrainingPruner(net, spec, method="mdlm", schedule=LatencySchedule(spec_latency(model, spec, settings),
                            0.7, 5, 1), latency_model=model, settings=settings)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    for step in range(2):  # without the cap, step 2 kept 512 of layer4.1.conv1's 496 live channels: 30% over
        net.zero_grad()
        F.cross_entropy(net(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        pruner.after_backward(step)
        rec = pruner.after_step(step, opt)
        assert rec["solver_latency_ms"] == pytest.approx(pruner.predicted_latency())
        assert pruner.predicted_latency() <= rec["target_ms"] * (1 + 1e-9)
