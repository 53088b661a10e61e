"""Databases made while revision 0005 added ``cold_weights``: rename it to ``llc_flush``.

Revision 0005 first added the column as ``cold_weights`` and was later edited in place to add ``llc_flush``
(the same flag, renamed), so a database upgraded by the first 0005 reports revision 0005 without the column
latlab reads. This revision renames it there and does nothing elsewhere.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sweeps")}
    if "cold_weights" in columns and "llc_flush" not in columns:
        with op.batch_alter_table("sweeps") as batch:
            batch.alter_column("cold_weights", new_column_name="llc_flush", existing_type=sa.Boolean())


def downgrade() -> None:
    """Nothing to undo: 0005 as it stands holds ``llc_flush``."""
