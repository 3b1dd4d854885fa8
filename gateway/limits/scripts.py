"""The limit rules in Lua, so every worker and replica decides on the same counters.

One script per request checks and reserves together (rule 8); the rules are those
of `gateway.limits.store` (read its docstring first). Time comes from Redis (`TIME`),
so replicas with skewed clocks still share one window. Settlements and releases run
batched in one pipeline from a background writer; both are idempotent per request
id, because a write that timed out may have been applied (rule 7).

Keys (one Redis, not a Cluster: scripts touch keys of several slots):
    gw:lim:<key id>:req                sliding log of admitted requests (zset rid -> ms)
    gw:lim:<key id>:tok / :tokn        token reservations (zset rid -> ms; hash rid -> n, '#')
    gw:lim:<key id>:b:<period>         budget: spent, reserved (hash, USD)
    gw:lim:<key id>:b:<period>:resv    open reservations (hash rid -> USD held; the settle marker)
    gw:lim:<key id>:b:<period>:resvt   their admission times (zset), to give up on dead ones
    gw:lim:<key id>:b:<period>:lost    given-up reservations a late settle still bills (zset)
    gw:lim:done:<rid>                  settle marker of a write that reserved nothing (a tally
                                       of a limitless key's requests, or a request admitted
                                       during an outage), kept `_MARKER_TTL_S`: while a
                                       write may still be retried
    gw:usage:<YYYY-MM-DD>              usage report: [key id, team, route]|metric -> number
    gw:usage:keys                      key id -> key name, for the report
    gw:dep:<deployment id>:<unix s>    per-second deployment use: r (requests), t (tokens)
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from gateway import jsonutil
from gateway.limits.store import (
    Admission,
    Decision,
    Headroom,
    Release,
    Settlement,
    UsageRow,
    Write,
)
from gateway.redis import Command, SharedRedis

log = logging.getLogger("gateway")

USAGE_PREFIX = "gw:usage:"
USAGE_NAMES = "gw:usage:keys"
# A marker per request that reserved nothing: one Redis key each, so memory is the
# request rate times this. It need only outlive the retries of a write whose reply was
# lost (every 0.5 s while Redis is unreachable); a write retried after a longer outage
# than this may bill twice (at most the one batch that was in flight).
_MARKER_TTL_S = 300

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Give back what a reservation held; `reserved` is reset when nothing is held, so
# float rounding never accumulates. KEYS[b] budget, KEYS[r] reservations, KEYS[t] times.
_UNHOLD = """
local function unhold(b, r, t, rid, held)
  redis.call('HDEL', KEYS[r], rid)
  redis.call('ZREM', KEYS[t], rid)
  if tonumber(held) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[b], 'reserved', -tonumber(held)) end
  if redis.call('HLEN', KEYS[r]) == 0 and redis.call('HEXISTS', KEYS[b], 'reserved') == 1 then
    redis.call('HSET', KEYS[b], 'reserved', 0)
  end
end
"""

# KEYS: 1 request log, 2 token log, 3 token amounts, 4 budget, 5 reservations,
#       6 reservation times, 7 given-up reservations
# ARGV: 1 rid, 2 window ms, 3 rpm (0 none), 4 tpm (0 none), 5 tokens, 6 budget USD (-1 none),
#       7 cost USD, 8 reservation ttl ms, 9 period ttl s (0 keep), 10 the ledger's spend
#       of this key and period (USD), added to a budget counter this Redis has not seen
#       before (new, flushed, restarted, evicted): the 'seeded' field marks it
# Returns {0, 0, '', requests left, ms until one more frees, tokens left, ms until some
# free} admitted (-1: no such limit) | {1, wait ms, 'rpm'|'tpm'} | {2, 0, 'budget', used USD}
ADMIT = (
    _NOW
    + _UNHOLD
    + """
local rid, window = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, cost = tonumber(ARGV[6]), tonumber(ARGV[7])

local stale = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[8]), 'LIMIT', 0, 100)
for _, old in ipairs(stale) do
  unhold(4, 5, 6, old, redis.call('HGET', KEYS[5], old) or '0')
  redis.call('ZADD', KEYS[7], now, old)
end
if #stale > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - 86400000) end

if budget >= 0 and redis.call('HSETNX', KEYS[4], 'seeded', 1) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[4], 'spent', ARGV[10])
end
if budget >= 0 then
  local used = tonumber(redis.call('HGET', KEYS[4], 'spent') or '0')
    + tonumber(redis.call('HGET', KEYS[4], 'reserved') or '0')
  if used >= budget or used + cost > budget + 1e-9 then return {2, 0, 'budget', tostring(used)} end
end

if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, tonumber(oldest[2]) + window - now, 'rpm'}
  end
end

