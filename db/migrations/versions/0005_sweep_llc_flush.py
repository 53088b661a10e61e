"""Sweeps record the llc_flush timing-protocol flag.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("llc_flush", sa.Boolean()))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("llc_flush")
