"""tenant uids (never reused), usage keyed by them, revoked keys, released template versions

Revision ID: 0003
Revises: 0002
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_USAGE_COLUMNS = "tenant, alias, template, hour, requests, prompt_tokens, completion_tokens"


def upgrade() -> None:
    # Only in-place changes to `tenants` and `template_versions`: rebuilding a table
    # would drop it, and SQLite's DROP TABLE runs the ON DELETE CASCADE of its children
    # (keys, aliases) when foreign keys are enforced, as they are here.
    op.add_column("tenants", sa.Column("uid", sa.String(length=32), nullable=True))
    connection = op.get_bind()
    for (name,) in connection.execute(sa.text("SELECT name FROM tenants")).all():
        connection.execute(
            sa.text("UPDATE tenants SET uid = :uid WHERE name = :name"), {"uid": secrets.token_hex(8), "name": name}
        )
    op.create_index("ix_tenants_uid", "tenants", ["uid"], unique=True)
    if connection.dialect.name != "sqlite":  # in place there; SQLite would rebuild the table
        op.alter_column("tenants", "uid", existing_type=sa.String(length=32), nullable=False)

    # Usage rows belong to one tenant incarnation: the uid joins the key. Copy the rows
    # into a table with the new key (SQLite cannot alter a key); rows of tenants that no
    # longer exist keep an empty uid, which no live tenant has.
    _usage_table("usage_by_uid", ["tenant", "tenant_uid", "alias", "template", "hour"])
    op.execute(
        f"INSERT INTO usage_by_uid (tenant_uid, {_USAGE_COLUMNS})"
        f" SELECT COALESCE((SELECT uid FROM tenants WHERE tenants.name = usage.tenant), ''), {_USAGE_COLUMNS}"
        " FROM usage"
    )
    op.drop_table("usage")
    op.rename_table("usage_by_uid", "usage")

    op.create_table(
        "revoked_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    op.create_index("ix_revoked_keys_key_id", "revoked_keys", ["key_id"])

    op.add_column("template_versions", sa.Column("released", sa.Boolean(), nullable=False, server_default=sa.false()))
    # What was active is released; older history is unknown, so older versions count as staged.
    op.execute(
        "UPDATE template_versions SET released = TRUE WHERE version ="
        " (SELECT active_version FROM templates WHERE templates.id = template_versions.template_id)"
    )


def _usage_table(name: str, key: list[str]) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
    ]
    if "tenant_uid" in key:
        columns.append(sa.Column("tenant_uid", sa.String(length=32), nullable=False, server_default=""))
    op.create_table(name, *columns, sa.PrimaryKeyConstraint(*key, name=f"{name}_pkey"))


def downgrade() -> None:
    op.drop_column("template_versions", "released")
    op.drop_index("ix_revoked_keys_key_id", "revoked_keys")
    op.drop_table("revoked_keys")
    _usage_table("usage_by_name", ["tenant", "alias", "template", "hour"])
    op.execute(
        f"INSERT INTO usage_by_name ({_USAGE_COLUMNS}) SELECT tenant, alias, template, hour, SUM(requests),"
        " SUM(prompt_tokens), SUM(completion_tokens) FROM usage GROUP BY tenant, alias, template, hour"
    )
    op.drop_table("usage")
    op.rename_table("usage_by_name", "usage")
    op.drop_index("ix_tenants_uid", "tenants")
    op.drop_column("tenants", "uid")
