"""Checkpoint files: atomic writes that keep the previous file when the disk is full."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import training.checkpoint as checkpoint
from db.errors import LatlabError


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_why(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = checkpoint.save_checkpoint({"epoch": 1}, tmp_path / "checkpoint_last.pt")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LatlabError, match=r"cannot write .*checkpoint_last.pt: No space left on device"):
        checkpoint.save_checkpoint({"epoch": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
