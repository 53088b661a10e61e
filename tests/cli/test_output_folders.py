"""Output folders: a command refuses, before any work, a folder of another command, a locked one, one over a user's
files, and one it cannot create, in one line; the folder's files stay as they were (db.files.claim_output_folder)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from db.files import MARKER_FILE, folder_lock

NO_DB = ["--db", "missing.db"]  # never opened: the folder is refused first
PRUNE = ["prune", "--model", "resnet18", "--method", "halp", "--target", "0.85", "--input-size", "32", *NO_DB]
EXPORT = ["export", "--model", "resnet18", "--input-size", "32"]
EVALUATE = ["evaluate", "--models", "lut", *NO_DB]
RUN_FILES = ("checkpoint_last.pt", "pruned.pt2", "masks.pt", "result.json", "metrics.csv")


def _folder(path: Path, names: tuple[str, ...], marker: str | None = None) -> dict[str, str]:
    """``path`` holding ``names`` (each file's name as its content) and, with ``marker``, a command's marker."""
    path.mkdir(parents=True)
    for name in names:
        (path / name).write_text(name)
    if marker is not None:
        (path / MARKER_FILE).write_text(marker + "\n")
    return _contents(path)


def _contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir() if p.is_file()}


def _refused(cli, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    """``argv`` fails with one line holding ``message`` and prints nothing else (no work was done)."""
    code, out, err = cli(argv)
    assert code == 1 and not out and err.count("\n") == 1 and message in err, (out, err)


@pytest.mark.parametrize("marker", [None, "train"])  # a run of an earlier version has no marker, only a checkpoint
@pytest.mark.parametrize("argv", [PRUNE, EXPORT])
def test_prune_and_export_refuse_a_training_run_folder(tmp_path: Path, cli, argv: list[str],
                                                       marker: str | None) -> None:
    run = tmp_path / "run1"
    before = _folder(run, RUN_FILES, marker)
    _refused(cli, [*argv, "--out", str(run)],
             f"{run} holds the results of `latlab train`; choose another output folder")
    assert _contents(run) == before


def test_evaluate_refuses_a_prune_result_folder(tmp_path: Path, cli) -> None:
    marked = tmp_path / "pr1"
    before = _folder(marked, ("report.md", "config.json", "masks.pt", "pruned.pt2", "result.json"), "prune")
    _refused(cli, [*EVALUATE, "--out", str(marked)],
             f"{marked} holds the results of `latlab prune`")
    assert _contents(marked) == before
    older = tmp_path / "pr0"  # made before the marker: its config.json names the command
    older.mkdir()
    (older / "config.json").write_text('{"model": "resnet18", "command": "latlab prune --model resnet18 --out pr0"}')
    _refused(cli, [*EVALUATE, "--out", str(older)],
             f"{older} holds the results of `latlab prune`")


def test_a_user_s_config_json_is_not_replaced(tmp_path: Path, cli) -> None:
    mine = tmp_path / "myproj"
    before = _folder(mine, ("config.json",))
    code, _, err = cli(["demo", "--out", str(mine), "--model", "no_such_model", "--backend", "fake", "-q"])
    assert code == 1 and "unknown torchvision model 'no_such_model'" in err
    _refused(cli, ["demo", "--out", str(mine), "--backend", "fake", "-q"],
             "holds files that `latlab demo` did not write (config.json)")
    _refused(cli, [*EVALUATE, "--out", str(mine)],
             "holds files that `latlab evaluate` did not write (config.json)")
    assert _contents(mine) == before


@pytest.mark.parametrize("argv", [PRUNE, EVALUATE])
def test_an_out_that_cannot_be_created_is_one_line_before_any_work(tmp_path: Path, cli, argv: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(cli, [*argv, "--out", str(afile / "pr")],
             f"cannot create output folder {afile / 'pr'}: {afile} is a file")
    _refused(cli, [*argv, "--out", str(afile)],
             f"{afile} exists and is not a folder")


def test_graph_out_under_a_file_is_one_line(tmp_path: Path, cli) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli(["graph", "--model", "resnet18", "--input-size", "32", "-f", "json", str(afile / "g")])
    assert code == 1 and err.count("\n") == 1 and f"{afile} is a file" in err, err


def test_a_folder_in_use_is_refused_at_once(tmp_path: Path, cli) -> None:
    busy = tmp_path / "busy"
    start = time.monotonic()
    with folder_lock(busy, wait=False):  # (flock: a second open of the lock file conflicts even in one process)
        _refused(cli, [*PRUNE, "--out", str(busy)],
                 f"{busy} is in use by another latlab run")
    assert time.monotonic() - start < 30
