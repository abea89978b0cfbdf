"""classifier heads and their versions, per owner (a tenant's uid, or "" for global)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("active_version", sa.String(length=32), nullable=True),
        sa.Column("previous_version", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "head_versions",
        sa.Column("head_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("embedding_model", sa.String(length=64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["head_id"], ["heads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("head_id", "version"),
    )
    op.create_index("ix_head_versions_digest", "head_versions", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_head_versions_digest", table_name="head_versions")
    op.drop_table("head_versions")
    op.drop_table("heads")
