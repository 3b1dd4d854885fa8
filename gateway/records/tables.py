"""The system of record's tables, in SQLAlchemy Core (no ORM): one `MetaData`, read by
the writers, the readers and the migrations (`gateway/records/migrations`, whose
revisions must produce exactly this; a test compares them).

Money is `NUMERIC(24, 12)`: exact decimals, never floats. Times are Unix seconds in
`DOUBLE PRECISION` columns (the same in SQLite and PostgreSQL; Grafana's
`$__unixEpochFilter` reads them), days are `YYYY-MM-DD` text in UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    false,
)

MONEY = Numeric(24, 12, asdecimal=True)

metadata = MetaData()

# Named counters: `keys_version` goes up by one with every change to a key (runtime or a
# revoked config key), in the same transaction; replicas poll it and reload on change.
# It never goes back, whatever happens to Redis.
state = Table(
    "gateway_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Runtime keys (created through the admin API). Secrets are never stored: `digest` is
# the SHA-256 of the current secret, `old_digest` the previous one during a rotation's
# grace period (until `old_until`).
keys = Table(
    "gateway_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("team", String(200), nullable=True),
    Column("routes", Text, nullable=True),  # JSON list; NULL = every route
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("budget_usd", MONEY, nullable=True),
    Column("budget_period", String(16), nullable=False),
    Column("labels", Text, nullable=False),  # JSON object
    Column("max_concurrent", Integer, nullable=True),
    Column("log_payloads", Boolean, nullable=False, server_default=false()),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    Column("digest", String(64), nullable=False),
    Column("old_digest", String(64), nullable=False),
    Column("old_until", Double, nullable=False),
    Column("version", BigInteger, nullable=False),  # keys_version of its last change
)
# At most one live key per name (a revoked key frees its name).
Index(
    "gateway_keys_live_name",
    keys.c.name,
    unique=True,
    postgresql_where=keys.c.revoked_at.is_(None),
    sqlite_where=keys.c.revoked_at.is_(None),
)
Index("gateway_keys_digest", keys.c.digest)

# Config keys revoked at run time, by digest (the config file still lists them).
revoked_config_keys = Table(
    "gateway_revoked_config_keys",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("revoked_at", Double, nullable=False),
    Column("version", BigInteger, nullable=False),
)

# The spend ledger: one row per UTC day, key, team, route, deployment and whether the
# usage was estimated. Written only together with the request-log rows it sums, in one
# transaction, and only for rows that were new: a retried batch never bills twice.
# `team` and `deployment` are '' when there is none (a primary key has no NULLs).
spend = Table(
    "gateway_spend_daily",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("key_id", String(64), primary_key=True),
    Column("team", String(200), primary_key=True),
    Column("route", String(200), primary_key=True),
    Column("deployment", String(200), primary_key=True),
    Column("estimated", Boolean, primary_key=True),
    Column("key_name", String(200), nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_usd", MONEY, nullable=False),
)
Index("gateway_spend_daily_key", spend.c.key_id, spend.c.day)

# The request log: one row per request the gateway answered (or failed to). `id` is
# the database's own (SQLite's rowid: no index of its own to write); `request_id` is
# what the client saw in x-request-id (a client may reuse one). Batches, not rows, are
# what makes writing idempotent (`record_batches`).
ROW_ID = BigInteger().with_variant(Integer, "sqlite")
requests = Table(
    "gateway_requests",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("ts", Double, nullable=False),  # when it started, Unix seconds
    Column("day", String(10), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("key_id", String(64), nullable=True),
    Column("key_name", String(200), nullable=True),
    Column("team", String(200), nullable=True),
    Column("route", String(200), nullable=True),
    Column("policy", String(64), nullable=True),
    Column("deployment", String(200), nullable=True),
    Column("provider", String(200), nullable=True),
    Column("model", String(200), nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("failed_attempts", Text, nullable=True),  # JSON list of "deployment: outcome"
    Column("stream", Boolean, nullable=False),
    Column("stream_outcome", String(32), nullable=True),
    Column("cache", String(16), nullable=True),
    Column("input_tokens", BigInteger, nullable=True),
    Column("cached_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("usage_estimated", Boolean, nullable=True),
    # What the headers and metrics said (a float); the ledger holds the exact decimal sums.
    Column("cost_usd", Double, nullable=True),
    Column("latency_ms", Double, nullable=False),
    Column("ttft_ms", Double, nullable=True),
    # Only for a route with `log_payloads: true`, secrets redacted; emptied after
    # `database.payload_retention_days` (the row stays).
    Column("request_payload", Text, nullable=True),
    Column("response_payload", Text, nullable=True),
)
Index("gateway_requests_request_id", requests.c.request_id)
Index("gateway_requests_ts", requests.c.ts)

# Batches of request rows written (by the writers, gateway.records.writer): a batch's id
# is drawn once and inserted in the same transaction as its rows and ledger sums, so a
# batch retried after a commit whose answer was lost finds its id and writes nothing.
record_batches = Table(
    "gateway_record_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("written_at", Double, nullable=False),
)
Index("gateway_record_batches_written_at", record_batches.c.written_at)

# Stored Responses (`POST /v1/responses` with `store`): one row per response, written
# before its answer goes out. `tenant` scopes every read (`Caller.tenant`: the key's team,
# else the key); `input_items` is this request's input only (JSON list), `response` the
# Response object (JSON); a conversation is the chain of `previous_response_id`s.
# Deleted after `database.response_retention_days`.
responses = Table(
    "gateway_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("previous_response_id", String(64), nullable=True),
    Column("input_items", Text, nullable=False),
    Column("response", Text, nullable=False),
)
Index("gateway_responses_created_at", responses.c.created_at)
