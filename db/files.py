"""Output folders: written all or nothing, and never by two runs at once."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from db.errors import LatlabError

LOCK_FILE = ".latlab.lock"
_STAGE_PREFIX = ".staged-"


@contextmanager
def folder_lock(folder: Path, *, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created) for the block: ``wait`` for another holder, or raise naming
    the folder. The operating system drops the lock when its process dies, so a killed run never leaves it held."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LatlabError(f"{folder} is in use by another latlab run; wait for it to finish or choose another "
                              "output folder") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A private folder inside ``out`` to write a run's files into. When the block ends without an error, they
    replace their namesakes in ``out`` by renames only, under :func:`folder_lock` (a concurrent run's set goes in
    before or after, never mixed). A run stopped earlier leaves ``out`` as it was; its leftovers are removed by
    the next run."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_STAGE_PREFIX}*"):
        pid = stale.name[len(_STAGE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{os.getpid()}-", dir=out))
    try:
        yield stage
        with folder_lock(out, wait=True):
            for path in sorted(stage.iterdir()):
                os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
