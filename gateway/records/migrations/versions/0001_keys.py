"""Keys: runtime keys, config keys revoked at run time, and the counter replicas poll.

Revision ID: 0001_keys
Revises:
Create Date: 2026-05-20

Hand-written: a revision freezes the schema of its day (never import
gateway.records.tables here), and tests/records/test_migrations.py checks that the
revisions together produce exactly `tables.metadata`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_keys"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(24, 12)


def upgrade() -> None:
    op.create_table(
        "gateway_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "gateway_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("team", sa.String(200), nullable=True),
        sa.Column("routes", sa.Text, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("budget_usd", MONEY, nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("max_concurrent", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double, nullable=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("old_digest", sa.String(64), nullable=False),
        sa.Column("old_until", sa.Double, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    # At most one live key per name (a revoked key frees its name).
    live = sa.text("revoked_at IS NULL")
    op.create_index(
        "gateway_keys_live_name",
        "gateway_keys",
        ["name"],
        unique=True,
        postgresql_where=live,
        sqlite_where=live,
    )
    op.create_index("gateway_keys_digest", "gateway_keys", ["digest"])
    op.create_table(
        "gateway_revoked_config_keys",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("revoked_at", sa.Double, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gateway_revoked_config_keys")
    op.drop_index("gateway_keys_digest", table_name="gateway_keys")
    op.drop_index("gateway_keys_live_name", table_name="gateway_keys")
    op.drop_table("gateway_keys")
    op.drop_table("gateway_state")
