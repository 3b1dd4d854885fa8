"""The request log keeps bodies and answers of routes and keys with `log_payloads: true`.

Revision ID: 0003_request_payloads
Revises: 0002_ledger_and_request_log
Create Date: 2026-12-07

Hand-written: a revision freezes the schema of its day (never import
gateway.records.tables here).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_request_payloads"
down_revision: str | Sequence[str] | None = "0002_ledger_and_request_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_keys") as table:
        table.add_column(
            sa.Column("log_payloads", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("gateway_requests") as table:
        table.add_column(sa.Column("request_payload", sa.Text(), nullable=True))
        table.add_column(sa.Column("response_payload", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateway_requests") as table:
        table.drop_column("response_payload")
        table.drop_column("request_payload")
    with op.batch_alter_table("gateway_keys") as table:
        table.drop_column("log_payloads")
