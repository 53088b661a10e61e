"""Fine-tuning the slim network after the last pruning step: same optimisation, exact resume, dense round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import (
    densenet121,
    googlenet,
    mobilenet_v2,
    regnet_x_400mf,
    regnet_y_400mf,
    resnet18,
    shufflenet_v2_x0_5,
)

from db.errors import LatlabError
from profiler.plan import trace_network
from pruning.check import random_masks as spec_masks
from pruning.export import export_pruned, masked_reference
from pruning.graph import build_network_spec
from pruning.masks import raw_parameter
from pruning.slices import Slices, put, take
from tests.training.helpers import make_pruner, tiny_config, train_step
from training import train
from training.checkpoint import load_checkpoint
from training.optim import build_optimizer
from training.pruner import baked_copy
from training.slim import carry_momentum, dense_state_dict, slim_copy

F64 = torch.float64


@pytest.mark.parametrize(("build", "removed"), [(resnet18, ["layer1.1", "layer3.0"]), (mobilenet_v2, []),
                                               (regnet_y_400mf, ["trunk_output.block3.block3-1"]),
                                               (shufflenet_v2_x0_5, []), (densenet121, [])])
def test_slices_take_and_put_round_trip(build, removed: list[str]) -> None:
    torch.manual_seed(0)
    model = build(num_classes=10).eval()
    trace = trace_network(model, 32)
    masks = spec_masks(build_network_spec(model, 32), seed=1)
    slices: Slices = {}
    slim = export_pruned(model, trace, masks, removed, slices=slices)
    dense, small = model.state_dict(), slim.state_dict()
    assert slices and set(slices) <= set(small)
    for k, t in small.items():
        assert torch.equal(take(dense[k], slices.get(k)), t), k
        assert torch.equal(take(put(t, slices.get(k), dense[k].shape), slices.get(k)), t), k
    # the dense-shaped state (zeros where pruned) re-exports to the same network
    back = build(num_classes=10).eval()
    back.load_state_dict(dense_state_dict(slim, slices, dense))
    again = export_pruned(back, trace_network(back, 32), masks, removed)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), slim(x))
    assert torch.allclose(masked_reference(back, masks, removed)(x), slim(x), atol=1e-5)


def test_slim_training_equals_masked_training_in_float64(lut_db: str) -> None:
    """After the last pruning step, SGD with momentum on the export (momentum carried over) follows the masked
    network's trajectory: every kept weight and BN statistic agrees to 1e-9 after several more steps."""
    model, pruner = make_pruner(lut_db, "mdp", 0.45, dtype=F64)
    opt = build_optimizer(model, lr=0.05, momentum=0.875, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=gen, dtype=F64), torch.randint(0, 10, (4,), generator=gen))
               for _ in range(6)]
    train_step(model, opt, pruner, 0, batches[0])
    assert train_step(model, opt, pruner, 1, batches[1]) is not None and pruner.schedule.done(1)
    masks, removed = pruner.masks.conv_masks(), pruner.removed_blocks()
    assert removed and any(not bool(m.all()) for m in masks.values())  # channels and blocks both pruned
    slim, slices = slim_copy(model, masks, removed, (32, 32))
    slim_opt = build_optimizer(slim, lr=0.05, momentum=0.875, weight_decay=1e-3)
    carry_momentum(model, opt, slim, slim_opt, slices)
    assert all("momentum_buffer" in slim_opt.state[p] for p in slim.parameters())
    for g, batch in enumerate(batches[2:], start=2):
        train_step(model, opt, pruner, g, batch)
        train_step(slim, slim_opt, None, g, batch)
    modules = dict(model.named_modules())
    for name, t in slim.state_dict().items():
        owner, _, attr = name.rpartition(".")
        src = raw_parameter(modules[owner], attr) if attr in ("weight", "bias") else getattr(modules[owner], attr)
        assert torch.allclose(take(src.detach(), slices.get(name)), t, rtol=0, atol=1e-9), name
    x = torch.randn(3, 3, 32, 32, dtype=F64)
    assert torch.allclose(baked_copy(model).eval()(x), slim.eval()(x), rtol=0, atol=1e-9)


