"""The limit rules in Lua, so every worker and replica decides on the same counters.

One script per request checks and reserves together (rule 8); the rules are those
of `gateway.limits.store` (read its docstring first). Time comes from Redis (`TIME`),
so replicas with skewed clocks still share one window. Settlements and releases run
batched in one pipeline from a background writer; both are idempotent per request
id, because a write that timed out may have been applied (rule 7).

Keys. Every key a script touches carries the same hash tag, `{<key id>}` (a gateway
key's) or `{<deployment id>}`, so each script's keys share one slot of a Redis Cluster
(`redis.mode: cluster`): a script may only touch keys of one slot there. Per gateway
key, not per team: a team of many busy keys spreads over the cluster's masters, and
only one key's own traffic lands on one master (a team's budget is checked from its
keys' records, not from one Redis counter).
    gw:lim:{<key id>}:req              sliding log of admitted requests (zset rid -> ms)
    gw:lim:{<key id>}:tok / :tokn      token reservations (zset rid -> ms; hash rid -> n, '#')
    gw:lim:{<key id>}:b:<period>       budget: spent, reserved (hash, USD)
    gw:lim:{<key id>}:b:<period>:resv  open reservations (hash rid -> USD held; the settle marker)
    gw:lim:{<key id>}:b:<period>:resvt their admission times (zset), to give up on dead ones
    gw:lim:{<key id>}:b:<period>:lost  given-up reservations a late settle still bills (zset)
    gw:lim:{<key id>}:done:<rid>       settle marker of a write that reserved nothing (a tally
                                       of a limitless key's requests, or a request admitted
                                       during an outage), kept `_MARKER_TTL_S`: while a
                                       write may still be retried
    gw:dep:{<deployment id>}           deployment use per second: r<unix s>, t<unix s>

(The usage report that earlier versions kept in Redis, gw:usage:*, is the SQL ledger's
now: gateway/records.)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from gateway.limits.store import Admission, Decision, Headroom, Release, Write
from gateway.redis import Command, SharedRedis

log = logging.getLogger("gateway")

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

-- Each call from Lua costs a few µs of Redis' time, and this script is on every limited
-- request's path: what is already known is not asked again.
local requests = 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  requests = redis.call('ZCARD', KEYS[1])
  if requests >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, tonumber(oldest[2]) + window - now, 'rpm'}
  end
end

local used = 0
if tpm > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if #gone > 0 then
    for _, old in ipairs(gone) do
      local n = tonumber(redis.call('HGET', KEYS[3], old) or '0')
      if n ~= 0 then redis.call('HINCRBY', KEYS[3], '#', -n) end  -- never -0: not an integer
      redis.call('HDEL', KEYS[3], old)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
    if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
  end
  used = tonumber(redis.call('HGET', KEYS[3], '#') or '0')
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
  redis.call('HSET', KEYS[3], rid, tokens, '#', string.format('%d', used + tokens))
  redis.call('PEXPIRE', KEYS[2], window)
  redis.call('PEXPIRE', KEYS[3], window)
end
local held = 0
if budget >= 0 then held = cost end
redis.call('HSET', KEYS[5], rid, held)
redis.call('ZADD', KEYS[6], now, rid)
if held ~= 0 then redis.call('HINCRBYFLOAT', KEYS[4], 'reserved', held) end
local keep = tonumber(ARGV[9])
if keep > 0 then  -- what this admission wrote lives as long as its period's counters
  redis.call('EXPIRE', KEYS[5], keep)
  redis.call('EXPIRE', KEYS[6], keep)
  if budget >= 0 then redis.call('EXPIRE', KEYS[4], keep) end
  if #stale > 0 then redis.call('EXPIRE', KEYS[7], keep) end
end
local req_left, req_reset, tok_left, tok_reset = -1, -1, -1, -1
if rpm > 0 then
  req_left = rpm - requests - 1
  req_reset = window  -- this request is the window's oldest, unless one came before
  if requests > 0 then
    req_reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now
  end
end
if tpm > 0 then
  tok_left = math.max(0, tpm - used - tokens)
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  tok_reset = tonumber(first[2]) + window - now
end
return {0, 0, '', req_left, req_reset, tok_left, tok_reset}
"""
)

# KEYS: 1 token log, 2 token amounts, 3 budget, 4 reservations, 5 reservation times,
#       6 given-up reservations, 7 settle marker
# ARGV: 1 rid, 2 reserved (1|0), 3 real tokens, 4 cost USD, 5 period ttl s, 6 marker ttl s
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
if ARGV[2] ~= '1' and not redis.call('SET', KEYS[7], '1', 'NX', 'EX', tonumber(ARGV[6])) then
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
  if tonumber(tokens) ~= 0 then redis.call('HINCRBY', KEYS[3], '#', -tonumber(tokens)) end
