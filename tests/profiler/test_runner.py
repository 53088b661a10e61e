"""The sweep runner: idempotent re-runs, failures as rows, budgets, and SIGKILL + resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import open_database
from db.lut import config_key, load_lut, measured_keys
from db.models import Measurement, Sweep
from profiler.backends.fake import FakeBackend
from profiler.plan import build_plan
from profiler.protocol import TimingProtocol
from profiler.runner import run_sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_plan():  # type: ignore[no-untyped-def]
    return build_plan("resnet18", "lhs:4:16", input_size=64, batch=8)


def _count(database, status: str | None = None) -> int:  # type: ignore[no-untyped-def]
    with database.session() as s:
        q = select(func.count()).select_from(Measurement)
        if status:
            q = q.where(Measurement.status == status)
        return s.scalar(q)


def test_rerun_adds_nothing(db_url: str, small_plan) -> None:  # type: ignore[no-untyped-def]
    database = open_database(db_url)
    first = run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=5)), progress=False)
    assert first.complete and first.measured == len(small_plan) and first.already_done == 0
    again = run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=5)), progress=False)
    assert (again.measured, again.already_done, again.sweep_id) == (0, len(small_plan), first.sweep_id)
    assert _count(database) == len(small_plan)
    with database.session() as s:
        sweep = s.get(Sweep, first.sweep_id)
        assert sweep.status == "complete" and sweep.repeats == 5 and sweep.timer == "model"
        assert sweep.plan["runs"][0]["model"] == "resnet18"
    database.dispose()


def test_planned_counts_every_network_of_a_sweep(sqlite_path: Path, small_plan) -> None:  # type: ignore[no-untyped-def]
    """Two networks in one sweep: "planned" is the union of their configurations, not the last one's."""
    database = open_database(f"sqlite:///{sqlite_path}")
    other = build_plan("resnet50", "lhs:4:16", input_size=64, batch=8)
    union = {config_key(c) for c in small_plan.configs} | {config_key(c) for c in other.configs}
    assert len(other) < len(union) and len(small_plan) < len(union)  # they share some, not all
    run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=5)), progress=False)
    second = run_sweep(database, other, FakeBackend(TimingProtocol(repeats=5)), progress=False)
    run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=5)), progress=False)  # a re-run adds nothing
    with database.session() as s:
        plan = s.get(Sweep, second.sweep_id).plan
        assert plan["n_configs"] == len(union) == len(measured_keys(s, second.sweep_id))
        assert [r["model"] for r in plan["runs"]] == ["resnet18", "resnet50"]
    database.dispose()


class _Box(FakeBackend):
    """The fake GPU as one box of a fleet: its own GPU UUID."""

    def __init__(self, uuid: str) -> None:
        super().__init__(TimingProtocol(repeats=5))
        self.uuid = uuid

    def hardware(self):  # type: ignore[no-untyped-def]
        from profiler.hardware import HardwareInfo

        info = {k: v for k, v in super().hardware().items() if k != "fingerprint"}
        return HardwareInfo(**{**info, "gpu_uuid": self.uuid}).to_dict()


def test_one_hardware_name_makes_identical_boxes_one_profile(sqlite_path: Path, small_plan) -> None:  # type: ignore[no-untyped-def]
    """A fleet: boxes with their own GPU UUIDs under one --hardware-name share one profile and sweep; without a
    name each box is its own profile, and another name is another profile."""
    database = open_database(sqlite_path)
    a = run_sweep(database, small_plan, _Box("GPU-aaaa"), hardware_name="H200 (fleet)", progress=False)
    b = run_sweep(database, small_plan, _Box("GPU-bbbb"), hardware_name="H200 (fleet)", progress=False)
    assert b.sweep_id == a.sweep_id and b.measured == 0
    other = run_sweep(database, small_plan, _Box("GPU-bbbb"), hardware_name="other", progress=False)
    assert other.sweep_id != a.sweep_id
    own = [run_sweep(database, small_plan, _Box(u), progress=False).sweep_id for u in ("GPU-aaaa", "GPU-bbbb")]
    assert len({a.sweep_id, *own}) == 3


