"""adapters bound to an LLM base: "" the base model (every adapter so far), else the name
of a generate entry of `models:` that takes adapters

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("base", sa.String(length=64), nullable=False, server_default=""))


def downgrade() -> None:
    # SQLite's own DROP COLUMN (3.35+), not batch mode: batch mode rebuilds `adapters`
    # (copy, drop, rename), and dropping it cascades to `adapter_versions`, emptying it.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE adapters DROP COLUMN base")
    else:
        op.drop_column("adapters", "base")
