"""Cooldowns as operators see and end them: the entries `GET /admin/cooldowns` lists,
the clear `DELETE /admin/cooldowns` writes, and `gateway cooldowns` (which reads Redis
directly).

The state shared through Redis (written by `stats_sync` and by clears), every key with
the hash tag `{stats}`: one slot of a Redis Cluster, so that one script reads or writes
them together (a few small hashes, read once per `routing.stats_sync_interval_s`):

    gw:{stats}:cooldown  deployment -> the latest cooldown deadline a replica began (unix s)
    gw:{stats}:reason    deployment -> the outcome of the failure that began that cooldown
    gw:{stats}:cleared   deployment -> the time of the latest clear (unix s)

A clear records its time and deletes the deployment's deadline, in one script. A replica
publishes a cooldown only when it began it after the latest clear (its publish script
checks, atomically), and applies a clear newer than the last it saw at its next sync:
the clear reaches every replica within `routing.stats_sync_interval_s`, and no replica
that had not heard of it yet brings the old deadline back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from gateway import jsonutil
from gateway.config import Deployment, GatewayConfig, RedisConfig
from gateway.redis import make_redis
from gateway.routing.stats import StatsStore

STATS_TAG = "gw:{stats}:"
COOLDOWN_KEY = STATS_TAG + "cooldown"
REASON_KEY = STATS_TAG + "reason"
CLEARED_KEY = STATS_TAG + "cleared"
SHARED_KEYS = (COOLDOWN_KEY, REASON_KEY, CLEARED_KEY)

# KEYS = hashes, then sets. ARGV: 1 how many of KEYS are hashes. Returns each one's
# fields and values (a hash) or members (a set), flat: one consistent snapshot (a
# script runs alone), unlike reads apart, and in one slot unlike MULTI/EXEC in a
# cluster client.
READ_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  if i <= tonumber(ARGV[1]) then out[i] = redis.call('HGETALL', KEYS[i])
  else out[i] = redis.call('SMEMBERS', KEYS[i]) end
end
return out
"""

# KEYS = cooldown, reason, cleared; ARGV = deployment, deadline, began at, reason, ...
# A cooldown begun before the deployment's latest clear is the one the clear ended.
PUBLISH_SCRIPT = """
for i = 1, #ARGV, 4 do
  local d = ARGV[i]
  local cleared = tonumber(redis.call('HGET', KEYS[3], d) or '0')
  local current = tonumber(redis.call('HGET', KEYS[1], d) or '0')
  if tonumber(ARGV[i + 2]) > cleared and tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[1], d, ARGV[i + 1])
    if ARGV[i + 3] == '' then redis.call('HDEL', KEYS[2], d)
    else redis.call('HSET', KEYS[2], d, ARGV[i + 3]) end
  end
end
return 1
"""

# KEYS = cooldown, reason, cleared; ARGV = time of the clear, deployment, deployment, ...
# Returns what it removed: deployment, deadline, reason ('' when none), ...
CLEAR_SCRIPT = """
local removed = {}
for i = 2, #ARGV do
  local d = ARGV[i]
  local deadline = redis.call('HGET', KEYS[1], d)
  if deadline then
    local reason = redis.call('HGET', KEYS[2], d) or ''
    table.insert(removed, d); table.insert(removed, deadline); table.insert(removed, reason)
  end
  local seen = tonumber(redis.call('HGET', KEYS[3], d) or '0')
  if tonumber(ARGV[1]) > seen then redis.call('HSET', KEYS[3], d, ARGV[1]) end
  redis.call('HDEL', KEYS[1], d)
  redis.call('HDEL', KEYS[2], d)
end
return removed
"""


@dataclass(frozen=True, slots=True)
class SharedCooldowns:
    """One consistent read of the shared cooldown state."""

    deadlines: dict[str, float]
    reasons: dict[str, str]
    cleared: dict[str, float]

    @classmethod
    def decode(
        cls, deadlines: list[bytes], reasons: list[bytes], cleared: list[bytes]
    ) -> SharedCooldowns:
        """From READ_SCRIPT's flat field, value lists."""
        return cls(
            {k.decode(): float(v) for k, v in pairs(deadlines)},
            {k.decode(): v.decode() for k, v in pairs(reasons)},
            {k.decode(): float(v) for k, v in pairs(cleared)},
        )


