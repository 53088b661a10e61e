"""Helpers of the fault-injection suite: worker subprocesses and row counts (load with :func:`load_helpers`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from db.engine import Database, open_database
from db.lut import KEY_COLUMNS
from db.models import Measurement, SweepClaim

ROOT = Path(__file__).resolve().parents[2]
N_REFERENCE = 1423  # ResNet-50 HALP/MDP reference lattice


def worker_cmd(db: str, *extra: str, delay_ms: float = 0.0) -> list[str]:
    """``latlab profile --worker`` on the fake backend and the ResNet-50 reference grid."""
    return [sys.executable, "-m", "latlab", "profile", "--model", "resnet50", "--backend", "fake",
            "--grid", "reference", "--worker", "--fake-delay-ms", str(delay_ms), "--quiet", "--db", db, *extra]


def spawn(cmd: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def counts(database: Database) -> dict[str, int]:
    """Rows, distinct keys, duplicate keys and rows by status of every sweep in the database."""
    keys = [getattr(Measurement, c) for c in ("sweep_id", *KEY_COLUMNS)]
    with database.session() as s:
        rows = s.scalar(select(func.count()).select_from(Measurement)) or 0
        distinct = s.scalar(select(func.count()).select_from(select(*keys).distinct().subquery())) or 0
        by_status = dict(s.execute(select(Measurement.status, func.count()).group_by(Measurement.status)).all())
    return {"rows": rows, "distinct": distinct, "duplicates": rows - distinct, **by_status}


def claim_attempts(database: Database) -> dict[int, int]:
    """How many claims were taken ``n`` times: ``{attempts: number of configurations}``."""
    with database.session() as s:
        return dict(s.execute(select(SweepClaim.attempts, func.count()).group_by(SweepClaim.attempts)).all())


def wait_for_rows(db: str, n: int, proc: subprocess.Popen[str], timeout: float = 90.0) -> Database:
    """Poll until ``n`` measurement rows exist (the worker must still be running)."""
    deadline = time.monotonic() + timeout
    database: Database | None = None
    while time.monotonic() < deadline:
        time.sleep(0.1)
        assert proc.poll() is None, f"worker exited early: {proc.communicate()}"
        try:
            database = database or open_database(db, create=False, upgrade=False, check_schema=False)
            if counts(database)["rows"] >= n:
                return database
        except Exception:  # file or schema not there yet
            continue
    raise AssertionError(f"fewer than {n} rows after {timeout:.0f}s")


def _fork_target(url: str, worker_id: str, plan, delay_s: float, batch: int, queue) -> None:  # type: ignore[no-untyped-def]
    from profiler.backends.fake import FakeBackend
    from profiler.worker import run_worker

    database = open_database(url)
    report = run_worker(database, plan, FakeBackend(delay_s=delay_s), worker_id=worker_id, claim_batch=batch,
                        progress=False)
    queue.put({"worker": worker_id, "measured": report.measured, "lost": report.lost, "complete": report.complete})
    database.dispose()


def fork_workers(url: str, plan, n: int, delay_s: float, batch: int = 4) -> list[dict]:  # type: ignore[no-untyped-def]
    """Run ``n`` worker processes at once (forked: no interpreter start-up, the plan is inherited)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fork_target, args=(url, f"w{i}", plan, delay_s, batch, queue)) for i in range(n)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"worker process exited with {p.exitcode}"
    return sorted(reports, key=lambda r: r["worker"])
