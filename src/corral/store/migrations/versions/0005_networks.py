"""virtual networks: networks, routers and their legs, port forwards, firewall rules and the
records of every host object they are made of

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("isolated", sa.Boolean, nullable=False),
        sa.Column("policy", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "routers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "router_legs",
        sa.Column("network", sa.String(64), primary_key=True),
        sa.Column("router", sa.String(64), nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
    )
    op.create_table(
        "forwards",
        sa.Column("proto", sa.String(4), primary_key=True),
        sa.Column("host_port", sa.Integer, primary_key=True),
        sa.Column("router", sa.String(64), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("ip", sa.String(15), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
    )
    op.create_table(
        "firewall_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("network", sa.String(64)),
        sa.Column("vm", sa.String(64)),
        sa.Column("proto", sa.String(4), nullable=False),
        sa.Column("port", sa.Integer),
        sa.Column("source", sa.String(18), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "net_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(140), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("netns", sa.String(16)),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("net_records", "firewall_rules", "forwards", "router_legs", "routers",
                  "networks"):
        op.drop_table(table)
