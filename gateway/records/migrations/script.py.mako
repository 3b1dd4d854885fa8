<%!
    def q(value):
        # Double quotes, as ruff format writes them.
        return repr(value).replace("'", '"')
%>"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Hand-written: a revision freezes the schema of its day (never import
gateway.records.tables here), and tests/records/test_migrations.py checks that the
revisions together produce exactly `tables.metadata`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${q(up_revision)}
down_revision: str | Sequence[str] | None = ${q(down_revision)}
branch_labels: str | Sequence[str] | None = ${q(branch_labels)}
depends_on: str | Sequence[str] | None = ${q(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
