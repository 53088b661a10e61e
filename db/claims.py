"""Work claims of fleet sweeps: many workers, one database, every configuration measured once.

A fleet sweep keeps one ``sweep_claims`` row per configuration (``pending`` → ``claimed`` by a worker
→ ``done`` / ``failed``) and one ``sweep_workers`` row per worker with its heartbeat.

* Claiming is atomic: PostgreSQL locks the pending rows it takes with ``FOR UPDATE SKIP LOCKED`` (workers
  never wait on each other); SQLite takes the single write lock first (``BEGIN IMMEDIATE``, WAL mode).
* A worker whose heartbeat is older than its ``heartbeat_timeout_s`` is marked ``dead`` by the next
  worker that claims, and its claimed rows go back to ``pending``.
* A claim is closed in the same transaction that stores its measurement, guarded by "still claimed by
  me": a worker that was declared dead and comes back cannot close a claim someone else now holds
  (the measurement insert itself is idempotent, so nothing is ever duplicated).

Timestamps come from the workers' clocks (UTC); keep the fleet's clocks in sync (NTP) well within the
heartbeat timeout.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.engine import Database
from db.errors import InvalidKeyError
from db.keys import ConvConfig, ConvFamily
from db.lut import KEY_COLUMNS, MeasurementValues, config_key, measured_keys, record_measurement
from db.models import Measurement, Sweep, SweepClaim, SweepWorker, as_utc, utcnow

_CLAIMS = SweepClaim.__table__
_WORKERS = SweepWorker.__table__
_SEED_CHUNK = 500
_CLOSE = (
    update(_CLAIMS)
    .where(_CLAIMS.c.id == bindparam("cid"), _CLAIMS.c.worker_id == bindparam("wid"), _CLAIMS.c.state == "claimed")
    .values(state=bindparam("st"), finished_at=bindparam("t"))
)


def claim_key(config: ConvConfig) -> str:
    """Text key of a configuration: ``family|cin|cout|batch|dtype|layout|op``."""
    return "|".join(str(v) for v in config_key(config))


def parse_claim_key(key: str) -> ConvConfig:
    """The :class:`ConvConfig` of a :func:`claim_key`."""
    parts = key.split("|")
    if len(parts) != len(KEY_COLUMNS):
        raise InvalidKeyError(f"malformed claim key {key!r}")
    family, cin, cout, batch, dtype, layout, op = parts
    return ConvConfig(ConvFamily.from_key(family), int(cin), int(cout), int(batch), dtype, layout, op)


def default_worker_id() -> str:
    """``host-pid``: unique per process on a fleet of machines."""
    return f"{socket.gethostname()}-{os.getpid()}"


def register_worker(db: Database, sweep_id: int, worker_id: str, heartbeat_timeout_s: float) -> None:
    """Add (or revive) ``worker_id`` as running; claims left by an earlier process of that id go back."""
    now = utcnow()
    values = {"host": socket.gethostname(), "pid": os.getpid(), "state": "running",
              "heartbeat_timeout_s": float(heartbeat_timeout_s), "heartbeat_at": now}
    with db.transaction(immediate=True) as conn:
        found = conn.execute(
            update(_WORKERS).where(_WORKERS.c.sweep_id == sweep_id, _WORKERS.c.worker_id == worker_id)
            .values(**values)
        ).rowcount
        if not found:
            conn.execute(_insert_ignore(conn, _WORKERS, ["sweep_id", "worker_id"]).values(
                sweep_id=sweep_id, worker_id=worker_id, started_at=now, **values))
        _release(conn, sweep_id, [worker_id])


def heartbeat(db: Database, sweep_id: int, worker_id: str) -> bool:
    """Refresh the worker's heartbeat; False if it was declared dead meanwhile (its claims are gone)."""
    with db.transaction() as conn:
        return bool(conn.execute(
            update(_WORKERS).where(_WORKERS.c.sweep_id == sweep_id, _WORKERS.c.worker_id == worker_id,
                                   _WORKERS.c.state == "running").values(heartbeat_at=utcnow())
        ).rowcount)


def seed_claims(db: Database, sweep_id: int, keys: Sequence[str], *, retry: Iterable[str] = ()) -> int:
    """Add a pending claim for every key not yet known (idempotent); keys in ``retry`` that failed go back
    to pending. Returns the number of new claims."""
    added = 0
    for i in range(0, len(keys), _SEED_CHUNK):
        chunk = keys[i:i + _SEED_CHUNK]
        with db.transaction(immediate=True) as conn:
            stmt = _insert_ignore(conn, _CLAIMS, ["sweep_id", "config_key"])
            rows = [{"sweep_id": sweep_id, "config_key": k, "state": "pending", "attempts": 0} for k in chunk]
            result = conn.execute(stmt, rows)
            added += max(result.rowcount, 0)
    retry = list(retry)
    for i in range(0, len(retry), _SEED_CHUNK):
        with db.transaction(immediate=True) as conn:
            conn.execute(
                update(_CLAIMS).where(_CLAIMS.c.sweep_id == sweep_id, _CLAIMS.c.state == "failed",
                                      _CLAIMS.c.config_key.in_(retry[i:i + _SEED_CHUNK]))
                .values(state="pending", worker_id=None)
            )
    return added


