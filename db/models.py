"""SQLAlchemy ORM models of the LUT database (the schema at the newest migration).

``hardware``  one row per device + software stack (fingerprint unique)
``sweeps``    one row per (hardware, timing protocol, name): how the numbers were taken
``measurements``  one row per measured configuration (unique per sweep and LUT key)
``model_measurements``  whole-network latencies (``latlab measure``)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MEASUREMENT_STATUSES = ("ok", "oom", "error")
SWEEP_STATUSES = ("running", "complete", "interrupted", "imported", "sampled")  # sampled: an adaptive sweep


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """``dt`` in UTC: SQLite hands timestamps back without a zone (they are stored in UTC), PostgreSQL in the
    server's zone."""
    return dt.astimezone(UTC) if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


NAME_LENGTH = 255  # hardware, sweep, stored-model, measured-model and variant names (String columns)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Hardware(Base):
    """A hardware profile: the device and the software stack that produced the numbers."""

    __tablename__ = "hardware"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    gpu_uuid: Mapped[str | None] = mapped_column(String(64))
    driver_version: Mapped[str | None] = mapped_column(String(64))
    cuda_version: Mapped[str | None] = mapped_column(String(32))
    cudnn_version: Mapped[str | None] = mapped_column(String(32))
    sm_count: Mapped[int | None] = mapped_column(Integer)
    gpu_memory_mb: Mapped[int | None] = mapped_column(Integer)
    sm_clock_max_mhz: Mapped[int | None] = mapped_column(Integer)
    mem_clock_max_mhz: Mapped[int | None] = mapped_column(Integer)
    compute_capability: Mapped[str | None] = mapped_column(String(16))
    cpu_model: Mapped[str | None] = mapped_column(String(255))
    cpu_cores: Mapped[int | None] = mapped_column(Integer)
    cpu_threads: Mapped[int | None] = mapped_column(Integer)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    torch_version: Mapped[str | None] = mapped_column(String(64))
    torchvision_version: Mapped[str | None] = mapped_column(String(64))
    python_version: Mapped[str | None] = mapped_column(String(32))
    hostname: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    sweeps: Mapped[list[Sweep]] = relationship(back_populates="hardware")


class Sweep(Base):
    """A timing protocol applied on one hardware profile; measurements hang off it."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("hardware_id", "protocol_hash", "name", name="uq_sweep_identity"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    hardware_id: Mapped[int] = mapped_column(ForeignKey("hardware.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    backend: Mapped[str] = mapped_column(String(32))
    protocol_hash: Mapped[str] = mapped_column(String(64))
    warmup: Mapped[int | None] = mapped_column(Integer)
    repeats: Mapped[int | None] = mapped_column(Integer)
    min_repeats: Mapped[int | None] = mapped_column(Integer)
    max_rel_iqr: Mapped[float | None] = mapped_column(Float)
    timer: Mapped[str] = mapped_column(String(32))
    cudnn_benchmark: Mapped[bool | None] = mapped_column(Boolean)
    cudnn_deterministic: Mapped[bool | None] = mapped_column(Boolean)
    allow_tf32: Mapped[bool | None] = mapped_column(Boolean)
    l2_flush: Mapped[bool | None] = mapped_column(Boolean)
    llc_flush: Mapped[bool | None] = mapped_column(Boolean)
    num_threads: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    git_sha: Mapped[str | None] = mapped_column(String(64))
    command: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    hardware: Mapped[Hardware] = relationship(back_populates="sweeps")
    measurements: Mapped[list[Measurement]] = relationship(back_populates="sweep")


class Measurement(Base):
    """One configuration's latency (ms per call of the whole batch), or why it failed."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint(
            "sweep_id", "family", "cin", "cout", "batch", "dtype", "layout", "op", name="uq_measurement_key"
        ),
        Index("ix_measurements_lookup", "sweep_id", "family", "cin", "cout"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(80))
    in_h: Mapped[int] = mapped_column(Integer)
    in_w: Mapped[int] = mapped_column(Integer)
    kernel_h: Mapped[int] = mapped_column(Integer)
    kernel_w: Mapped[int] = mapped_column(Integer)
    stride_h: Mapped[int] = mapped_column(Integer)
    stride_w: Mapped[int] = mapped_column(Integer)
    pad_h: Mapped[int] = mapped_column(Integer)
    pad_w: Mapped[int] = mapped_column(Integer)
    dil_h: Mapped[int] = mapped_column(Integer)
    dil_w: Mapped[int] = mapped_column(Integer)
    groups: Mapped[int] = mapped_column(Integer)
    depthwise: Mapped[bool] = mapped_column(Boolean)
    cin: Mapped[int] = mapped_column(Integer)
    cout: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    layout: Mapped[str] = mapped_column(String(8))
    op: Mapped[str] = mapped_column(String(16))
    median_ms: Mapped[float | None] = mapped_column(Float)
    iqr_ms: Mapped[float | None] = mapped_column(Float)
    mean_ms: Mapped[float | None] = mapped_column(Float)
    min_ms: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8), default="ok")
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # GPU telemetry read right after the configuration was timed (revision 0002).
    sm_clock_mhz: Mapped[int | None] = mapped_column(Integer)
    mem_clock_mhz: Mapped[int | None] = mapped_column(Integer)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    throttle_reasons: Mapped[int | None] = mapped_column(Integer)

    sweep: Mapped[Sweep] = relationship(back_populates="measurements")


