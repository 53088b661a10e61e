"""Checkpoint files: atomic writes that keep the previous file when the disk is full."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import training.checkpoint as checkpoint
from db.errors import LatlabError


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_why(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = checkpoint.save_checkpoint({"epoch": 1}, tmp_path / "checkpoint_last.pt")

    def torn_write(obj: object, f: Path) -> None:  # what torch's writer does on ENOSPC: part of a file, then raise
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.torch, "save", torn_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 0))
    with pytest.raises(LatlabError, match=r"cannot write .*checkpoint_last.pt: no space left on device"):
        checkpoint.save_checkpoint({"epoch": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
