"""One worker of a fleet sweep: claim a batch, measure it, store it, repeat (``latlab profile --worker``).

Any number of workers (processes or machines) pointed at one database with the same plan and protocol
share the sweep (see :mod:`db.claims`). A background thread sends a heartbeat every quarter of
``heartbeat_timeout_s``; a worker that stops sending them (killed, hung, partitioned) is declared dead by
the others and its claims are measured by them. Every database transaction is retried on connection
loss (:func:`db.retry.with_retry`), so a worker rides out a database restart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from db import claims
from db.engine import Database
from db.errors import LatlabError
from db.lut import config_key, measured_keys
from db.retry import DEFAULT_RETRY_S, with_retry
from profiler.backends.base import Backend
from profiler.plan import SweepPlan
from profiler.runner import _measure_one, count_result, set_sweep_status, start_sweep

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    """What one worker did, and what the fleet had left when it stopped."""

    sweep_id: int
    hardware: str
    worker_id: str
    planned: int
    measured: int = 0
    failed: dict[str, int] = field(default_factory=lambda: {"oom": 0, "error": 0})
    lost: int = 0  # claims taken over by another worker after a missed heartbeat
    remaining: int = 0  # pending + claimed configurations of the sweep at exit
    elapsed_s: float = 0.0
    stopped_by: str | None = None

    @property
    def complete(self) -> bool:
        return self.remaining == 0


class _Heartbeat(threading.Thread):
    """Refreshes the worker row every ``interval`` seconds; sets ``lost`` if the worker was declared dead."""

    def __init__(self, db: Database, sweep_id: int, worker_id: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{worker_id}", daemon=True)
        self.db, self.sweep_id, self.worker_id, self.interval = db, sweep_id, worker_id, interval
        self.lost = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                if not claims.heartbeat(self.db, self.sweep_id, self.worker_id):
                    self.lost.set()
            except Exception as exc:  # database down: the main loop retries; keep beating
                log.warning("heartbeat failed: %s", str(exc).splitlines()[0])

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def run_worker(
    db: Database, plan: SweepPlan, backend: Backend, *, name: str = "", hardware_name: str | None = None,
    worker_id: str | None = None, claim_batch: int = 8, heartbeat_timeout_s: float = 60.0,
    time_budget_s: float | None = None, max_configs: int | None = None, retry_failed: bool = False,
    progress: bool = True, command: str | None = None, retry_s: float = DEFAULT_RETRY_S,
) -> WorkerReport:
    """Take part in the fleet sweep of ``plan`` until no configuration is pending or claimed."""
    if claim_batch < 1:
        raise LatlabError(f"--claim-batch must be >= 1, got {claim_batch}")
    if heartbeat_timeout_s <= 0:
        raise LatlabError(f"--heartbeat-timeout must be > 0 seconds, got {heartbeat_timeout_s}")
    worker_id = worker_id or claims.default_worker_id()

    def retry(fn, what):  # type: ignore[no-untyped-def]
        return with_retry(fn, what=what, retry_s=retry_s)

    sweep_id, hw_name = retry(lambda: start_sweep(db, plan, backend, name=name, hardware_name=hardware_name,
                                                  command=command), "opening the sweep")
    retry(lambda: claims.register_worker(db, sweep_id, worker_id, heartbeat_timeout_s), "registering the worker")
    report = WorkerReport(sweep_id, hw_name, worker_id, len(plan))
    _seed(db, sweep_id, plan, retry_failed, retry)
    beat = _Heartbeat(db, sweep_id, worker_id, heartbeat_timeout_s / 4)
    beat.start()
    poll_s = min(1.0, heartbeat_timeout_s / 4)
    start = time.monotonic()
    bar = tqdm(desc=f"sweep {sweep_id} worker {worker_id}", unit="cfg", disable=not progress, dynamic_ncols=True)
    state = "stopped"
    try:
        while report.stopped_by is None:
            batch = retry(lambda: claims.claim_batch(db, sweep_id, worker_id, claim_batch), "claiming work")
            if not batch:
                counts = retry(lambda: claims.outstanding(db, sweep_id), "reading the sweep")
                if counts["pending"] + counts["claimed"] == 0:
                    state = "finished"
                    break
                time.sleep(poll_s)  # others hold the rest; wait for them or for their heartbeats to expire
                continue
            for claim_id, key in batch:
                report.stopped_by = _stop_reason(report, start, time_budget_s, max_configs)
                if report.stopped_by:
                    break
                if beat.lost.is_set():  # declared dead while we were away: rejoin, claims are gone
                    beat.lost.clear()
                    retry(lambda: claims.register_worker(db, sweep_id, worker_id, heartbeat_timeout_s), "rejoining")
                    break
                _do_claim(db, sweep_id, worker_id, claim_id, key, backend, report, bar, retry)
    except KeyboardInterrupt:
        state = "stopped"
        raise
    finally:
        beat.stop()
        bar.close()
        backend.close()
        report.elapsed_s = time.monotonic() - start
        _leave(db, sweep_id, worker_id, state, report, retry)
    return report


def _seed(db: Database, sweep_id: int, plan: SweepPlan, retry_failed: bool, retry) -> None:  # type: ignore[no-untyped-def]
    def read() -> tuple[set[tuple], set[tuple]]:
        with db.session() as session:
            ok = measured_keys(session, sweep_id, ("ok",))
            failed = measured_keys(session, sweep_id, ("oom", "error"))
        return ok, failed

    retry(lambda: claims.close_stored(db, sweep_id, plan.configs), "closing the claims of stored rows")
    ok, failed = retry(read, "reading stored rows")
    skip = ok if retry_failed else ok | failed
    keys = [claims.claim_key(c) for c in plan.configs if config_key(c) not in skip]
    again = [claims.claim_key(c) for c in plan.configs if config_key(c) in failed] if retry_failed else []
    retry(lambda: claims.seed_claims(db, sweep_id, keys, retry=again), "adding claims")


def _stop_reason(
    report: WorkerReport, start: float, time_budget_s: float | None, max_configs: int | None,
) -> str | None:
    done = report.measured + sum(report.failed.values())
    if max_configs is not None and done >= max_configs:
        return "max configs"
    if time_budget_s is not None and time.monotonic() - start >= time_budget_s:
        return "time budget"
    return None


def _do_claim(db, sweep_id, worker_id, claim_id, key, backend, report, bar, retry) -> None:  # type: ignore[no-untyped-def]
    config = claims.parse_claim_key(key)
    values = _measure_one(backend, config)
    owned = retry(lambda: claims.record_claimed(db, sweep_id, claim_id, worker_id, config, values),
                  "storing a measurement")
    if not owned:
        report.lost += 1
    count_result(report, bar, config, values)
    bar.update(1)


def _leave(db, sweep_id, worker_id, state, report, retry) -> None:  # type: ignore[no-untyped-def]
    try:
        retry(lambda: claims.leave(db, sweep_id, worker_id, state), "releasing claims")
        counts = retry(lambda: claims.outstanding(db, sweep_id), "reading the sweep")
        report.remaining = counts["pending"] + counts["claimed"]
        if report.remaining == 0:
            set_sweep_status(db, sweep_id, "complete")
        elif not claims.alive_workers(db, sweep_id, exclude=worker_id):
            set_sweep_status(db, sweep_id, "interrupted")
    except LatlabError as exc:  # leaving is best effort: the heartbeat timeout frees the claims anyway
        log.warning("could not leave the sweep cleanly: %s", exc)
