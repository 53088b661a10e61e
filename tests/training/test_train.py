"""End-to-end training runs on the digits: resume exactness, presets, DDP on CPU, errors before training."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from db.errors import LatlabError
from profiler.measure import program_labels
from tests.training.helpers import ROOT, tiny_config
from training import train
from training.checkpoint import load_checkpoint

CONFIGS = {p.stem: p for p in (ROOT / "configs").glob("*_resnet50.yaml")}


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6), k


def test_resume_equals_uninterrupted(digits: Path, lut_db: str, tmp_path: Path) -> None:
    full = train(tiny_config(digits, tmp_path / "full", lut_db), progress=False)
    assert full.finished and full.global_step == 6 and [r["global_step"] for r in full.prune_steps] == [1, 3]
    part = train(tiny_config(digits, tmp_path / "cut", lut_db, **{"run.stop_after_epochs": 1}), progress=False)
    assert not part.finished and part.epochs_done == 1 and part.global_step == 3
    resumed = train(tiny_config(digits, tmp_path / "cut", lut_db), progress=False)
    assert resumed.finished and resumed.global_step == full.global_step
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")
    _same_state(a["model"], b["model"])
    _same_state(a["pruner"]["masks"], b["pruner"]["masks"])
    assert a["pruner"]["schedule"] == b["pruner"]["schedule"]
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 6)
    assert [r["lr"] for r in a["history"]] == [r["lr"] for r in b["history"]]
    assert [h["target_ms"] for h in a["pruner"]["history"]] == [h["target_ms"] for h in b["pruner"]["history"]]
    assert full.masks.keys() == resumed.masks.keys()
    assert all(torch.equal(full.masks[g], resumed.masks[g]) for g in full.masks)
    assert sum(int((~m).sum()) for m in full.masks.values()) > 0  # something was pruned
    # the best epoch counts from the last pruning step (global step 3, in epoch 2) on; resumed or not
    assert a["best_epoch"] == b["best_epoch"] == 2 and a["best_top1"] == a["history"][1]["top1"]
    _best_files_work(tmp_path / "full", tmp_path / "cut")
    # a different run in the same folder is refused before training
    with pytest.raises(LatlabError, match="different run.*prune.ratio"):
        train(tiny_config(digits, tmp_path / "cut", lut_db, **{"prune.ratio": 0.5}), progress=False)
    # and so is a resume on another number of processes: the global batch and the learning rate would change
    ckpt = tmp_path / "cut" / "checkpoint_last.pt"
    torch.save({**torch.load(ckpt, weights_only=True), "world_size": 2}, ckpt)
    with pytest.raises(LatlabError, match="written by 2 processes, this run has 1"):
        train(tiny_config(digits, tmp_path / "cut", lut_db), progress=False)
    # another precision, or a dataset of another size (the schedules are in iterations) are refused too
    with pytest.raises(LatlabError, match="different run.*run.amp: checkpoint False vs config True"):
        train(tiny_config(digits, tmp_path / "cut", lut_db, **{"run.amp": True}), progress=False)
    torch.save({**torch.load(ckpt, weights_only=True), "world_size": 1, "iters_per_epoch": 5}, ckpt)
    with pytest.raises(LatlabError, match="written with 5 iterations per epoch, this run has 3 .*training images"):
        train(tiny_config(digits, tmp_path / "cut", lut_db), progress=False)
    # the AMP dtype of a run without AMP is never used, so it may differ (the check after the config's is reached)
    with pytest.raises(LatlabError, match="iterations per epoch"):
        train(tiny_config(digits, tmp_path / "cut", lut_db, **{"run.amp_dtype": "bf16"}), progress=False)


def _best_files_work(run: Path, same_run: Path) -> None:
    """best_state.pt loads into the dense torchvision model, zero where best_masks.pt prunes; a resumed run wrote
    the same files."""
    from torchvision.models import resnet18

    from pruning.mask_files import read_mask_file

    state = torch.load(run / "best_state.pt", weights_only=True)
    resnet18(num_classes=10).load_state_dict(state)
    masks = read_mask_file(run / "best_masks.pt").masks
    assert any((keep == 0).any() for keep in masks.values())
    for convs, keep in masks.items():
        assert all(not state[f"{conv}.weight"][torch.from_numpy(keep == 0)].any() for conv in convs)
    _same_state(state, torch.load(same_run / "best_state.pt", weights_only=True))


def test_a_failed_evaluation_resumes_without_training_again(digits: Path, lut_db: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from training import trainer

    evaluate = trainer._Run._evaluate
    calls = []

    def broken_once(run: trainer._Run) -> dict:
        calls.append(run.global_step)
        if len(calls) == 2:
            raise OSError("val image unreadable")
        return evaluate(run)

    monkeypatch.setattr(trainer._Run, "_evaluate", broken_once)
    with pytest.raises(OSError, match="unreadable"):
        train(tiny_config(digits, tmp_path / "cut", lut_db), progress=False)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")
    assert (state["epoch"], state["global_step"], len(state["history"])) == (1, 6, 1)  # epoch 2 trained, kept
    assert state["pending"]["global_step"] == 6
    resumed = train(tiny_config(digits, tmp_path / "cut", lut_db), progress=False)
    assert calls == [3, 6, 6]  # the resume evaluated epoch 2 and trained nothing
    monkeypatch.setattr(trainer._Run, "_evaluate", evaluate)
    full = train(tiny_config(digits, tmp_path / "full", lut_db), progress=False)
    assert resumed.finished and resumed.global_step == full.global_step == 6
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")
    _same_state(a["model"], b["model"])
    assert a["pending"] is b["pending"] is None
    assert [r["top1"] for r in a["history"]] == [r["top1"] for r in b["history"]]
    timed = ("images_per_s", "seconds")
    rows = [[{k: v for k, v in r.items() if k not in timed}
             for r in csv.DictReader((d / "metrics.csv").read_text().splitlines())]
            for d in (tmp_path / "cut", tmp_path / "full")]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_mdp_demo_config_exports(digits: Path, lut_db: str, tmp_path: Path) -> None:
    cfg = tiny_config(digits, tmp_path / "mdp", lut_db, method="mdp", config=ROOT / "configs/demo_resnet18_digits.yaml",
                      **{"run.export": True, "prune.ratio": 0.4})
    res = train(cfg, progress=False)
    assert res.finished and {"slim", "masks", "final_state", "result", "metrics"} <= res.paths.keys()
    assert res.predicted_pruned_ms < res.predicted_dense_ms
    program = torch.export.load(str(res.paths["slim"]))
    assert program.module()(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert program_labels(res.paths["slim"]) == {"model": "resnet18", "variant": "mdp60"}  # kept share 1 − r
    saved = torch.load(res.paths["masks"], weights_only=True)
    assert saved["removed_blocks"] == res.removed_blocks
    rows = (tmp_path / "mdp" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,global_step,lr,train_loss") and len(rows) == 3
    assert (tmp_path / "mdp" / "config.resolved.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resnet50_presets_run_on_a_small_model(name: str, digits: Path, lut_db: str, tmp_path: Path) -> None:
    method = name.split("_")[0]
    cfg = tiny_config(digits, tmp_path / name, lut_db, method=method, config=CONFIGS[name],
                      **{"prune.min_keep_share": 0.5})
    res = train(cfg, progress=False)
    assert res.finished and len(res.prune_steps) == 2 and res.metrics["predicted_ms"] < res.predicted_dense_ms
    stem = next(g for g in res.masks if g.startswith("conv1"))  # keep: [stem], as in HALP/MDP
    assert bool(res.masks[stem].all()) and not all(bool(m.all()) for m in res.masks.values())
    assert min(float(m.float().mean()) for m in res.masks.values()) >= 0.5


def test_max_kept_blocks_applies_from_its_step(digits: Path, lut_db: str, tmp_path: Path) -> None:
    cfg = tiny_config(digits, tmp_path / "mgp", lut_db, method="mgp", **{"prune.max_kept_blocks": 5,
                                                                         "prune.max_kept_blocks_from": 2})
    res = train(cfg, progress=False)
    assert res.finished and len(res.prune_steps[0]["removed_blocks"]) < 3 <= len(res.removed_blocks)  # 8 blocks
    for bad, message in (({"prune.max_kept_blocks_from": 3}, "after the last of the 2 pruning steps"),
                         ({"prune.max_kept_blocks": 9}, "resnet18 has 8 removable blocks")):
        cfg = tiny_config(digits, tmp_path / "bad", lut_db, method="mgp", **{"prune.max_kept_blocks": 5, **bad})
        with pytest.raises(LatlabError, match=message):
            train(cfg, progress=False)
        assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()
    with pytest.raises(LatlabError, match="prune.max_kept_blocks: halp removes no blocks"):
        tiny_config(digits, tmp_path / "bad", lut_db, method="halp", **{"prune.max_kept_blocks": 5})


def test_weights_that_do_not_match_fail_before_training(digits: Path, tmp_path: Path) -> None:
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pt"
    torch.save(resnet18(num_classes=1000).state_dict(), weights)
    cfg = tiny_config(digits, tmp_path / "w", None, method="none",
                      **{"model.weights": str(weights), "run.tensorboard": True})
    with pytest.raises(LatlabError, match="do not match resnet18"):
        train(cfg, progress=False)
    assert not (tmp_path / "w" / "checkpoint_last.pt").exists() and not (tmp_path / "w" / "tensorboard").exists()


def test_your_own_network_keeps_its_own_class_count(digits: Path, tmp_path: Path) -> None:
    """`model.name: FILE.py:NAME` without model.num_classes builds the network as it is; a classifier narrower
    than the dataset is refused before training."""
    (tmp_path / "nets.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Module):
            def __init__(self, num_classes: int = 10):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.fc = nn.Linear(16, num_classes)

            def forward(self, x):
                return self.fc(self.body(x))

        def narrow():
            return Net(num_classes=3)
    """))
    weights = tmp_path / "net.pt"
    torch.save(_load_net(tmp_path / "nets.py").state_dict(), weights)
    own = {"model.name": f"{tmp_path / 'nets.py'}:Net", "model.num_classes": None, "model.weights": str(weights)}
    result = train(tiny_config(digits, tmp_path / "own", None, method="none", **own), progress=False)
    assert result.epochs_done >= 1
    narrow = {**own, "model.name": f"{tmp_path / 'nets.py'}:narrow", "model.weights": None}
    with pytest.raises(LatlabError, match="the dataset has 10 classes but .*narrow has 3 outputs"):
        train(tiny_config(digits, tmp_path / "narrow", None, method="none", **narrow), progress=False)


