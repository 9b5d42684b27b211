"""saved state on vms; snapshots table

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("saved_state", sa.Text))
        batch.add_column(sa.Column("saved_running", sa.Boolean))
        batch.add_column(sa.Column("current_snapshot", sa.String(64)))
    op.create_table(
        "snapshots",
        sa.Column("vm", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("parent", sa.String(64)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("memory", sa.Boolean, nullable=False),
        sa.Column("running", sa.Boolean, nullable=False),
        sa.Column("vm_state", sa.String(16), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("current_snapshot")
        batch.drop_column("saved_running")
        batch.drop_column("saved_state")
