"""quota shares: each gateway replica's live quota counts per tenant

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_shares",
        sa.Column("tenant_uid", sa.String(length=32), nullable=False),
        sa.Column("replica", sa.String(length=32), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_uid", "replica"),
    )


def downgrade() -> None:
    op.drop_table("quota_shares")