def test_slim_run_resumes_exactly_and_matches_the_masked_run(digits: Path, lut_db: str, tmp_path: Path) -> None:
    """HALP prunes at global steps 1 and 3 (epoch 2 of 3): the run goes on slim from step 4; a run cut after
    epoch 2 resumes from the slim checkpoint to the same weights; the masked run (prune.slim=false) has the
    same losses up to float rounding, and both final_state.pt files re-export to the same network."""
    three = {"optim.epochs": 3, "run.export": True}
    full = train(tiny_config(digits, tmp_path / "full", lut_db, **three), progress=False)
    cut = tiny_config(digits, tmp_path / "cut", lut_db, **three)
    part = train(tiny_config(digits, tmp_path / "cut", lut_db, **three, **{"run.stop_after_epochs": 2}),
                 progress=False)
    assert part.global_step == 6 and not part.finished
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")
    numel = sum(t.numel() for t in resnet18(num_classes=10).state_dict().values())
    assert saved["slim"] and sum(t.numel() for t in saved["model"].values()) < numel  # slim weights stored
    resumed = train(cut, progress=False)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint_last.pt") for run in ("full", "cut"))
    assert a["slim"] and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]

    masked = train(tiny_config(digits, tmp_path / "masked", lut_db, **three, **{"prune.slim": False}), progress=False)
    assert not load_checkpoint(tmp_path / "masked" / "checkpoint_last.pt")["slim"]
    assert all(torch.equal(full.masks[g], masked.masks[g]) for g in full.masks)
    for r_slim, r_masked in zip(full.history, masked.history, strict=True):
        assert r_slim["train_loss"] == pytest.approx(r_masked["train_loss"], rel=5e-3)
    # a masked run cut after its last pruning step and resumed with prune.slim on goes slim at once
    late = {**three, "prune.slim": False, "run.stop_after_epochs": 2}
    train(tiny_config(digits, tmp_path / "late", lut_db, **late), progress=False)
    switched = train(tiny_config(digits, tmp_path / "late", lut_db, **three), progress=False)
    assert load_checkpoint(tmp_path / "late" / "checkpoint_last.pt")["slim"] and switched.finished
    assert switched.history[-1]["train_loss"] == pytest.approx(masked.history[-1]["train_loss"], rel=5e-3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outs = [torch.export.load(str(run.paths["slim"])).module()(x) for run in (full, masked)]
    assert torch.allclose(outs[0], outs[1], atol=0.02 * float(outs[1].abs().max()))
    dense = torch.load(full.paths["final_state"], weights_only=True)
    assert dense["conv1.weight"].shape == (64, 3, 7, 7)  # dense-shaped, like a plain (masked) run's
    net = resnet18(num_classes=10).eval()
    net.load_state_dict(dense)
    saved_masks = torch.load(full.paths["masks"], weights_only=True)
    again = export_pruned(net, trace_network(net, 32), saved_masks["masks"], saved_masks["removed_blocks"])
    with torch.no_grad():
        assert torch.allclose(again(x), outs[0], atol=1e-5)  # final_state.pt + masks.pt = pruned.pt2


def test_a_network_that_cannot_be_exported_trains_on_masked(digits: Path, lut_db: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """If export refuses the network at the last pruning step, the run warns and goes on with the masks."""
    import training.slim

    def refuse(*args: object, **kwargs: object) -> None:
        raise LatlabError("node x (channel_shuffle) rearranges pruned channels")

    monkeypatch.setattr(training.slim, "slim_copy", refuse)
    res = train(tiny_config(digits, tmp_path / "run", lut_db), progress=False)
    assert res.finished and len(res.prune_steps) == 2
    assert not load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["slim"]
    assert "cannot train the slim network (node x (channel_shuffle)" in caplog.text


def _train_one_step_prune(digits: Path, tmp_path: Path, model: str, method: str, ratio: float,
                          build) -> tuple[dict, torch.nn.Module]:  # type: ignore[no-untyped-def]
    """Sweep ``model``'s lattice with the fake backend, train with one pruning step and a slim export; check that
    the run went slim and that final_state.pt + masks.pt re-export to pruned.pt2. Returns (masks.pt, that export)."""
    from db import open_database
    from profiler.backends.fake import FakeBackend
    from profiler.plan import build_plan
    from profiler.protocol import TimingProtocol
    from profiler.runner import run_sweep

    database = open_database(tmp_path / "lut.db")
    run_sweep(database, build_plan(model, "lattice", input_size=32, batch=8),
              FakeBackend(TimingProtocol(repeats=3), noise=0.0), progress=False)
    database.dispose()
    cfg = tiny_config(digits, tmp_path / "run", str(tmp_path / "lut.db"), method=method, **{
        "model.name": model, "prune.group_sizes": "auto", "prune.kind": "lut", "prune.steps": 1,
        "prune.ratio": ratio, "run.export": True})
    res = train(cfg, progress=False)
    assert res.finished and load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["slim"]
    saved = torch.load(res.paths["masks"], weights_only=True)
    net = build(num_classes=10).eval()
    net.load_state_dict(torch.load(res.paths["final_state"], weights_only=True))
    again = export_pruned(net, trace_network(net, 32), saved["masks"], saved["removed_blocks"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # final_state.pt + masks.pt = pruned.pt2
        out = torch.export.load(str(res.paths["slim"])).module()(x)
        assert torch.allclose(again(x), out, atol=1e-5 * max(1.0, float(out.abs().max())))
    return saved, again


def test_mdp_while_training_regnet(digits: Path, tmp_path: Path) -> None:
    """RegNetX (grouped convs, blocks ending in relu(proj(x) + f(x))): MDP removes blocks and prunes the channels
    of grouped convs, the run trains the slim network (the removed blocks' ReLU no longer in place on the block
    input, which autograd would refuse), and the exported network keeps grouped convs."""
    saved, again = _train_one_step_prune(digits, tmp_path, "regnet_x_400mf", "mdp", 0.5, regnet_x_400mf)
    assert saved["removed_blocks"]
    net = regnet_x_400mf(num_classes=10)
    gone = set(saved["removed_blocks"])  # grouped convs are named <block>.f.b.0
    pairs = [(m, again.get_submodule(name)) for name, m in net.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and name.rsplit(".", 3)[0] not in gone]
    assert pairs and all(slim.groups == dense.groups for dense, slim in pairs)
    assert any(slim.in_channels < dense.in_channels for dense, slim in pairs)


def test_mdlm_while_training_shufflenet(digits: Path, tmp_path: Path) -> None:
    """ShuffleNetV2 (concats, channel shuffles, chunks): OCP+MDLM prunes inside each unit's second branch, the run
    trains the slim network and exports it."""
    saved, again = _train_one_step_prune(digits, tmp_path, "shufflenet_v2_x0_5", "mdlm", 0.1, shufflenet_v2_x0_5)
    assert any(not bool(m.all()) for m in saved["masks"].values())
    dense = shufflenet_v2_x0_5(num_classes=10)

    def widths(net: torch.nn.Module, suffix: str) -> list[int]:
        return [m.out_channels for n, m in net.named_modules() if n.endswith(suffix)]

    assert sum(widths(again, "branch2.0")) < sum(widths(dense, "branch2.0"))
    assert widths(again, "branch2.5") == widths(dense, "branch2.5")  # concatenated: fixed


def test_mdp_while_training_googlenet(digits: Path, tmp_path: Path) -> None:
    """GoogLeNet trains with its auxiliary heads (their losses weighted 0.3), prunes the reductions inside its
    inception branches, goes slim and exports."""
    saved, again = _train_one_step_prune(digits, tmp_path, "googlenet", "mdp", 0.1,
                                         lambda num_classes: googlenet(num_classes=num_classes, init_weights=False))
    cut = [name for name, m in saved["masks"].items() if not bool(m.all())]
    assert cut and all(".branch2.0." in n or ".branch3.0." in n or n.startswith("conv") for n in cut), cut


def test_mdp_while_training_a_timm_model(digits: Path, tmp_path: Path) -> None:
    """timm's MobileNetV3 (BatchNormAct2d, hard-swish, squeeze-excitation): MDP while training goes slim, and the
    slim layers keep their timm classes."""
    timm = pytest.importorskip("timm")
    saved, again = _train_one_step_prune(
        digits, tmp_path, "timm:mobilenetv3_small_050", "mdp", 0.5,
        lambda num_classes: timm.create_model("mobilenetv3_small_050", num_classes=num_classes))
    assert any(not bool(m.all()) for m in saved["masks"].values())
    bns = [m for m in again.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(type(m).__name__ == "BatchNormAct2d" for m in bns)