class ModelMeasurement(Base):
    """Whole-network latency of a named architecture (optionally pruned) on one hardware profile."""

    __tablename__ = "model_measurements"

    id: Mapped[int] = mapped_column(primary_key=True)
    hardware_id: Mapped[int] = mapped_column(ForeignKey("hardware.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    variant: Mapped[str] = mapped_column(String(NAME_LENGTH), default="dense")
    backend: Mapped[str] = mapped_column(String(32))
    input_h: Mapped[int] = mapped_column(Integer)
    input_w: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    layout: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[dict[str, Any]] = mapped_column(default=dict)
    median_ms: Mapped[float | None] = mapped_column(Float)
    iqr_ms: Mapped[float | None] = mapped_column(Float)
    mean_ms: Mapped[float | None] = mapped_column(Float)
    min_ms: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8), default="ok")
    message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    telemetry: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    hardware: Mapped[Hardware] = relationship()


class StoredLatencyModel(Base):
    """A fitted latency model (kind, parameters, training snapshot, metrics), loadable by name."""

    __tablename__ = "latency_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict, deferred=True)  # large: read only to rebuild
    training: Mapped[dict[str, Any]] = mapped_column(default=dict)  # which measurements: sweep, filters, split
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    n_train: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    sweep: Mapped[Sweep | None] = relationship()


WORKER_STATES = ("running", "finished", "stopped", "dead")
CLAIM_STATES = ("pending", "claimed", "done", "failed")


class SweepWorker(Base):
    """One ``latlab profile --worker`` process taking part in a sweep (revision 0004)."""

    __tablename__ = "sweep_workers"
    __table_args__ = (UniqueConstraint("sweep_id", "worker_id", name="uq_sweep_worker"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="running")
    heartbeat_timeout_s: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SweepClaim(Base):
    """One configuration of a fleet sweep: pending, claimed by a worker, done or failed (revision 0004).

    ``config_key`` is :func:`db.claims.claim_key` of the configuration; ``attempts`` counts claims.
    """

    __tablename__ = "sweep_claims"
    __table_args__ = (
        UniqueConstraint("sweep_id", "config_key", name="uq_sweep_claim"),
        Index("ix_sweep_claims_state", "sweep_id", "state"),
        Index("ix_sweep_claims_worker", "sweep_id", "worker_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    config_key: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    worker_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