def close_stored(db: Database, sweep_id: int, configs: Iterable[ConvConfig]) -> int:
    """Close the open claims (pending, or held by any worker) of those ``configs`` that are stored: as done for an
    ok row, as failed for a failed one. Returns how many were open.

    A sweep that a run without ``--worker`` finished stored what killed workers still held; closed, those
    claims are not measured again by the next worker, and ``latlab sweep status`` adds up.
    """
    counts = outstanding(db, sweep_id)
    if counts["pending"] + counts["claimed"] == 0:
        return 0
    with db.session() as session:
        stored = {"done": measured_keys(session, sweep_id, ("ok",)),
                  "failed": measured_keys(session, sweep_id, ("oom", "error"))}
    closed = 0
    for state, keys in stored.items():
        chosen = [claim_key(c) for c in configs if config_key(c) in keys]
        for i in range(0, len(chosen), _SEED_CHUNK):
            with db.transaction(immediate=True) as conn:
                closed += conn.execute(
                    update(_CLAIMS).where(_CLAIMS.c.sweep_id == sweep_id, _CLAIMS.c.state.in_(("pending", "claimed")),
                                          _CLAIMS.c.config_key.in_(chosen[i:i + _SEED_CHUNK]))
                    .values(state=state, finished_at=utcnow())
                ).rowcount
    return closed


def claim_batch(db: Database, sweep_id: int, worker_id: str, n: int) -> list[tuple[int, str]]:
    """Release dead workers' claims, claim up to ``n`` pending configurations, and return every
    ``(claim id, key)`` this worker now holds (a retried transaction cannot leave claims orphaned)."""
    with db.transaction(immediate=True) as conn:
        release_dead(conn, sweep_id)
        pick = (
            select(_CLAIMS.c.id).where(_CLAIMS.c.sweep_id == sweep_id, _CLAIMS.c.state == "pending")
            .order_by(_CLAIMS.c.id).limit(n)
        )
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        ids = list(conn.execute(pick).scalars())
        if ids:
            conn.execute(
                update(_CLAIMS).where(_CLAIMS.c.id.in_(ids), _CLAIMS.c.state == "pending")
                .values(state="claimed", worker_id=worker_id, claimed_at=utcnow(), attempts=_CLAIMS.c.attempts + 1)
            )
        return _held(conn, sweep_id, worker_id)


def _held(conn: Connection, sweep_id: int, worker_id: str) -> list[tuple[int, str]]:
    rows = conn.execute(
        select(_CLAIMS.c.id, _CLAIMS.c.config_key).where(
            _CLAIMS.c.sweep_id == sweep_id, _CLAIMS.c.worker_id == worker_id, _CLAIMS.c.state == "claimed"
        ).order_by(_CLAIMS.c.id)
    )
    return [(int(i), str(k)) for i, k in rows]


def release_dead(conn: Connection, sweep_id: int) -> list[str]:
    """Mark running workers whose heartbeat is older than their timeout as dead; free their claims."""
    now = utcnow()
    rows = conn.execute(
        select(_WORKERS.c.worker_id, _WORKERS.c.heartbeat_at, _WORKERS.c.heartbeat_timeout_s).where(
            _WORKERS.c.sweep_id == sweep_id, _WORKERS.c.state == "running")
    ).all()
    dead = []
    for worker_id, beat, timeout in rows:
        if (now - as_utc(beat)).total_seconds() <= timeout:
            continue
        marked = conn.execute(
            update(_WORKERS).where(_WORKERS.c.sweep_id == sweep_id, _WORKERS.c.worker_id == worker_id,
                                   _WORKERS.c.state == "running", _WORKERS.c.heartbeat_at == beat)
            .values(state="dead")
        ).rowcount
        if marked:
            dead.append(worker_id)
    _release(conn, sweep_id, dead)
    return dead


def _release(conn: Connection, sweep_id: int, worker_ids: Sequence[str]) -> int:
    if not worker_ids:
        return 0
    return conn.execute(
        update(_CLAIMS).where(_CLAIMS.c.sweep_id == sweep_id, _CLAIMS.c.worker_id.in_(list(worker_ids)),
                              _CLAIMS.c.state == "claimed").values(state="pending", worker_id=None)
    ).rowcount


def leave(db: Database, sweep_id: int, worker_id: str, state: str) -> int:
    """The worker stops: its unfinished claims go back to pending; returns how many."""
    with db.transaction(immediate=True) as conn:
        conn.execute(
            update(_WORKERS).where(_WORKERS.c.sweep_id == sweep_id, _WORKERS.c.worker_id == worker_id)
            .values(state=state, heartbeat_at=utcnow())
        )
        return _release(conn, sweep_id, [worker_id])


