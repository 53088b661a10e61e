"""Reading and writing LUT rows: hardware profiles, sweeps, measurements and lookups."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import hide_passwords
from db.errors import InvalidKeyError, LatlabError, LUTMissError
from db.keys import ConvConfig, ConvFamily
from db.models import Hardware, Measurement, ModelMeasurement, Sweep, as_utc, utcnow

_HARDWARE_COLUMNS = {c.key for c in Hardware.__table__.columns} - {"id", "created_at", "details"}
_TELEMETRY_COLUMNS = ("sm_clock_mhz", "mem_clock_mhz", "temperature_c", "power_w", "throttle_reasons")
KEY_COLUMNS = ("family", "cin", "cout", "batch", "dtype", "layout", "op")


def sweep_rows(sweep_id: int, *columns: Any, statuses: Iterable[str] | None = None, **where: Any) -> Select:
    """A select of a sweep's measurements (``columns``, or whole rows) with these ``statuses`` whose columns equal
    ``where`` (None values ignored: ``batch=None`` means any batch)."""
    query = select(*columns) if columns else select(Measurement)
    query = query.where(Measurement.sweep_id == sweep_id)
    if statuses is not None:
        query = query.where(Measurement.status.in_(list(statuses)))
    for column, value in where.items():
        if column not in KEY_COLUMNS:
            raise InvalidKeyError(f"cannot filter LUT rows by {column!r}; choose from {', '.join(KEY_COLUMNS)}")
        if value is not None:
            query = query.where(getattr(Measurement, column) == value)
    return query


def get_or_create_hardware(session: Session, info: Mapping[str, Any]) -> Hardware:
    """The hardware row with ``info['fingerprint']``, created from ``info`` if new."""
    fingerprint = info["fingerprint"]
    row = session.scalar(select(Hardware).where(Hardware.fingerprint == fingerprint))
    if row is not None:
        return row
    values = {k: v for k, v in info.items() if k in _HARDWARE_COLUMNS}
    details = {k: v for k, v in info.items() if k not in _HARDWARE_COLUMNS}
    _insert_unless_there(session, Hardware, {**values, "details": details}, ["fingerprint"])  # or another worker's
    return session.scalars(select(Hardware).where(Hardware.fingerprint == fingerprint)).one()


def _insert_unless_there(session: Session, model: type, values: dict[str, Any], unique: list[str]) -> None:
    """Insert a row unless one with the same ``unique`` columns exists (a concurrent worker's), in the session's
    transaction: ``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL, so no SAVEPOINT, which pysqlite would
    commit on its own, so that a rollback would leave the row behind."""
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        session.execute(insert(model.__table__).values(**values).on_conflict_do_nothing(index_elements=unique))
        return
    try:
        with session.begin_nested():
            session.add(model(**values))
    except IntegrityError:
        pass


def get_or_create_sweep(
    session: Session, hardware: Hardware, *, backend: str, protocol: Mapping[str, Any], protocol_hash: str,
    name: str = "", settings: Mapping[str, Any] | None = None, plan: Mapping[str, Any] | None = None,
    command: str | None = None, git_sha: str | None = None, status: str = "running",
) -> Sweep:
    """The sweep of (hardware, protocol, name), created if new; a resumed sweep is set running."""
    query = select(Sweep).where(
        Sweep.hardware_id == hardware.id, Sweep.protocol_hash == protocol_hash, Sweep.name == name
    )
    row = session.scalar(query)
    if row is None:
        cols = {c.key for c in Sweep.__table__.columns}
        values = dict(
            hardware_id=hardware.id, name=name, backend=backend, protocol_hash=protocol_hash,
            settings=dict(settings or {}), plan=dict(plan or {}), git_sha=git_sha,
            command=hide_passwords(command) if command else command,
            status=status, **{k: v for k, v in protocol.items() if k in cols},
        )
        _insert_unless_there(session, Sweep, values, ["hardware_id", "protocol_hash", "name"])
        row = session.scalars(query).one()
    else:
        row.status = status
        if plan:
            row.plan = dict(plan)
        if command:
            row.command = hide_passwords(command)
    row.updated_at = utcnow()
    return row


def measured_keys(session: Session, sweep_id: int, statuses: Iterable[str] = ("ok", "oom", "error")) -> set[tuple]:
    """Keys ``(family, cin, cout, batch, dtype, layout, op)`` already stored for a sweep."""
    cols = [getattr(Measurement, c) for c in KEY_COLUMNS]
    rows = session.execute(
        select(*cols).where(Measurement.sweep_id == sweep_id, Measurement.status.in_(tuple(statuses)))
    )
    return {tuple(r) for r in rows}


def config_key(config: ConvConfig) -> tuple:
    """The unique key of a measurement row: family, cin, cout, batch, dtype, layout, op."""
    return (config.family.key, config.cin, config.cout, config.batch, config.dtype, config.layout, config.op)


@dataclass
class MeasurementValues:
    """What a backend produced for one configuration (or why it failed)."""

    status: str = "ok"
    median_ms: float | None = None
    iqr_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    n: int | None = None
    message: str | None = None
    telemetry: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in ("ok", "oom", "error"):
            raise LatlabError(f"unknown measurement status {self.status!r}")
        bad_median = self.median_ms is None or not math.isfinite(self.median_ms) or self.median_ms < 0
        if self.status == "ok" and bad_median:
            raise LatlabError(f"an ok measurement needs a finite median >= 0, got {self.median_ms}")


def record_measurement(
    session: Session, sweep_id: int, config: ConvConfig, values: MeasurementValues, *, replace: bool = False,
) -> bool:
    """Insert one measurement row; returns False if the key was already there.

    The insert is idempotent on the unique key (``ON CONFLICT DO NOTHING`` on SQLite/PostgreSQL), so
    re-running or concurrently running a sweep never duplicates rows. ``replace=True`` overwrites an
    existing row (used to retry failed configurations).
    """
    row = _measurement_row(sweep_id, config, values)
    if replace:
        existing = session.scalar(_key_query(sweep_id, config))
        if existing is not None:
            for k, v in row.items():
                setattr(existing, k, v)
            return True
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        return session.execute(_insert_ignore(dialect), row).scalar() is not None
    try:
        with session.begin_nested():
            session.add(Measurement(**row))
        return True
    except IntegrityError:
        return False


def record_measurements(session: Session, sweep_id: int,
                        measured: Iterable[tuple[ConvConfig, MeasurementValues]]) -> int:
    """Insert many rows, one statement per 10,000 (not one per row); keys already there are kept, as
    :func:`record_measurement` does. Returns how many rows were new."""
    measured = list(measured)
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        return sum(record_measurement(session, sweep_id, config, values) for config, values in measured)
    rows = [_measurement_row(sweep_id, config, values) for config, values in measured]
    return sum(len(session.execute(_insert_ignore(dialect), rows[start:start + 10_000]).all())
               for start in range(0, len(rows), 10_000))  # RETURNING gives the ids of the new rows only


def _measurement_row(sweep_id: int, config: ConvConfig, values: MeasurementValues) -> dict[str, Any]:
    row: dict[str, Any] = config.as_row()
    row.update(
        sweep_id=sweep_id, status=values.status, median_ms=values.median_ms, iqr_ms=values.iqr_ms,
        mean_ms=values.mean_ms, min_ms=values.min_ms, n=values.n, message=values.message,
        created_at=utcnow(),
    )
    telemetry = dict(values.telemetry or {})
    for col in _TELEMETRY_COLUMNS:
        row[col] = telemetry.get(col)
    return row


_INSERT_IGNORE: dict[str, Any] = {}


def _insert_ignore(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` on the measurements table, built once per dialect
    (a Core statement executed with parameters: no per-row statement construction)."""
    stmt = _INSERT_IGNORE.get(dialect)
    if stmt is None:
        table = Measurement.__table__
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        stmt = insert(table).on_conflict_do_nothing(index_elements=["sweep_id", *KEY_COLUMNS]).returning(table.c.id)
        _INSERT_IGNORE[dialect] = stmt
    return stmt


def _key_query(sweep_id: int, config: ConvConfig):  # type: ignore[no-untyped-def]
    key = dict(zip(KEY_COLUMNS, config_key(config), strict=True))
    return select(Measurement).where(
        Measurement.sweep_id == sweep_id, *[getattr(Measurement, k) == v for k, v in key.items()]
    )


def matching_hardware(session: Session, selector: str) -> list[Hardware]:
    """The hardware profiles ``selector`` names: by id, else exact name, else fingerprint prefix."""
    rows: list[Hardware] = []
    if selector.isdigit():
        row = session.get(Hardware, int(selector))
        rows = [row] if row is not None else []
    if not rows:
        rows = list(session.scalars(select(Hardware).where(Hardware.name == selector)))
    if not rows and len(selector) >= 4:
        prefix = Hardware.fingerprint.startswith(selector.lower(), autoescape=True)  # hex; SQLite LIKE folds case
        rows = list(session.scalars(select(Hardware).where(prefix)))
    return rows


def find_hardware(session: Session, selector: str) -> Hardware:
    """A hardware profile by id, exact name or fingerprint prefix; ambiguous or unknown raises."""
    rows = matching_hardware(session, selector)
    if not rows:
        known = ", ".join(f"{h.id}: {h.name}" for h in session.scalars(select(Hardware))) or "none"
        raise LatlabError(f"no hardware profile {selector!r} in the database (known: {known})")
    if len(rows) > 1:
        ids = ", ".join(f"{h.id} ({h.fingerprint})" for h in rows)
        raise LatlabError(f"hardware {selector!r} is ambiguous: profiles {ids}; pass the id or fingerprint")
    return rows[0]


def find_sweep(session: Session, sweep: int | None = None, hardware: str | None = None, *,
               choose: str = "--sweep ID", holding: Mapping[str, Any] | None = None) -> Sweep:
    """Choose one sweep: by id, or the only sweep of a hardware profile, or the only one (several: an error
    listing them, newest first, that says to ``choose`` one).

    ``holding`` (row settings such as ``{"batch": 256, "dtype": "fp16"}``; None values ignored) narrows several
    candidates to those with measured rows of those settings, so ``--batch 256`` finds the one sweep at batch 256.
    """
    if sweep is not None:
        row = session.get(Sweep, sweep)
        if row is None:
            raise LatlabError(f"no sweep with id {sweep} (see `latlab lut list`)")
        if hardware is not None and row.hardware_id != find_hardware(session, hardware).id:
            raise LatlabError(f"sweep {sweep} is of hardware {row.hardware.name!r}, not {hardware!r}")
        return row
    query = select(Sweep).order_by(Sweep.updated_at.desc(), Sweep.id.desc())
    if hardware is not None:
        query = query.where(Sweep.hardware_id == find_hardware(session, hardware).id)
    rows = list(session.scalars(query))
    if not rows:
        where = f" for hardware {hardware!r}" if hardware else ""
        raise LatlabError(f"no sweeps{where} in the database; run `latlab profile` or `latlab lut import`")
    wanted = {k: v for k, v in (holding or {}).items() if v is not None}
    if len(rows) > 1 and wanted:
        held = [s for s in rows if session.scalar(select(sweep_rows(s.id, Measurement.id, statuses=("ok",),
                                                                    **wanted).exists()))]
        if not held:
            asked = " ".join(f"{k}={v}" for k, v in wanted.items())
            raise LatlabError(f"none of sweeps {', '.join(str(s.id) for s in rows)} holds measurements with {asked} "
                              "(see `latlab lut list`)")
        rows = held
    if len(rows) > 1:
        ids = ", ".join(f"{s.id} ({s.hardware.name}, {s.backend}{', ' + s.name if s.name else ''})" for s in rows)
        raise LatlabError(f"several sweeps match: {ids}; choose one with {choose}")
    return rows[0]


def lookup(session: Session, sweep_id: int, config: ConvConfig) -> float:
    """Median latency (ms) of ``config`` in a sweep; raises :class:`LUTMissError` naming it."""
    row = session.scalar(_key_query(sweep_id, config))
    if row is None:
        held = session.execute(
            select(Measurement.batch, Measurement.dtype, Measurement.layout, Measurement.op).distinct()
            .where(Measurement.sweep_id == sweep_id)).all()
        hint = "" if (config.batch, config.dtype, config.layout, config.op) in {tuple(h) for h in held} else (
            f"; it holds batch dtype layout op {'; '.join(' '.join(map(str, h)) for h in held) or 'nothing'} "
            "(choose with --batch/--dtype/--layout/--op)")
        raise LUTMissError(f"LUT miss: no measurement of {config.describe()} in sweep {sweep_id}{hint}")
    if row.status != "ok":
        raise LUTMissError(
            f"LUT miss: {config.describe()} in sweep {sweep_id} failed to measure ({row.status}: {row.message})"
        )
    assert row.median_ms is not None
    return row.median_ms


def load_lut(session: Session, sweep_id: int) -> dict[ConvConfig, float]:
    """All ok measurements of a sweep as ``{ConvConfig: median_ms}``."""
    rows = session.scalars(
        select(Measurement).where(Measurement.sweep_id == sweep_id, Measurement.status == "ok")
    )
    return {row_config(r): float(r.median_ms) for r in rows if r.median_ms is not None}


def row_config(row: Measurement) -> ConvConfig:
    """The :class:`ConvConfig` a measurement row describes."""
    return ConvConfig(ConvFamily.from_key(row.family), row.cin, row.cout, row.batch, row.dtype, row.layout, row.op)


def setting_label(batch: int, dtype: str, layout: str, op: str) -> str:
    """``b256 fp16 nhwc`` (the op named unless it is ``conv``)."""
    return f"b{batch} {dtype} {layout}" + (f" {op}" if op != "conv" else "")


def sweep_summaries(session: Session, hardware: str | None = None) -> list[dict[str, Any]]:
    """One dict per sweep with hardware name, backend, the row settings (batch, dtype, layout, and op unless
    conv), timing protocol (cache, threads, timer) and counts by status: what tells two sweeps of one device
    apart."""
    query = select(Sweep).order_by(Sweep.id)
    if hardware is not None:
        query = query.where(Sweep.hardware_id == find_hardware(session, hardware).id)
    counts: dict[tuple[int, str], int] = {
        (sid, status): n
        for sid, status, n in session.execute(
            select(Measurement.sweep_id, Measurement.status, func.count()).group_by(
                Measurement.sweep_id, Measurement.status
            )
        )
    }
    families: dict[int, int] = {}
    last_row: dict[int, datetime] = {}
    for sid, n_families, last in session.execute(
        select(Measurement.sweep_id, func.count(func.distinct(Measurement.family)),
               func.max(Measurement.created_at)).group_by(Measurement.sweep_id)
    ):
        families[sid], last_row[sid] = n_families, last
    settings: dict[int, list[str]] = {}
    for sid, batch, dtype, layout, op in session.execute(
        select(Measurement.sweep_id, Measurement.batch, Measurement.dtype, Measurement.layout, Measurement.op)
        .distinct().order_by(Measurement.sweep_id, Measurement.batch, Measurement.dtype, Measurement.layout,
                             Measurement.op)
    ):
        settings.setdefault(sid, []).append(setting_label(batch, dtype, layout, op))
    out = []
    now = utcnow()
    for s in session.scalars(query):
        cache = cache_label(s)
        out.append({
            "sweep": s.id, "hardware": s.hardware.name, "hardware_id": s.hardware_id, "backend": s.backend,
            "name": s.name, "settings": "; ".join(settings.get(s.id, [])), "cache": cache,
            "threads": s.num_threads, "timer": s.timer, "status": _status_now(s, last_row.get(s.id), now),
            "planned": s.plan.get("n_configs"),
            "ok": counts.get((s.id, "ok"), 0), "oom": counts.get((s.id, "oom"), 0),
            "error": counts.get((s.id, "error"), 0), "families": families.get(s.id, 0),
            "updated": as_utc(s.updated_at).strftime("%Y-%m-%d %H:%M") if s.updated_at else "",
        })
    return out


def cache_label(sweep: Sweep) -> str:
    """How warm the caches were: ``warm``, ``l2-flush``, ``llc-flush``, or ``unknown`` for an imported LUT (a
    legacy pickle does not say how it was timed)."""
    if sweep.backend == "legacy":
        return "unknown"
    return "llc-flush" if sweep.llc_flush else "l2-flush" if sweep.l2_flush else "warm"


STALLED_AFTER_S = 600.0  # a running sweep that stored nothing for this long is shown as stalled


def _status_now(sweep: Sweep, last_row: datetime | None, now: datetime) -> str:
    """A sweep's status, with "running" qualified when nothing was stored for a while: a sweep killed with
    SIGKILL (or a lost machine) never gets to write "interrupted"."""
    if sweep.status != "running":
        return sweep.status
    times = [as_utc(t) for t in (sweep.updated_at, last_row) if t is not None]
    idle = (now - max(times)).total_seconds() if times else 0.0
    if idle < STALLED_AFTER_S:
        return "running"
    return f"stalled: no row for {_duration(idle)} (killed? rerun to resume)"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def sweep_provenance(sweep: Sweep) -> dict[str, Any]:
    """Where and how a sweep measured, as flat columns to repeat on each exported row: files from several
    machines can then be concatenated and still be told apart."""
    hw = sweep.hardware
    return {
        "sweep": sweep.id, "hardware": hw.name, "fingerprint": hw.fingerprint, "backend": sweep.backend,
        "timer": sweep.timer, "warmup": sweep.warmup, "repeats": sweep.repeats, "cache": cache_label(sweep),
        "threads": sweep.num_threads, "cudnn_benchmark": sweep.cudnn_benchmark,
        "cudnn_deterministic": sweep.cudnn_deterministic, "allow_tf32": sweep.allow_tf32,
        "torch": hw.torch_version, "cuda": hw.cuda_version, "cudnn": hw.cudnn_version, "driver": hw.driver_version,
        "latlab": sweep.git_sha,
    }


def sweep_caption(sweep: Sweep) -> str:
    """Where and how a sweep measured, in one line: hardware, software, backend and timing protocol, commit."""
    hw = sweep.hardware
    software = ", ".join(f"{name} {v}" for name, v in (("torch", hw.torch_version), ("CUDA", hw.cuda_version),
                                                       ("cuDNN", hw.cudnn_version), ("driver", hw.driver_version))
                         if v)
    cache = {"warm": "warm cache", "l2-flush": "L2 flushed", "llc-flush": "LLC flushed"}.get(cache_label(sweep),
                                                                                             "cache unknown")
    threads = f", {sweep.num_threads} thread{'s' * (sweep.num_threads != 1)}" if sweep.num_threads else ""
    flags = "".join(f", {text} {'on' if on else 'off'}" for text, on in (
        ("cuDNN autotune", sweep.cudnn_benchmark), ("cuDNN deterministic", sweep.cudnn_deterministic),
        ("TF32", sweep.allow_tf32)) if on is not None)
    return (f"sweep {sweep.id} on {hw.name} ({software}); {sweep.backend}: timer {sweep.timer}, {sweep.warmup} "
            f"warm-up, up to {sweep.repeats} samples, {cache}{threads}{flags}; latlab {sweep.git_sha or '?'}")


def family_summaries(session: Session, sweep_id: int) -> list[dict[str, Any]]:
    """Per shape family: configurations ok/failed, channel ranges and latency range; per family and ``setting``
    (batch, dtype, layout, op) when the sweep holds more than one."""
    stats: dict[tuple[str, tuple], dict[str, Any]] = defaultdict(
        lambda: {"ok": 0, "failed": 0, "cin": set(), "cout": set(), "min_ms": None, "max_ms": None, "rel_iqr": []}
    )
    columns = (Measurement.family, Measurement.batch, Measurement.dtype, Measurement.layout, Measurement.op,
               Measurement.cin, Measurement.cout, Measurement.status, Measurement.median_ms,
               Measurement.iqr_ms)  # plain rows, not ORM objects: 96k rows in a fraction of the time
    for family, *setting, cin, cout, status, median_ms, iqr_ms in session.execute(sweep_rows(sweep_id, *columns)):
        s = stats[family, tuple(setting)]
        s["cin"].add(cin)
        s["cout"].add(cout)
        if status != "ok" or median_ms is None:
            s["failed"] += 1
            continue
        s["ok"] += 1
        s["min_ms"] = median_ms if s["min_ms"] is None else min(s["min_ms"], median_ms)
        s["max_ms"] = median_ms if s["max_ms"] is None else max(s["max_ms"], median_ms)
        if iqr_ms is not None and median_ms > 0:
            s["rel_iqr"].append(iqr_ms / median_ms)
    rows = []
    def order(key: str) -> tuple:  # large feature maps (early layers) first
        f = ConvFamily.from_key(key)
        return (-f.in_h, -f.in_w, f.kernel_h, f.kernel_w, f.stride_h, key)

    several = len({setting for _, setting in stats}) > 1
    for (fam, setting), s in sorted(stats.items(), key=lambda kv: (order(kv[0][0]), kv[0][1])):
        rel = sorted(s["rel_iqr"])
        rows.append({
            "family": fam, **({"setting": setting_label(*setting)} if several else {}), "ok": s["ok"],
            "failed": s["failed"],
            "cin": f"{min(s['cin'])}..{max(s['cin'])} ({len(s['cin'])})",
            "cout": f"{min(s['cout'])}..{max(s['cout'])} ({len(s['cout'])})",
            "min_ms": s["min_ms"], "max_ms": s["max_ms"],
            "median_rel_iqr": rel[len(rel) // 2] if rel else None,
        })
    return rows


def record_model_measurement(session: Session, hardware: Hardware, **values: Any) -> ModelMeasurement:
    """Store one whole-network latency row."""
    row = ModelMeasurement(hardware_id=hardware.id, **values)
    session.add(row)
    session.flush()
    return row