def test_a_non_finite_gradient_skips_the_batch(digits: Path, tmp_path: Path) -> None:
    """Spec §9.3: a finite loss whose gradient is NaN (here sqrt'(0) * 0 on the 2nd batch) skips the step, counted,
    instead of writing NaN into the weights (without fp16's GradScaler nothing else would catch it)."""
    (tmp_path / "nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self, num_classes: int = 10):
                super().__init__()
                self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
                self.fc = nn.Linear(8, num_classes)
                self.calls = 0

            def forward(self, x):
                x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
                if self.training:
                    self.calls += 1
                    if self.calls == 2:
                        s = self.conv.weight.sum()
                        x = x + torch.sqrt(s - s)  # adds 0; its gradient is NaN
                return self.fc(x)
    """))
    cfg = tiny_config(digits, tmp_path / "nan", None, method="none",
                      **{"model.name": f"{tmp_path / 'nets.py'}:Net", "optim.epochs": 1})
    result = train(cfg, progress=False)
    assert result.metrics["skipped_batches"] == 1 and result.metrics["train_loss"] > 0
    weights = load_checkpoint(tmp_path / "nan" / "checkpoint_last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def _load_net(path: Path) -> torch.nn.Module:
    from profiler.plan import resolve_model

    return resolve_model(f"{path}:Net")[1]


def test_a_run_folder_in_use_is_refused_before_training(digits: Path, tmp_path: Path) -> None:
    from db.files import folder_lock

    cfg = tiny_config(digits, tmp_path / "busy", None, method="none")
    with folder_lock(tmp_path / "busy", wait=False), pytest.raises(LatlabError, match="busy is in use by another"):
        train(cfg, progress=False)  # (flock: a second open of the lock file conflicts even in one process)
    assert not (tmp_path / "busy" / "config.resolved.yaml").exists()


def test_a_network_with_nothing_to_prune_fails_before_training(digits: Path, lut_db: str, tmp_path: Path) -> None:
    cfg = tiny_config(digits, tmp_path / "c", lut_db, method="mdp", **{"model.name": "convnext_tiny"})
    with pytest.raises(LatlabError, match="convnext_tiny: nothing for mdp to prune"):
        train(cfg, progress=False)
    assert not (tmp_path / "c" / "checkpoint_last.pt").exists()


_DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from tests.training.helpers import tiny_config
    from training import train
    from training.checkpoint import load_checkpoint
    data, out, phase = Path({data!r}), Path({out!r}), sys.argv[1]
    # 3 epochs, pruning at global steps 1 and 3, then the slim network; "cut" stops after epoch 2
    sets = {{"optim.epochs": 3, **{extra}, **({{"run.stop_after_epochs": 2}} if phase == "cut" else {{}})}}
    res = train(tiny_config(data, out, {db!r}, method="mdp", **sets), progress=False)
    slim = load_checkpoint(out / "checkpoint_last.pt")["slim"]
    torch.save({{"masks": res.masks, "removed": res.removed_blocks, "step": res.global_step, "slim": slim}},
               out / f"{{phase}}_rank{{os.environ['RANK']}}.pt")
""")


