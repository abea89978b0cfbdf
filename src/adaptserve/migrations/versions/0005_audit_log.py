"""audit log: every admin mutation and attempt; key roles (tenant admin keys); adapter owners

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
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("action", sa.String(length=160), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_tenant", "audit_log", ["tenant"])
    op.add_column("api_keys", sa.Column("role", sa.String(length=16), nullable=False, server_default="api"))
    op.add_column("adapters", sa.Column("owner", sa.String(length=32), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("adapters", "owner")
    op.drop_column("api_keys", "role")
    op.drop_table("audit_log")
