"""Digits ImageFolder and layout errors raised before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from db.errors import LatlabError
from training.data import UnreadableImageError, build_loaders, check_layout, make_digits_imagefolder


def test_digits_imagefolder(digits: Path) -> None:
    train, val = check_layout(digits)
    assert sorted(p.name for p in train.iterdir()) == [str(d) for d in range(10)]
    assert len(list((val / "3").glob("*.png"))) >= 1
    assert make_digits_imagefolder(digits) == digits  # idempotent
    tl, vl, classes = build_loaders(digits, input_size=32, batch_size=8, workers=0, seed=0)
    x, y = next(iter(tl))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64 and len(classes) == 10
    assert sum(len(b[1]) for b in vl) == len(vl.dataset)


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LatlabError, match="does not exist.*ROOT/train/CLASS"):
        check_layout(tmp_path / "nope")
    (tmp_path / "train").mkdir()
    with pytest.raises(LatlabError, match="no 'val' subfolder"):
        check_layout(tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(LatlabError, match="no class subfolders"):
        check_layout(tmp_path)
    for sub in ("train", "val"):
        (tmp_path / sub / "cat").mkdir()
    with pytest.raises(LatlabError, match="no images"):
        check_layout(tmp_path)
    with pytest.raises(LatlabError, match="data.path is not set"):
        check_layout(None)


def test_an_unreadable_image_is_named_in_one_line(digits: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits, data)
    bad = sorted((data / "val" / "3").glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated, as a broken copy leaves it
    _, val, _ = build_loaders(data, input_size=32, batch_size=8, workers=1, seed=0)  # the error crosses a worker
    with pytest.raises(UnreadableImageError) as info:
        for _ in val:
            pass
    assert str(info.value).startswith(f"cannot read image {bad} (") and "\n" not in str(info.value)