def _ddp_cut_and_resume(script: Path, out: Path, nproc: int, env: dict | None = None) -> list[dict]:
    """torchrun the script twice (cut after epoch 2, then resumed from its checkpoint); the resumed ranks' results."""
    for phase in ("cut", "resume"):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", str(script), phase], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
    cut = [torch.load(out / f"cut_rank{r}.pt", weights_only=True) for r in range(nproc)]
    assert all(r["step"] == 6 and r["slim"] for r in cut)  # the cut run went slim at step 4 and saved it so
    return [torch.load(out / f"resume_rank{r}.pt", weights_only=True) for r in range(nproc)]


@pytest.mark.slow
def test_two_process_cpu_ddp_gives_identical_masks_and_resumes_slim(digits: Path, lut_db: str, tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    out = tmp_path / "ddp"
    script.write_text(_DDP_SCRIPT.format(root=str(ROOT), data=str(digits), out=str(out), db=lut_db, extra="{}"))
    r0, r1 = _ddp_cut_and_resume(script, out, 2, dict(os.environ, OMP_NUM_THREADS="1"))
    assert r0["step"] == r1["step"] == 9 and r0["removed"] == r1["removed"] and r0["slim"] and r1["slim"]
    assert all(torch.equal(r0["masks"][g], r1["masks"][g]) for g in r0["masks"])
    assert sum(int((~m).sum()) for m in r0["masks"].values()) > 0


@pytest.mark.gpu
def test_cuda_ddp_nccl_with_fp16_grad_scaler(digits: Path, lut_db: str, tmp_path: Path) -> None:
    """torchrun on every GPU here (NCCL; one process on a one-GPU machine), fp16 autocast with GradScaler,
    pruning at two steps, then the slim network, cut and resumed: same masks on every rank, and the scaler's
    state is checkpointed."""
    nproc = torch.cuda.device_count()
    script = tmp_path / "ddp_cuda.py"
    out = tmp_path / "ddp"
    script.write_text(_DDP_SCRIPT.format(root=str(ROOT), data=str(digits), out=str(out), db=lut_db,
                                         extra=repr({"run.device": "cuda", "run.amp": True})))
    ranks = _ddp_cut_and_resume(script, out, nproc)
    assert all(r["step"] == 9 and r["slim"] and r["removed"] == ranks[0]["removed"] for r in ranks)
    assert all(torch.equal(r["masks"][g], ranks[0]["masks"][g]) for r in ranks for g in ranks[0]["masks"])
    assert sum(int((~m).sum()) for m in ranks[0]["masks"].values()) > 0
    scaler = load_checkpoint(out / "checkpoint_last.pt")["scaler"]
    assert scaler and float(scaler["scale"]) > 0  # GradScaler was enabled (fp16) and saved


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(digits: Path, lut_db: str, tmp_path: Path) -> None:
    sets = [f"data.path={digits}", "data.input_size=32", "data.batch_size=8", "data.workers=0", "model.name=resnet18",
            "model.num_classes=10", "optim.epochs=3", "optim.warmup_epochs=1", "run.max_iters_per_epoch=3",
            "run.max_val_iters=1", "run.export=false", "run.device=cpu", "prune.method=halp", f"prune.db={lut_db}",
            "prune.group_sizes=32", "prune.steps=2", "prune.every=2", "prune.ratio=0.25"]
    cmd = [sys.executable, "-m", "training", "--no-progress"] + [a for s in sets for a in ("--set", s)]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--set", f"run.out={killed}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint_last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd + ["--set", f"run.out={killed}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = subprocess.run(cmd + ["--set", f"run.out={tmp_path / 'whole'}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = load_checkpoint(killed / "checkpoint_last.pt"), load_checkpoint(tmp_path / "whole" / "checkpoint_last.pt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (3, 9)
    _same_state(a["model"], b["model"])
    _same_state(a["pruner"]["masks"], b["pruner"]["masks"])
