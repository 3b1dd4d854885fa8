"""Stored Responses (`POST /v1/responses` with `store`): the conversation state that
`previous_response_id` continues, and `GET /v1/responses/{id}` reads.

Revision ID: 0004_stored_responses
Revises: 0003_request_payloads
Create Date: 2026-12-08

Hand-written: a revision freezes the schema of its day (never import
gateway.records.tables here).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_stored_responses"
down_revision: str | Sequence[str] | None = "0003_request_payloads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("previous_response_id", sa.String(64), nullable=True),
        sa.Column("input_items", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
    )
    op.create_index("gateway_responses_created_at", "gateway_responses", ["created_at"])


def downgrade() -> None:
    op.drop_index("gateway_responses_created_at", table_name="gateway_responses")
    op.drop_table("gateway_responses")
