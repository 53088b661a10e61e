"""Fleet sweeps: workers and per-configuration work claims.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweep_workers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sweep_id", sa.Integer(), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("heartbeat_timeout_s", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("sweep_id", "worker_id", name="uq_sweep_worker"),
    )
    op.create_table(
        "sweep_claims",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sweep_id", sa.Integer(), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("config_key", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("sweep_id", "config_key", name="uq_sweep_claim"),
    )
    op.create_index("ix_sweep_claims_state", "sweep_claims", ["sweep_id", "state"])
    op.create_index("ix_sweep_claims_worker", "sweep_claims", ["sweep_id", "worker_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_sweep_claims_worker", table_name="sweep_claims")
    op.drop_index("ix_sweep_claims_state", table_name="sweep_claims")
    op.drop_table("sweep_claims")
    op.drop_table("sweep_workers")