def record_claimed(
    db: Database, sweep_id: int, claim_id: int, worker_id: str, config: ConvConfig, values: MeasurementValues,
) -> bool:
    """Store the measurement of a claimed configuration and close the claim, in one transaction.

    A failed row stored earlier is replaced (the claim was pending again because of ``--retry-failed``); an ok
    row is never overwritten. Returns False when the claim was no longer this worker's (released
    after a missed heartbeat); the measurement is still stored if its key is free.
    """
    state = "done" if values.status == "ok" else "failed"
    with db.session() as session:
        owned = session.execute(_CLOSE, {"cid": claim_id, "wid": worker_id, "st": state, "t": utcnow()}).rowcount
        _store(session, sweep_id, config, values)
    return bool(owned)


def _store(session: Session, sweep_id: int, config: ConvConfig, values: MeasurementValues) -> None:
    if record_measurement(session, sweep_id, config, values):
        return
    key = dict(zip(KEY_COLUMNS, config_key(config), strict=True))
    status = session.scalar(select(Measurement.status).where(
        Measurement.sweep_id == sweep_id, *[getattr(Measurement, k) == v for k, v in key.items()]))
    if status is not None and status != "ok":
        record_measurement(session, sweep_id, config, values, replace=True)


def outstanding(db: Database, sweep_id: int) -> dict[str, int]:
    """Claim counts of a sweep by state (``pending``, ``claimed``, ``done``, ``failed``)."""
    with db.transaction() as conn:
        rows = conn.execute(
            select(_CLAIMS.c.state, func.count()).where(_CLAIMS.c.sweep_id == sweep_id).group_by(_CLAIMS.c.state)
        ).all()
    counts = dict.fromkeys(("pending", "claimed", "done", "failed"), 0)
    counts.update({str(s): int(n) for s, n in rows})
    return counts


def alive_workers(db: Database, sweep_id: int, exclude: str | None = None) -> int:
    """Workers of the sweep that are running with a fresh heartbeat (other than ``exclude``)."""
    return sum(1 for w in worker_rows(db, sweep_id) if w["alive"] and w["worker"] != exclude)


def worker_rows(db: Database, sweep_id: int) -> list[dict[str, Any]]:
    """Per worker: host, pid, state, claims held/done/failed, heartbeat age and alive."""
    now = utcnow()
    with db.transaction() as conn:
        counts: dict[tuple[str, str], int] = {
            (str(w), str(s)): int(n) for w, s, n in conn.execute(
                select(_CLAIMS.c.worker_id, _CLAIMS.c.state, func.count())
                .where(_CLAIMS.c.sweep_id == sweep_id, _CLAIMS.c.worker_id.is_not(None))
                .group_by(_CLAIMS.c.worker_id, _CLAIMS.c.state)
            )
        }
        workers = conn.execute(select(_WORKERS).where(_WORKERS.c.sweep_id == sweep_id).order_by(_WORKERS.c.id)).all()
    out = []
    for w in workers:
        age = (now - as_utc(w.heartbeat_at)).total_seconds()
        alive = w.state == "running" and age <= w.heartbeat_timeout_s
        out.append({
            "worker": w.worker_id, "host": w.host, "pid": w.pid,
            "state": w.state if w.state != "running" or alive else "running (no heartbeat)",
            "claimed": counts.get((w.worker_id, "claimed"), 0), "done": counts.get((w.worker_id, "done"), 0),
            "failed": counts.get((w.worker_id, "failed"), 0), "last_heartbeat_s": round(age, 1),
            "alive": alive,
        })
    return out


def fleet_status(db: Database, sweep_id: int) -> dict[str, Any]:
    """Workers and totals of a sweep: planned, stored ok/failed, claims by state."""
    with db.transaction() as conn:
        sweep = conn.execute(select(Sweep.plan, Sweep.status).where(Sweep.id == sweep_id)).first()
        stored = dict(conn.execute(
            select(Measurement.status, func.count()).where(Measurement.sweep_id == sweep_id)
            .group_by(Measurement.status)).all())
    plan = (sweep.plan or {}) if sweep is not None else {}
    return {
        "sweep": sweep_id, "status": sweep.status if sweep is not None else None,
        "planned": plan.get("n_configs"), "ok": int(stored.get("ok", 0)),
        "failed": int(stored.get("oom", 0)) + int(stored.get("error", 0)),
        "claims": outstanding(db, sweep_id), "workers": worker_rows(db, sweep_id),
    }


def _insert_ignore(conn: Connection, table: Any, index_elements: list[str]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on SQLite/PostgreSQL (plain insert elsewhere)."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    if name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    return insert(table)
