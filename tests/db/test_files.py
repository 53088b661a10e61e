"""Output folders written all or nothing, and locked against a second run (db.files)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from db.errors import LatlabError
from db.files import MARKER_FILE, claim_output_folder, folder_lock, staged_folder

ROOT = Path(__file__).resolve().parents[2]


def test_staged_files_replace_the_old_set_only_when_all_are_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_folder(out) as stage:
        (stage / "a.txt").write_text("old a")
        (stage / "b.txt").write_text("old b")
    with pytest.raises(KeyboardInterrupt), staged_folder(out) as stage:
        (stage / "a.txt").write_text("new a")
        raise KeyboardInterrupt  # stopped before b was written
    assert (out / "a.txt").read_text() == "old a" and (out / "b.txt").read_text() == "old b"
    assert sorted(p.name for p in out.iterdir()) == [".latlab.lock", "a.txt", "b.txt"]  # no leftovers
    with staged_folder(out) as stage:
        (stage / "a.txt").write_text("new a")
    assert (out / "a.txt").read_text() == "new a" and (out / "b.txt").read_text() == "old b"
    with pytest.raises(LatlabError, match=rf"^cannot write {out}/c.txt: "), staged_folder(out) as stage:
        raise LatlabError(f"cannot write {stage / 'c.txt'}: No space left on device")  # named by where it goes


def test_a_killed_run_s_stage_is_removed_by_the_next_one(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".staged-{dead.stdout.strip()}-x"
    stale.mkdir(parents=True)
    (stale / "pruned.pt2").write_text("half")
    with staged_folder(tmp_path) as stage:
        assert stage.exists() and not stale.exists()


def test_a_held_folder_is_refused_or_waited_for(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from db.files import folder_lock\n"
         f"with folder_lock(Path({str(tmp_path)!r}), wait=False):\n    print('held', flush=True); time.sleep(1.5)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(LatlabError, match=f"{tmp_path} is in use by another latlab run"), \
            folder_lock(tmp_path, wait=False):
        pass
    start = time.monotonic()
    with folder_lock(tmp_path, wait=True):  # the writer of a staged set waits its turn (the holder sleeps 1.5 s)
        waited = time.monotonic() - start
    assert waited > 0.5, waited
    holder.wait(10)
    with folder_lock(tmp_path, wait=False):  # released when its process ended
        pass


def test_a_claimed_folder_is_its_command_s_own(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    claim_output_folder(out, "prune", create=False)  # a check only: a new folder is made when written
    assert not (tmp_path / "a").exists()
    claim_output_folder(out, "prune")
    assert (out / MARKER_FILE).read_text() == "prune\n"
    (out / "pruned.pt2").write_text("mine")
    claim_output_folder(out, "prune", writes=("pruned.pt2",))  # a re-run replaces its own files
    with pytest.raises(LatlabError, match=f"^{out} holds the results of `latlab prune`; choose another output"):
        claim_output_folder(out, "export")


def test_a_folder_without_an_owner_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    claim_output_folder(tmp_path / "notes", "export", writes=("result.json",))  # other names are added beside
    claim_output_folder(tmp_path, "export", writes=("result.json",))
    assert (tmp_path / MARKER_FILE).read_text() == "export\n"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    for writes in (None, ("config.json",)):  # None: the command may write any name, so any file is in the way
        with pytest.raises(LatlabError, match=r"holds files that `latlab demo` did not write \(config.json\)"):
            claim_output_folder(mine, "demo", writes=writes)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]


def test_write_atomically_keeps_the_old_file_when_the_write_fails(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from db.files import write_atomically

    path = write_atomically(tmp_path / "lut.csv", b"old\n")
    assert path.read_bytes() == b"old\n" and path.stat().st_mode & 0o777 == 0o666 & ~_umask()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LatlabError, match=r"cannot write .*lut.csv: No space left on device \(the previous file"):
        write_atomically(path, b"new, longer content\n")
    assert path.read_bytes() == b"old\n" and [p.name for p in tmp_path.iterdir()] == ["lut.csv"]


def test_write_atomically_serialises_through_a_writer_and_clears_a_killed_writers_leftover(tmp_path: Path) -> None:
    from functools import partial

    import torch

    from db.files import write_atomically

    dead = tmp_path / ".w.pt.tmp999999999"  # no such process
    dead.write_bytes(b"half")
    path = write_atomically(tmp_path / "w.pt", partial(torch.save, {"w": torch.ones(2)}))
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