if tpm > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window)
  for _, old in ipairs(gone) do
    redis.call('HINCRBY', KEYS[3], '#', -tonumber(redis.call('HGET', KEYS[3], old) or '0'))
    redis.call('HDEL', KEYS[3], old)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
  local used = tonumber(redis.call('HGET', KEYS[3], '#') or '0')
  if used > 0 and used + tokens > tpm then
    local need, wait = used + tokens - tpm, 0
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      need = need - tonumber(redis.call('HGET', KEYS[3], entries[i]) or '0')
      wait = tonumber(entries[i + 1]) + window - now
      if need <= 0 then break end
    end
    return {1, wait, 'tpm'}
  end
end

if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, rid)
  redis.call('PEXPIRE', KEYS[1], window)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, rid)
  redis.call('HSET', KEYS[3], rid, tokens)
  redis.call('HINCRBY', KEYS[3], '#', tokens)
  redis.call('PEXPIRE', KEYS[2], window)
  redis.call('PEXPIRE', KEYS[3], window)
end
local held = 0
if budget >= 0 then held = cost end
redis.call('HSET', KEYS[5], rid, held)
redis.call('ZADD', KEYS[6], now, rid)
if held ~= 0 then redis.call('HINCRBYFLOAT', KEYS[4], 'reserved', held) end
local keep = tonumber(ARGV[9])
if keep > 0 then
  for i = 4, 7 do redis.call('EXPIRE', KEYS[i], keep) end
end
local req_left, req_reset, tok_left, tok_reset = -1, -1, -1, -1
if rpm > 0 then
  req_left = rpm - redis.call('ZCARD', KEYS[1])
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  req_reset = tonumber(first[2]) + window - now
end
if tpm > 0 then
  tok_left = math.max(0, tpm - tonumber(redis.call('HGET', KEYS[3], '#') or '0'))
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  tok_reset = tonumber(first[2]) + window - now
end
return {0, 0, '', req_left, req_reset, tok_left, tok_reset}
"""
)

# KEYS: 1 token log, 2 token amounts, 3 budget, 4 reservations, 5 reservation times,
#       6 given-up reservations, 7 settle marker, 8 usage of the day, 9 key names
# ARGV: 1 rid, 2 reserved (1|0), 3 real tokens, 4 cost USD, 5 period ttl s, 6 usage field
#       prefix, 7 input tokens, 8 output tokens, 9 key id, 10 key name, 11 usage ttl s,
#       12 marker ttl s, 13 requests (more than one: a tally, see gateway.limits.sync)
# Returns 1 applied | 0 applied before (a retried write)
SETTLE = (
    _UNHOLD
    + """
local rid = ARGV[1]
local held = redis.call('HGET', KEYS[4], rid)
if held then
  unhold(3, 4, 5, rid, held)
elseif redis.call('ZREM', KEYS[6], rid) == 0 and ARGV[2] == '1' then
  return 0
end
-- Nothing reserved (a key without limits, or admitted during an outage): the marker
-- settles it once, even when an outage's admission ran late in Redis and was found
-- held above (a retry finds none).
if ARGV[2] ~= '1' and not redis.call('SET', KEYS[7], '1', 'NX', 'EX', tonumber(ARGV[12])) then
  return 0
end
redis.call('HINCRBYFLOAT', KEYS[3], 'spent', ARGV[4])
local keep = tonumber(ARGV[5])
if keep > 0 then redis.call('EXPIRE', KEYS[3], keep) end
local estimate = redis.call('HGET', KEYS[2], rid)
if estimate then
  redis.call('HSET', KEYS[2], rid, ARGV[3])
  redis.call('HINCRBY', KEYS[2], '#', tonumber(ARGV[3]) - tonumber(estimate))
end
local prefix = ARGV[6]
redis.call('HINCRBY', KEYS[8], prefix .. 'requests', tonumber(ARGV[13]))
redis.call('HINCRBY', KEYS[8], prefix .. 'input_tokens', ARGV[7])
redis.call('HINCRBY', KEYS[8], prefix .. 'output_tokens', ARGV[8])
redis.call('HINCRBYFLOAT', KEYS[8], prefix .. 'cost_usd', ARGV[4])
redis.call('EXPIRE', KEYS[8], tonumber(ARGV[11]))
redis.call('HSET', KEYS[9], ARGV[9], ARGV[10])
return 1
"""
)

# KEYS: 1 request log, 2 token log, 3 token amounts, 4 budget, 5 reservations,
#       6 reservation times, 7 given-up reservations
# ARGV: 1 rid.  Returns 1 released | 0 nothing held (settled, released or never reserved)
RELEASE = (
    _UNHOLD
    + """
