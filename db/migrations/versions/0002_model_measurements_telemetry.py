"""Whole-model measurements and per-measurement GPU telemetry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TELEMETRY = (
    ("sm_clock_mhz", sa.Integer()),
    ("mem_clock_mhz", sa.Integer()),
    ("temperature_c", sa.Float()),
    ("power_w", sa.Float()),
    ("throttle_reasons", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        for name, type_ in _TELEMETRY:
            batch.add_column(sa.Column(name, type_))
    op.create_table(
        "model_measurements",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hardware_id", sa.Integer(), sa.ForeignKey("hardware.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("model_name", sa.String(255), nullable=False, index=True),
        sa.Column("variant", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("input_h", sa.Integer(), nullable=False),
        sa.Column("input_w", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("layout", sa.String(8), nullable=False),
        sa.Column("protocol", sa.JSON(), nullable=False),
        sa.Column("median_ms", sa.Float()),
        sa.Column("iqr_ms", sa.Float()),
        sa.Column("mean_ms", sa.Float()),
        sa.Column("min_ms", sa.Float()),
        sa.Column("n", sa.Integer()),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("telemetry", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_measurements")
    with op.batch_alter_table("measurements") as batch:
        for name, _ in reversed(_TELEMETRY):
            batch.drop_column(name)