def pairs(flat: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(field, value) of an HGETALL reply read in a script (a flat list)."""
    return zip(flat[::2], flat[1::2], strict=True)


async def read_snapshot(client: Any, sets: Sequence[str] = ()) -> list[list[bytes]]:
    """The shared hashes, then `sets`' members, read in one script (one snapshot)."""
    keys = [*SHARED_KEYS, *sets]
    result: list[list[bytes]] = await client.eval(READ_SCRIPT, len(keys), *keys, len(SHARED_KEYS))
    return result


async def read_shared(client: Any) -> SharedCooldowns:
    deadlines, reasons, cleared = await read_snapshot(client)
    return SharedCooldowns.decode(deadlines, reasons, cleared)


async def clear_shared(
    client: Any, deployment_ids: Sequence[str], at: float
) -> dict[str, tuple[float, str | None]]:
    """Writes a clear made at `at`; returns the shared deadlines (and reasons) it removed."""
    if not deployment_ids:
        return {}
    flat = await client.eval(
        CLEAR_SCRIPT, len(SHARED_KEYS), *SHARED_KEYS, repr(at), *deployment_ids
    )
    return {
        flat[i].decode(): (float(flat[i + 1]), flat[i + 2].decode() or None)
        for i in range(0, len(flat), 3)
    }


def cooldown_entry(
    deployment_id: str,
    provider: str | None,
    until: float,
    now: float,
    consecutive_failures: int | None,
    reason: str | None,
) -> dict[str, Any]:
    """One deployment as `GET /admin/cooldowns` lists it."""
    return {
        "object": "gateway.cooldown",
        "deployment": deployment_id,
        "provider": provider,
        "state": "cooling_down" if until > now else "half_open",
        "cooling_down_until": until,
        "seconds_left": round(max(0.0, until - now), 3),
        "consecutive_failures": consecutive_failures,
        "reason": reason,
    }


def local_cooldowns(
    stats: StatsStore, deployments: Mapping[str, Deployment], now: float
) -> list[dict[str, Any]]:
    """This process's view (its own cooldowns and those synced from other replicas) of
    the configured deployments cooling down or half-open."""
    return [
        cooldown_entry(
            d, deployments[d].provider, s.cooldown_until, now, s.consecutive_failures, s.reason
        )
        for d, s in sorted(stats.breakers(now), key=lambda item: item[0])
        if d in deployments
    ]


def run_cooldowns(
    config: GatewayConfig,
    deployments: Mapping[str, Deployment],
    clear: str | None,
    clear_all: bool,
    as_json: bool,
) -> int:
    """`gateway cooldowns`: the shared cooldowns, read from (and cleared in) Redis."""
    if config.redis is None:
        sys.stderr.write(
            "gateway cooldowns reads the cooldowns the replicas share in Redis, and this "
            "config has no `redis:` section: each gateway process keeps its own. Ask the "
            "gateway instead: GET /admin/cooldowns, DELETE /admin/cooldowns[/{deployment}] "
            "(admin key).\n"
        )
        return 2
    try:
        return asyncio.run(_run(config.redis, deployments, clear, clear_all, as_json))
    except (RedisError, OSError) as exc:
        sys.stderr.write(f"cannot reach Redis: {type(exc).__name__}\n")
        return 1


async def _run(
    redis: RedisConfig,
    deployments: Mapping[str, Deployment],
    clear: str | None,
    clear_all: bool,
    as_json: bool,
) -> int:
    client = make_redis(redis)
    try:
        shared = await read_shared(client)
        now = time.time()
        known = set(deployments) | set(shared.deadlines)
        if clear is not None and clear not in known:
            sys.stderr.write(f"no deployment with id '{clear}' (see `gateway check-config`)\n")
            return 2
        if clear is None and not clear_all:
            _show(_shared_entries(shared.deadlines, shared.reasons, deployments, now), as_json)
            return 0
        # Every deployment of this config, as the admin endpoint does.
        removed = await clear_shared(client, [clear] if clear else sorted(deployments), now)
    finally:
        await client.aclose()
    deadlines = {d: deadline for d, (deadline, _) in removed.items()}
    reasons = {d: reason for d, (_, reason) in removed.items() if reason}
    entries = _shared_entries(deadlines, reasons, deployments, now)
    if as_json:
        _show(entries, as_json)
    else:
        names = clear or "every deployment of this config"
        sys.stdout.write(
            f"cleared {names}: replicas sharing this Redis end their cooldowns within "
            f"routing.stats_sync_interval_s.\n{render_table(entries)}\n"
        )
    return 0


def _shared_entries(
    deadlines: Mapping[str, float],
    reasons: Mapping[str, str | None],
    deployments: Mapping[str, Deployment],
    now: float,
) -> list[dict[str, Any]]:
    """Shared deadlines still ahead; the failure streak is each process's own (null)."""
    return [
        cooldown_entry(d, _provider(d, deployments), until, now, None, reasons.get(d))
        for d, until in sorted(deadlines.items())
        if until > now
    ]


def _provider(deployment_id: str, deployments: Mapping[str, Deployment]) -> str | None:
    d = deployments.get(deployment_id)
    return d.provider if d is not None else None


def _show(entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        body = {"object": "list", "data": entries}
        sys.stdout.write(jsonutil.dumps(body).decode() + "\n")
    else:
        sys.stdout.write(render_table(entries) + "\n")


def render_table(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "no deployment is cooling down"
    header = ("deployment", "provider", "state", "seconds_left", "until (UTC)", "reason")
    rows = [
        (
            str(e["deployment"]),
            str(e["provider"] or "-"),
            str(e["state"]),
            f"{e['seconds_left']:.1f}",
            datetime.fromtimestamp(e["cooling_down_until"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(e["reason"] or "-"),
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )
