"""Output folders: written all or nothing, and never by two runs at once."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from db.errors import LatlabError

LOCK_FILE = ".latlab.lock"
MARKER_FILE = ".latlab-command"
_STAGE_PREFIX = ".staged-"
_TRAIN_FILES = ("checkpoint_last.pt", "config.resolved.yaml")  # a `latlab train` run made before the marker


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
        try:
            yield stage
        except LatlabError as exc:  # name the file by where it was going, not by the private folder
            if str(stage) not in str(exc):
                raise
            raise LatlabError(str(exc).replace(str(stage), str(out))) from None
        with folder_lock(out, wait=True):
            for path in sorted(stage.iterdir()):
                os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def claim_output_folder(folder: Path, command: str, *, writes: Collection[str] | None = (),
                        create: bool = True) -> None:
    """Make ``folder`` the output folder of ``latlab COMMAND``, or raise one line naming it: a path that is not a
    folder, a folder that cannot be created or written, one that holds another command's results (its
    :data:`MARKER_FILE`, else a training checkpoint or a ``command`` in config.json/result.json) or, without an
    owner, files named in ``writes`` (``None``: any file), and one locked by a running latlab command. ``create``:
    create the folder and record ``command`` in it; without, only check (a new folder is left uncreated)."""
    if folder.exists() and not folder.is_dir():
        raise LatlabError(f"{folder} exists and is not a folder; choose another output folder")
    if not folder.exists():
        if not create:
            _check_creatable(folder)
            return
        _create(folder)
    owner = _owner(folder)
    if owner is not None and owner != command:
        raise LatlabError(f"{folder} holds the results of `latlab {owner}`; choose another output folder")
    if owner is None:
        _check_unowned(folder, command, writes)
    try:
        with folder_lock(folder, wait=False):
            if create and _marked(folder) != command:
                write_atomically(folder / MARKER_FILE, f"{command}\n".encode())
    except OSError as exc:
        raise LatlabError(f"cannot write to output folder {folder}: {exc.strerror}") from None


def _create(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LatlabError(f"cannot create output folder {folder}: {_reason(folder, exc)}") from None


def _check_creatable(folder: Path) -> None:
    """Raise as :func:`_create` would, leaving nothing behind: make and remove a folder in its nearest parent."""
    parent = next(p for p in folder.parents if p.exists() or p == p.parent)
    try:
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        os.rmdir(tempfile.mkdtemp(prefix=".latlab-probe-", dir=parent))
    except OSError as exc:
        raise LatlabError(f"cannot create output folder {folder}: {_reason(folder, exc)}") from None


def _reason(folder: Path, exc: OSError) -> str:
    """``exc``'s reason, naming the file that stands where a parent folder should be."""
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    return f"{blocker} is a file" if blocker is not None else str(exc.strerror)


def _marked(folder: Path) -> str | None:
    try:
        return (folder / MARKER_FILE).read_text().strip() or None
    except OSError:
        return None


def _owner(folder: Path) -> str | None:
    """The command whose results ``folder`` holds: its marker, else what an earlier latlab left there."""
    marked = _marked(folder)
    if marked is not None:
        return marked
    if any((folder / name).exists() for name in _TRAIN_FILES):
        return "train"
    for file in ("config.json", "result.json"):  # "command": "latlab prune --model …"
        try:
            words = str(json.loads((folder / file).read_text()).get("command") or "").split()
        except (OSError, ValueError, AttributeError):
            continue
        word = next((w for w in words[1:] if not w.startswith("-")), "") if words[:1] == ["latlab"] else ""
        if word.isidentifier():
            return word
    return None


def _check_unowned(folder: Path, command: str, writes: Collection[str] | None) -> None:
    """A folder no latlab command owns: refuse it when ``command`` would replace files in it (``writes`` is None:
    when it holds any file at all)."""
    names = sorted(p.name for p in folder.iterdir() if not _bookkeeping(p.name))
    clash = names if writes is None else [n for n in names if n in writes]
    if clash:
        shown = ", ".join(clash[:5]) + (", …" if len(clash) > 5 else "")
        raise LatlabError(f"{folder} holds files that `latlab {command}` did not write ({shown}); move them or "
                          "choose another output folder")


def _bookkeeping(name: str) -> bool:
    return name in (LOCK_FILE, MARKER_FILE) or name.startswith((_STAGE_PREFIX, f".{MARKER_FILE}.", ".latlab-probe-"))


def write_atomically(path: Path, data: bytes | memoryview | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, synced, then ``os.replace``: a full
    disk or a kill leaves the previous file whole, never a cut-off one.

    ``data`` is bytes or a writer called with an in-memory buffer (e.g. ``partial(torch.save, obj)``): serialising
    in memory first keeps a library's own file writer (torch's aborts the process on a full disk) off the disk.
    A write that fails raises :class:`LatlabError` naming the file; a temporary file left by a killed process is
    removed by the next write.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if callable(data):
        buffer = io.BytesIO()
        data(buffer)
        data = buffer.getbuffer()
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        pid = stale.name.rsplit(".tmp", 1)[-1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # as a plain open() gives, whatever the file was before
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            why = exc.strerror or str(exc)
            raise LatlabError(f"cannot write {path}: {why} (the previous file, if any, is kept)") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
