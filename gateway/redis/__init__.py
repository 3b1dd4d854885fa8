"""The shared Redis: the guarded connection pool and the pipelined connection.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.redis.client import (
    WRITE_LINGER_S,
    RedisUnavailableError,
    SharedRedis,
    make_redis,
    shared_redis,
)
from gateway.redis.pipe import Command

__all__ = [
    "Command",
    "RedisUnavailableError",
    "SharedRedis",
    "WRITE_LINGER_S",
    "make_redis",
    "shared_redis",
]
