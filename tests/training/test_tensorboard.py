"""Optional TensorBoard scalars: what a run logs, a resumed run's curves, and a missing package."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from db.errors import LatlabError
from tests.training.helpers import tiny_config
from training import train


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_of_a_run_and_of_a_resumed_one(digits: Path, lut_db: str, tmp_path: Path) -> None:
    on = {"run.tensorboard": True, "run.log_every": 1}
    full = train(tiny_config(digits, tmp_path / "full", lut_db, **on), progress=False)
    logged = _scalars(tmp_path / "full")
    assert [s for s, _ in logged["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in logged["epoch/top1"]] == [3, 6]
    assert [v for _, v in logged["epoch/top1"]] == pytest.approx([r["top1"] for r in full.history])
    assert [v for _, v in logged["epoch/predicted_ms"]] == pytest.approx([r["predicted_ms"] for r in full.history])
    assert [s for s, _ in logged["prune/target_ms"]] == [2, 4]  # after the steps at global steps 1 and 3
    # cut after epoch 1; a run that logged epoch 2 and died before its checkpoint (here: the epoch-1 checkpoint
    # put back after it); resumed from that checkpoint: one curve, every step once
    cut = tmp_path / "cut"
    train(tiny_config(digits, cut, lut_db, **on, **{"run.stop_after_epochs": 1}), progress=False)
    shutil.copy(cut / "checkpoint_last.pt", tmp_path / "epoch1.pt")
    train(tiny_config(digits, cut, lut_db, **on), progress=False)
    shutil.copy(tmp_path / "epoch1.pt", cut / "checkpoint_last.pt")
    train(tiny_config(digits, cut, lut_db, **on), progress=False)
    resumed = _scalars(cut)
    assert [s for s, _ in resumed["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert resumed["epoch/train_loss"] == logged["epoch/train_loss"]  # exact resume: the same curve
    assert len(list((cut / "tensorboard").glob("events.out.tfevents.*"))) == 3


def test_missing_tensorboard_is_a_clear_error_before_training(digits: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(LatlabError, match=r"TensorBoard is not installed: pip install tensorboard"):
        train(tiny_config(digits, tmp_path / "run", None, method="none", **{"run.tensorboard": True}), progress=False)
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