local rid = ARGV[1]
local held = redis.call('HGET', KEYS[5], rid)
if not held then
  redis.call('ZREM', KEYS[7], rid)
  return 0
end
unhold(4, 5, 6, rid, held)
redis.call('ZREM', KEYS[1], rid)
local tokens = redis.call('HGET', KEYS[3], rid)
if tokens then
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[2], rid)
  redis.call('HINCRBY', KEYS[3], '#', -tonumber(tokens))
end
return 1
"""
)

# ARGV: 1 window s, then (deployment id, requests, tokens) triples: this replica's use
# since its last sync. Returns, per deployment, requests and tokens in the window
# across every replica. Buckets are whole seconds, so the window is counted a little
# long (by under a second): conservative for a provider quota.
DEPLOYMENTS = """
local window = tonumber(ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local out = {}
for i = 2, #ARGV, 3 do
  local prefix = 'gw:dep:' .. ARGV[i] .. ':'
  local requests, tokens = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if requests > 0 or tokens > 0 then
    local bucket = prefix .. now
    redis.call('HINCRBY', bucket, 'r', requests)
    redis.call('HINCRBY', bucket, 't', tokens)
    redis.call('EXPIRE', bucket, window + 2)
  end
  local r, t = 0, 0
  for s = now - window + 1, now do
    local v = redis.call('HMGET', prefix .. s, 'r', 't')
    r = r + tonumber(v[1] or '0')
    t = t + tonumber(v[2] or '0')
  end
  out[#out + 1] = r
  out[#out + 1] = t
end
return out
"""


def _left(amount: Any, reset_ms: Any) -> Headroom | None:
    """What the script says is left of one limit (-1: the key has no such limit)."""
    if int(amount) < 0:
        return None
    return Headroom(int(amount), max(0, int(reset_ms)) / 1000)


def _no_script(result: Any) -> bool:
    return isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")


def _key_base(key_id: str) -> str:
    return f"gw:lim:{key_id}"


def _budget_keys(a: Admission) -> list[str]:
    budget = f"{_key_base(a.key_id)}:b:{a.period}"
    return [budget, f"{budget}:resv", f"{budget}:resvt", f"{budget}:lost"]


def _rate_keys(a: Admission) -> list[str]:
    base = _key_base(a.key_id)
    return [f"{base}:req", f"{base}:tok", f"{base}:tokn"]


@functools.lru_cache(maxsize=4096)  # a few per key: no JSON encoding per settle
def usage_field_prefix(key_id: str, team: str | None, route: str) -> str:
    return jsonutil.dumps([key_id, team, route]).decode() + "|"


class RedisLimitStore:
    """Runs the scripts through `SharedRedis` (deadline, no hidden retries, outage logging)."""

    shared = True

    def __init__(
        self, redis: SharedRedis, window_s: float, reservation_ttl_s: float, usage_ttl_s: int
    ) -> None:
        self._redis = redis
        self._window_ms = max(1, math.ceil(window_s * 1000))
        self._window_whole_s = max(1, math.ceil(window_s))
        self._reservation_ttl_ms = math.ceil(reservation_ttl_s * 1000)
        self._usage_ttl_s = usage_ttl_s
        client = redis.client
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._release = client.register_script(RELEASE)
        self._deployments = client.register_script(DEPLOYMENTS)

    async def admit(self, a: Admission) -> Decision:
        keys = [*_rate_keys(a), *_budget_keys(a)]
        args: list[str | int] = [
            a.request_id,
            self._window_ms,
            a.rpm or 0,
            a.tpm or 0,
            a.tokens,
            repr(a.budget_usd) if a.budget_usd is not None else -1,
            repr(a.cost_usd),
            self._reservation_ttl_ms,
            a.period_ttl_s,
            repr(a.floor_usd),
        ]
        command: Command = ("EVALSHA", self._admit.sha, len(keys), *keys, *args)
        result = await self._redis.run_piped("limits", lambda p: p.execute_many([command]))
        if _no_script(result[0]):  # Redis lost its scripts (restarted, flushed): load, again
            load: Command = ("SCRIPT", "LOAD", ADMIT)
            result = await self._redis.run_piped(
                "limits", lambda p: p.execute_many([load, command])
            )
            result = result[1:]
        if isinstance(result[0], ResponseError):
            raise result[0]  # a script error is a bug: a 500 with the error logged
        reply = result[0]
        code, wait_ms, reason = int(reply[0]), int(reply[1]), reply[2]
        if code == 0:
            return Decision(None, 0.0, _left(reply[3], reply[4]), _left(reply[5], reply[6]))
        if code == 2:
            return Decision("budget", budget_used_usd=float(reply[3]))
        return Decision(reason.decode(), max(0, wait_ms) / 1000)

    async def apply(self, writes: Sequence[Write]) -> None:
        """Every write's EVALSHA in one write on the pipelined connection (background
        work: a write whose answer never came is retried, and its script's marker makes
        the retry a no-op). A Redis that lost its scripts (restarted, flushed) answers
        NOSCRIPT: load both (one loaded and not the other would run a release before
        the settle resent after it), then resend just those writes, which did not run."""
        commands = [self._evalsha(write) for write in writes]
        results = await self._redis.run_piped("limits", lambda p: p.execute_many(commands))
        unrun = [i for i, result in enumerate(results) if _no_script(result)]
        if unrun:
            loads: list[Command] = [("SCRIPT", "LOAD", text) for text in (SETTLE, RELEASE)]
            again = [commands[i] for i in unrun]
            replies = await self._redis.run_piped("limits", lambda p: p.execute_many(loads + again))
            for i, result in zip(unrun, replies[len(loads) :], strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, ResponseError):
                # A script error is a bug, not an outage: retrying would block the queue.
                log.error("limit write failed: %s", str(result)[:200])

    def _evalsha(self, write: Write) -> Command:
        if isinstance(write, Release):
            a = write.admission
            keys: list[str] = [*_rate_keys(a), *_budget_keys(a)]
            return ("EVALSHA", self._release.sha, len(keys), *keys, a.request_id)
        keys = self._settle_keys(write)
        return ("EVALSHA", self._settle.sha, len(keys), *keys, *self._settle_args(write))

    def _settle_keys(self, s: Settlement) -> list[str]:
        a = s.admission
        base = _key_base(a.key_id)
        return [
            f"{base}:tok",
            f"{base}:tokn",
            *_budget_keys(a),
            f"gw:lim:done:{a.request_id}",
            USAGE_PREFIX + s.day,
            USAGE_NAMES,
        ]

    def _settle_args(self, s: Settlement) -> list[str | int]:
        a = s.admission
        return [
            a.request_id,
            1 if s.reserved else 0,
            s.tokens,
            repr(s.cost_usd),
            a.period_ttl_s,
            usage_field_prefix(a.key_id, a.team, s.route),
            s.input_tokens,
            s.output_tokens,
            a.key_id,
            a.key_name,
            self._usage_ttl_s,
            _MARKER_TTL_S,
            s.requests,
        ]

    async def sync_deployments(
        self, used: Mapping[str, tuple[int, int]]
    ) -> dict[str, tuple[int, int]]:
        ids = list(used)
        args: list[str | int] = [self._window_whole_s]
        for deployment_id in ids:
            args += [deployment_id, *used[deployment_id]]
        result = await self._redis.run_or_raise(
            "limits", lambda _: self._deployments(keys=[], args=args)
        )
        return {d: (int(result[2 * i]), int(result[2 * i + 1])) for i, d in enumerate(ids)}

    async def usage(self, days: Sequence[str]) -> list[UsageRow]:
        return await self._redis.run_or_raise("usage", lambda client: read_usage(client, days))

    async def spend(self, key_id: str, period: str) -> tuple[float, float]:
        key = f"{_key_base(key_id)}:b:{period}"
        spent, reserved = await self._redis.run_or_raise(
            "limits", lambda client: client.hmget(key, "spent", "reserved")
        )
        return float(spent or 0), float(reserved or 0)


async def read_usage(client: Any, days: Sequence[str]) -> list[UsageRow]:
    """The usage report rows of `days` (also used by `gateway usage`, without a gateway)."""
    async with client.pipeline(transaction=False) as pipe:
        for day in days:
            pipe.hgetall(USAGE_PREFIX + day)
        pipe.hgetall(USAGE_NAMES)
        tables = await pipe.execute()
    names = {k.decode(): v.decode() for k, v in tables[-1].items()}
    rows: list[UsageRow] = []
    for day, table in zip(days, tables[:-1], strict=True):
        rows += _rows_of_day(day, table, names)
    return rows


def _rows_of_day(
    day: str, table: Mapping[bytes, bytes], names: Mapping[str, str]
) -> list[UsageRow]:
    cells: dict[str, dict[str, float]] = {}
    for field, value in table.items():
        prefix, _, metric = field.decode().rpartition("|")
        cells.setdefault(prefix, {})[metric] = float(value)
    rows = []
    for prefix, metrics in cells.items():
        key_id, team, route = jsonutil.loads(prefix)
        rows.append(
            UsageRow(
                day=day,
                key_id=key_id,
                key=names.get(key_id, key_id),
                team=team,
                route=route,
                requests=int(metrics.get("requests", 0)),
                input_tokens=int(metrics.get("input_tokens", 0)),
                output_tokens=int(metrics.get("output_tokens", 0)),
                cost_usd=metrics.get("cost_usd", 0.0),
            )
        )
    return rows
