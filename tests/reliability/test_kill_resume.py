"""SIGKILL a fleet worker mid-sweep, then resume: nothing lost, nothing duplicated, nothing measured twice."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from db.claims import fleet_status
from profiler.backends.fake import FakeBackend
from profiler.protocol import TimingProtocol
from profiler.worker import run_worker


def test_sigkill_worker_then_resume(tmp_path: Path, h, reference_plan, figure) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "kill.db")
    proc = h.spawn(h.worker_cmd(db, "--worker-id", "victim", "--heartbeat-timeout", "1", delay_ms=1))
    try:
        database = h.wait_for_rows(db, 300, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = h.counts(database)["rows"]
    assert 300 <= killed_at < h.N_REFERENCE
    # the victim's claims stay "claimed" until its heartbeat is 1 s stale; then the survivor takes them. Waiting
    # past that makes the survivor declare it dead even when the kill fell between two claim batches (no claims
    # held: a fast survivor could otherwise finish before the heartbeat went stale)
    time.sleep(1.5)
    survivor = run_worker(database, reference_plan, FakeBackend(TimingProtocol()), worker_id="survivor",
                          heartbeat_timeout_s=1.0, progress=False)
    after = h.counts(database)
    status = {w["worker"]: w for w in fleet_status(database, survivor.sweep_id)["workers"]}
    reissued = h.claim_attempts(database).get(2, 0)
    figure(f"SIGKILL at {killed_at}/{h.N_REFERENCE} -> resumed by a second worker: {after['rows']} rows, "
           f"{after['duplicates']} duplicates, {reissued} claims of the dead worker re-issued, "
           f"{survivor.measured} measured by the survivor")
    assert survivor.complete and survivor.stopped_by is None
    assert after["rows"] == after["distinct"] == after["ok"] == h.N_REFERENCE and after["duplicates"] == 0
    assert killed_at + survivor.measured == h.N_REFERENCE  # every configuration measured (stored) exactly once
    assert status["victim"]["state"] == "dead" and status["victim"]["claimed"] == 0
    # at most one claim batch was in the victim's hands (none if the kill fell between two batches)
    assert 0 <= reissued <= 8
    assert set(h.claim_attempts(database)) <= {1, 2}
    # `latlab sweep status` shows the dead worker and the finished survivor
    from typer.testing import CliRunner

    from latlab.cli import sweep

    result = CliRunner().invoke(sweep.app, ["status", "--db", db, "-f", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("victim,") and ",dead" in line for line in lines), result.output
    assert any(line.startswith("survivor,") and ",finished," in line for line in lines), result.output
    assert f"{h.N_REFERENCE} planned, {h.N_REFERENCE} stored" in result.output


def test_a_plain_run_closes_the_claims_of_dead_workers(tmp_path: Path, h, reference_plan) -> None:  # type: ignore[no-untyped-def]
    """Workers killed holding claims, then the sweep finished without --worker: their claims are closed, so the
    next worker measures nothing again and the claim counts add up."""
    from db import claims
    from db.engine import open_database
    from profiler.runner import run_sweep

    database = open_database(str(tmp_path / "mixed.db"))
    backend = FakeBackend(TimingProtocol())
    first = run_worker(database, reference_plan, backend, worker_id="a", max_configs=5, progress=False)
    claims.register_worker(database, first.sweep_id, "victim", heartbeat_timeout_s=3600)  # alive, never returns
    assert len(claims.claim_batch(database, first.sweep_id, "victim", 8)) == 8
    plain = run_sweep(database, reference_plan, FakeBackend(TimingProtocol()), progress=False)
    assert plain.sweep_id == first.sweep_id and plain.complete
    open_claims = claims.outstanding(database, first.sweep_id)
    assert open_claims["pending"] == open_claims["claimed"] == 0 and open_claims["done"] == h.N_REFERENCE
    later = run_worker(database, reference_plan, FakeBackend(TimingProtocol()), worker_id="b", progress=False)
    assert later.complete and later.measured == 0
    assert h.counts(database)["rows"] == h.N_REFERENCE and h.counts(database)["duplicates"] == 0
