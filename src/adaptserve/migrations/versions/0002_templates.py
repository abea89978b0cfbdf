"""templates, their versions and calibrations; usage per template

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
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "template_versions",
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("template_id", "version"),
    )
    op.create_table(
        "template_calibrations",
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("probs", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("template_id", "version", "model"),
    )
    # Usage gains a template dimension ("" for plain OpenAI calls) in its primary key:
    # copy the rows into a table with the new key (SQLite cannot alter a key).
    _usage_table("usage_next", ["tenant", "alias", "template", "hour"])
    op.execute(
        "INSERT INTO usage_next (tenant, alias, template, hour, requests, prompt_tokens, completion_tokens)"
        " SELECT tenant, alias, '', hour, requests, prompt_tokens, completion_tokens FROM usage"
    )
    op.drop_table("usage")
    op.rename_table("usage_next", "usage")


def _usage_table(name: str, key: list[str]) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
    ]
    if "template" in key:
        columns.append(sa.Column("template", sa.String(length=64), nullable=False, server_default=""))
    op.create_table(name, *columns, sa.PrimaryKeyConstraint(*key, name=f"{name}_pkey"))


def downgrade() -> None:
    _usage_table("usage_prev", ["tenant", "alias", "hour"])
    op.execute(
        "INSERT INTO usage_prev (tenant, alias, hour, requests, prompt_tokens, completion_tokens)"
        " SELECT tenant, alias, hour, requests, prompt_tokens, completion_tokens FROM usage WHERE template = ''"
    )
    op.drop_table("usage")
    op.rename_table("usage_prev", "usage")
    op.drop_table("template_calibrations")
    op.drop_table("template_versions")
    op.drop_table("templates")