def test_other_protocol_is_another_sweep(sqlite_path: Path, small_plan) -> None:  # type: ignore[no-untyped-def]
    database = open_database(sqlite_path)
    a = run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=5)), progress=False)
    b = run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=7)), progress=False)
    assert a.sweep_id != b.sweep_id and b.measured == len(small_plan)


def test_cudnn_flags_are_recorded_only_where_cudnn_runs(sqlite_path: Path, small_plan) -> None:  # type: ignore[no-untyped-def]
    """A CPU or fake sweep never calls cuDNN: its row leaves the cuDNN/TF32 flags empty, not at their defaults."""
    database = open_database(sqlite_path)
    report = run_sweep(database, small_plan, FakeBackend(TimingProtocol(repeats=5, cudnn_benchmark=False)),
                       progress=False)
    with database.session() as s:
        sweep = s.get(Sweep, report.sweep_id)
        assert (sweep.cudnn_benchmark, sweep.cudnn_deterministic, sweep.allow_tf32) == (None, None, None)
        assert sweep.timer == "model" and sweep.repeats == 5

    class CudnnFake(FakeBackend):
        uses_cudnn = True

    recorded = CudnnFake(TimingProtocol(cudnn_benchmark=False)).recorded_protocol()
    assert [recorded[k] for k in ("cudnn_benchmark", "cudnn_deterministic", "allow_tf32")] == [False, False, True]


