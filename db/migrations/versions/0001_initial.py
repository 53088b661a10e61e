"""Initial LUT schema: hardware, sweeps, measurements.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hardware",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("gpu_uuid", sa.String(64)),
        sa.Column("driver_version", sa.String(64)),
        sa.Column("cuda_version", sa.String(32)),
        sa.Column("cudnn_version", sa.String(32)),
        sa.Column("sm_count", sa.Integer()),
        sa.Column("gpu_memory_mb", sa.Integer()),
        sa.Column("sm_clock_max_mhz", sa.Integer()),
        sa.Column("mem_clock_max_mhz", sa.Integer()),
        sa.Column("compute_capability", sa.String(16)),
        sa.Column("cpu_model", sa.String(255)),
        sa.Column("cpu_cores", sa.Integer()),
        sa.Column("cpu_threads", sa.Integer()),
        sa.Column("memory_mb", sa.Integer()),
        sa.Column("torch_version", sa.String(64)),
        sa.Column("torchvision_version", sa.String(64)),
        sa.Column("python_version", sa.String(32)),
        sa.Column("hostname", sa.String(255)),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hardware_id", sa.Integer(), sa.ForeignKey("hardware.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("protocol_hash", sa.String(64), nullable=False),
        sa.Column("warmup", sa.Integer()),
        sa.Column("repeats", sa.Integer()),
        sa.Column("min_repeats", sa.Integer()),
        sa.Column("max_rel_iqr", sa.Float()),
        sa.Column("timer", sa.String(32), nullable=False),
        sa.Column("cudnn_benchmark", sa.Boolean()),
        sa.Column("cudnn_deterministic", sa.Boolean()),
        sa.Column("allow_tf32", sa.Boolean()),
        sa.Column("l2_flush", sa.Boolean()),
        sa.Column("num_threads", sa.Integer()),
        sa.Column("seed", sa.Integer()),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("git_sha", sa.String(64)),
        sa.Column("command", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("hardware_id", "protocol_hash", "name", name="uq_sweep_identity"),
    )
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sweep_id", sa.Integer(), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("family", sa.String(80), nullable=False),
        *[sa.Column(c, sa.Integer(), nullable=False) for c in (
            "in_h", "in_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h",
            "dil_w", "groups")],
        sa.Column("depthwise", sa.Boolean(), nullable=False),
        sa.Column("cin", sa.Integer(), nullable=False),
        sa.Column("cout", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("layout", sa.String(8), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("median_ms", sa.Float()),
        sa.Column("iqr_ms", sa.Float()),
        sa.Column("mean_ms", sa.Float()),
        sa.Column("min_ms", sa.Float()),
        sa.Column("n", sa.Integer()),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("sweep_id", "family", "cin", "cout", "batch", "dtype", "layout", "op",
                            name="uq_measurement_key"),
    )
    op.create_index("ix_measurements_lookup", "measurements", ["sweep_id", "family", "cin", "cout"])


def downgrade() -> None:
    op.drop_index("ix_measurements_lookup", table_name="measurements")
    op.drop_table("measurements")
    op.drop_table("sweeps")
    op.drop_table("hardware")
