"""projects and API tokens: every VM, disk, network, router and event belongs to a project
(those that exist go to ``default``)

Revision ID: 0006
Revises: 0005
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OWNED = ("vms", "disks", "networks", "routers", "events")


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("max_vms", sa.Integer),
        sa.Column("max_cpus", sa.Integer),
        sa.Column("max_memory", sa.Integer),
        sa.Column("max_disk", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.bulk_insert(projects, [{"name": "default", "created_at": time.time()}])
    op.create_table(
        "tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
    )
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project", sa.String(64), nullable=False,
                                       server_default="default"))
    op.create_index("ix_events_project", "events", ["project"])


def downgrade() -> None:
    op.drop_index("ix_events_project", "events")
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project")
    op.drop_table("tokens")
    op.drop_table("projects")