def test_failures_are_rows_and_the_sweep_goes_on(sqlite_path: Path, small_plan, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    def fail_on(config):  # type: ignore[no-untyped-def]
        if config.cout >= 256:
            return "oom"
        return "error" if config.cin == 24 else None

    database = open_database(sqlite_path)
    report = run_sweep(database, small_plan, FakeBackend(fail_on=fail_on), progress=False)
    n_oom = sum(c.cout >= 256 for c in small_plan.configs)
    n_err = sum(c.cout < 256 and c.cin == 24 for c in small_plan.configs)
    assert n_oom > 0
    assert report.failed == {"oom": n_oom, "error": n_err}
    assert report.measured == len(small_plan) - n_oom - n_err and report.complete
    assert capsys.readouterr().out == ""  # without a progress bar, failures are logged, not printed
    assert sum(r.message.startswith("oom: ") for r in caplog.records) == n_oom
    assert _count(database, "oom") == n_oom
    # a plain re-run skips failed rows; --retry-failed measures them again and replaces the rows
    assert run_sweep(database, small_plan, FakeBackend(fail_on=fail_on), progress=False).measured == 0
    retried = run_sweep(database, small_plan, FakeBackend(), retry_failed=True, progress=False)
    assert retried.measured == n_oom + n_err
    assert _count(database) == len(small_plan) and _count(database, "ok") == len(small_plan)


def test_ctrl_c_inside_a_write_releases_the_sqlite_lock(sqlite_path: Path, small_plan) -> None:  # type: ignore[no-untyped-def]
    """A Ctrl-C right after a row's INSERT ran (its transaction holds SQLite's write lock): the sweep is marked
    interrupted at once, not after two minutes of retries against this process's own lock."""
    from sqlalchemy import event

    database = open_database(sqlite_path)
    inserts = []

    @event.listens_for(database.engine, "after_cursor_execute")
    def interrupt(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO MEASUREMENT"):
            inserts.append(statement)
            if len(inserts) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(database, small_plan, FakeBackend(), progress=False)
    event.remove(database.engine, "after_cursor_execute", interrupt)
    with database.session() as s:
        assert [sweep.status for sweep in s.scalars(select(Sweep))] == ["interrupted"]
    assert _count(database) == 2  # the interrupted row was rolled back; a re-run measures it
    assert run_sweep(database, small_plan, FakeBackend(), progress=False).complete


def test_max_configs_and_time_budget_stop_and_resume(sqlite_path: Path, small_plan) -> None:  # type: ignore[no-untyped-def]
    database = open_database(sqlite_path)
    part = run_sweep(database, small_plan, FakeBackend(), max_configs=5, progress=False)
    assert (part.measured, part.stopped_by, part.remaining) == (5, "max configs", len(small_plan) - 5)
    with database.session() as s:
        assert s.get(Sweep, part.sweep_id).status == "interrupted"
    timed = run_sweep(database, small_plan, FakeBackend(delay_s=0.05), time_budget_s=0.2, progress=False)
    assert timed.stopped_by == "time budget" and 1 <= timed.measured < len(small_plan) - 5
    rest = run_sweep(database, small_plan, FakeBackend(), progress=False)
    assert rest.complete and _count(database) == len(small_plan)


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from db import open_database
    from profiler.backends.fake import FakeBackend
    from profiler.plan import build_plan
    from profiler.runner import run_sweep
    plan = build_plan("resnet50", "reference")
    run_sweep(open_database(sys.argv[1]), plan, FakeBackend(delay_s=float(sys.argv[2])), progress=False)
""")


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """`latlab profile --grid reference` semantics: kill -9 half-way, re-run, every config exactly once."""
    db_path = tmp_path / "kill.db"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(db_path), "0.001"], cwd=ROOT)
    database = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if db_path.exists():
                database = database or open_database(db_path, create=False, upgrade=False, check_schema=False)
                try:
                    if _count(database) >= 200:
                        break
                except Exception:  # schema not created yet
                    continue
            assert proc.poll() is None, "the sweep finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert database is not None
    killed_at = _count(database)
    plan = build_plan("resnet50", "reference")
    assert 200 <= killed_at < len(plan)
    report = run_sweep(open_database(db_path), plan, FakeBackend(), progress=False)
    assert report.already_done == killed_at and report.complete
    with database.session() as s:
        sweep_id = report.sweep_id
        assert s.scalar(select(func.count()).select_from(Measurement)) == len(plan)
        assert len(measured_keys(s, sweep_id)) == len(plan)
        lut = load_lut(s, sweep_id)
    assert set(lut) == set(plan.configs)
    # values written before the kill equal what an uninterrupted run measures (seeded per config)
    fresh = open_database(tmp_path / "fresh.db")
    run_sweep(fresh, plan, FakeBackend(), progress=False)
    with fresh.session() as s:
        assert load_lut(s, report.sweep_id) == lut


def test_git_sha_is_latlabs_own_commit_or_its_version(tmp_path: Path) -> None:
    """A latlab installed inside the user's own repository records its version, not that repository's commit."""
    from importlib.metadata import version

    from profiler.runner import git_sha

    checkout = tmp_path / "latlab-checkout"  # a latlab checkout: its commit, "-dirty" while tracked files differ
    (checkout / "latlab" / "cli").mkdir(parents=True)
    (checkout / "latlab" / "cli" / "x.py").write_text("a = 1\n")
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "add", "."], check=True)
    subprocess.run(["git", "-C", str(checkout), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m",
                    "latlab"], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    (checkout / "notes.txt").write_text("untracked files do not count")
    assert git_sha(checkout) == head
    (checkout / "latlab" / "cli" / "x.py").write_text("a = 2\n")
    assert git_sha(checkout) == f"{head}-dirty"
    user_repo = tmp_path / "project"
    (user_repo / ".venv" / "site-packages").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(user_repo)], check=True)
    subprocess.run(["git", "-C", str(user_repo), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q",
                    "--allow-empty", "-m", "theirs"], check=True)
    assert git_sha(user_repo / ".venv" / "site-packages") == f"latlab=={version('latlab')}"
    assert git_sha(user_repo) == f"latlab=={version('latlab')}"  # the top of a work tree, but not latlab's
