"""The spend ledger (per day, key, team, route, deployment) and the request log.

Revision ID: 0002_ledger_and_request_log
Revises: 0001_keys
Create Date: 2026-05-20

Hand-written: a revision freezes the schema of its day (never import
gateway.records.tables here), and tests/records/test_migrations.py checks that the
revisions together produce exactly `tables.metadata`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ledger_and_request_log"
down_revision: str | Sequence[str] | None = "0001_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(24, 12)


def upgrade() -> None:
    op.create_table(
        "gateway_spend_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(200), primary_key=True),
        sa.Column("route", sa.String(200), primary_key=True),
        sa.Column("deployment", sa.String(200), primary_key=True),
        sa.Column("estimated", sa.Boolean, primary_key=True),
        sa.Column("key_name", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
    )
    op.create_index("gateway_spend_daily_key", "gateway_spend_daily", ["key_id", "day"])
    op.create_table(
        "gateway_requests",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=True),
        sa.Column("team", sa.String(200), nullable=True),
        sa.Column("route", sa.String(200), nullable=True),
        sa.Column("policy", sa.String(64), nullable=True),
        sa.Column("deployment", sa.String(200), nullable=True),
        sa.Column("provider", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failed_attempts", sa.Text, nullable=True),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("stream_outcome", sa.String(32), nullable=True),
        sa.Column("cache", sa.String(16), nullable=True),
        sa.Column("input_tokens", sa.BigInteger, nullable=True),
        sa.Column("cached_tokens", sa.BigInteger, nullable=True),
        sa.Column("output_tokens", sa.BigInteger, nullable=True),
        sa.Column("usage_estimated", sa.Boolean, nullable=True),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("ttft_ms", sa.Double, nullable=True),
    )
    op.create_index("gateway_requests_request_id", "gateway_requests", ["request_id"])
    op.create_index("gateway_requests_ts", "gateway_requests", ["ts"])
    op.create_table(
        "gateway_record_batches",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("written_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("gateway_record_batches_written_at", "gateway_record_batches", ["written_at"])


def downgrade() -> None:
    op.drop_index("gateway_record_batches_written_at", table_name="gateway_record_batches")
    op.drop_table("gateway_record_batches")
    op.drop_index("gateway_requests_ts", table_name="gateway_requests")
    op.drop_index("gateway_requests_request_id", table_name="gateway_requests")
    op.drop_table("gateway_requests")
    op.drop_index("gateway_spend_daily_key", table_name="gateway_spend_daily")
    op.drop_table("gateway_spend_daily")
