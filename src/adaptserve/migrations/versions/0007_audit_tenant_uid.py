"""audit log keyed by the tenant's uid: a tenant created again under a deleted one's name
reads none of the old one's entries

Existing rows get the uid of the tenant of that name that existed when they were
written (created at or before the entry); rows older than it (a deleted namesake's)
and rows of no tenant keep "", which no tenant admin's listing matches.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("tenant_uid", sa.String(length=32), nullable=False, server_default=""))
    op.create_index("ix_audit_log_tenant_uid", "audit_log", ["tenant_uid"])
    op.execute(
        "UPDATE audit_log SET tenant_uid = COALESCE("
        "(SELECT tenants.uid FROM tenants WHERE tenants.name = audit_log.tenant"
        " AND tenants.created_at <= audit_log.at), '') WHERE audit_log.tenant <> ''"
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant_uid", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("tenant_uid")