end
return 1
"""
)

# KEYS: 1 the deployment's use per second. ARGV: 1 window s, 2 requests, 3 tokens: this
# replica's use since its last sync. Returns requests and tokens in the window across
# every replica. Buckets are whole seconds, so the window is counted a little long (by
# under a second): conservative for a provider quota.
DEPLOYMENT = """
local window = tonumber(ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local requests, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
if requests > 0 or tokens > 0 then
  redis.call('HINCRBY', KEYS[1], 'r' .. now, requests)
  redis.call('HINCRBY', KEYS[1], 't' .. now, tokens)
  redis.call('EXPIRE', KEYS[1], window + 2)
end
local r, t, old = 0, 0, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if tonumber(string.sub(name, 2)) <= now - window then old[#old + 1] = name
  elseif string.sub(name, 1, 1) == 'r' then r = r + tonumber(fields[i + 1])
  else t = t + tonumber(fields[i + 1]) end
end
if #old > 0 then redis.call('HDEL', KEYS[1], unpack(old)) end
return {r, t}
"""


def _left(amount: Any, reset_ms: Any) -> Headroom | None:
    """What the script says is left of one limit (-1: the key has no such limit)."""
    if int(amount) < 0:
        return None
    return Headroom(int(amount), max(0, int(reset_ms)) / 1000)


def _no_script(result: Any) -> bool:
    return isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")


def _key_base(key_id: str) -> str:
    return f"gw:lim:{{{key_id}}}"  # the hash tag: one slot for all of a key's counters


@functools.lru_cache(maxsize=4096)
def _limit_keys(key_id: str, period: str) -> tuple[str, ...]:
    """A gateway key's counters in one budget period (the KEYS of ADMIT and RELEASE):
    request log, token log, token amounts, budget, reservations, their times, given up.
    Made once per key and period, not per request."""
    base = _key_base(key_id)
    budget = f"{base}:b:{period}"
    return (
        f"{base}:req",
        f"{base}:tok",
        f"{base}:tokn",
        budget,
        f"{budget}:resv",
        f"{budget}:resvt",
        f"{budget}:lost",
    )


def deployment_key(deployment_id: str) -> str:
    return f"gw:dep:{{{deployment_id}}}"


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class RedisLimitStore:
    """Runs the scripts on the pipelined connection of `SharedRedis` (deadline, no hidden
    retries, outage logging), by their SHA1 (`EVALSHA`), loading them when Redis lost
    them (restarted, flushed; a new master of a cluster)."""

    shared = True

    def __init__(self, redis: SharedRedis, window_s: float, reservation_ttl_s: float) -> None:
        self._redis = redis
        self._window_ms = max(1, math.ceil(window_s * 1000))
        self._window_whole_s = max(1, math.ceil(window_s))
        self._reservation_ttl_ms = math.ceil(reservation_ttl_s * 1000)

    async def admit(self, a: Admission) -> Decision:
        keys = _limit_keys(a.key_id, a.period)
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
        command: Command = ("EVALSHA", _sha(ADMIT), len(keys), *keys, *args)
        reply = (await self._run([command], (ADMIT,)))[0]
        if isinstance(reply, ResponseError):
            raise reply  # a script error is a bug: a 500 with the error logged
        code, wait_ms, reason = int(reply[0]), int(reply[1]), reply[2]
        if code == 0:
            return Decision(None, 0.0, _left(reply[3], reply[4]), _left(reply[5], reply[6]))
        if code == 2:
            return Decision("budget", budget_used_usd=float(reply[3]))
        return Decision(reason.decode(), max(0, wait_ms) / 1000)

    async def _run(self, commands: list[Command], scripts: Sequence[str]) -> list[Any]:
        """The replies of `commands` (EVALSHAs of `scripts`), in one write on the pipelined
        connection. A Redis that lost its scripts (restarted, flushed) answers NOSCRIPT:
        load them all (one loaded and not another would run a release before the settle
        resent after it), then resend just those commands, which did not run."""
        results = await self._redis.run_piped("limits", lambda p: p.execute_many(commands))
        unrun = [i for i, result in enumerate(results) if _no_script(result)]
        if unrun:
            loads: list[Command] = [("SCRIPT", "LOAD", text) for text in scripts]
            again = [commands[i] for i in unrun]
            replies = await self._redis.run_piped("limits", lambda p: p.execute_many(loads + again))
            for i, result in zip(unrun, replies[len(loads) :], strict=True):
                results[i] = result
        return results

    async def apply(self, writes: Sequence[Write]) -> None:
        """Every write's EVALSHA in one write (background work: a write whose answer never
        came is retried, and its script's marker makes the retry a no-op)."""
        results = await self._run([self._evalsha(write) for write in writes], (SETTLE, RELEASE))
        for result in results:
            if isinstance(result, ResponseError):
                # A script error is a bug, not an outage: retrying would block the queue.
                log.error("limit write failed: %s", str(result)[:200])

    def _evalsha(self, write: Write) -> Command:
        if isinstance(write, Release):
            a = write.admission
            keys = _limit_keys(a.key_id, a.period)
            return ("EVALSHA", _sha(RELEASE), len(keys), *keys, a.request_id)
        a = write.admission
        done = f"{_key_base(a.key_id)}:done:{a.request_id}"
        keys = (*_limit_keys(a.key_id, a.period)[1:], done)
        args = (a.request_id, 1 if write.reserved else 0, write.tokens, repr(write.cost_usd))
        return ("EVALSHA", _sha(SETTLE), len(keys), *keys, *args, a.period_ttl_s, _MARKER_TTL_S)

    async def sync_deployments(
        self, used: Mapping[str, tuple[int, int]]
    ) -> dict[str, tuple[int, int]]:
        """One script per deployment (its own key, and slot), all in one write."""
        ids = list(used)
        sha, window = _sha(DEPLOYMENT), self._window_whole_s
        commands: list[Command] = [
            ("EVALSHA", sha, 1, deployment_key(d), window, *used[d]) for d in ids
        ]
        results = await self._run(commands, (DEPLOYMENT,))
        for result in results:
            if isinstance(result, ResponseError):
                raise result  # a bug, as in `admit`
        return {d: (int(r[0]), int(r[1])) for d, r in zip(ids, results, strict=True)}

    async def spend(self, key_id: str, period: str) -> tuple[float, float]:
        key = f"{_key_base(key_id)}:b:{period}"
        spent, reserved = await self._redis.run_piped(
            "limits", lambda p: p.execute("HMGET", key, "spent", "reserved")
        )
        return float(spent or 0), float(reserved or 0)
