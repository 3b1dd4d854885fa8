"""`redis:`: one Redis (`url`), the master a set of Sentinels names (`mode: sentinel`), or
a Redis Cluster (`mode: cluster`). The clients are gateway.redis.client's."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from gateway.config.common import FrozenModel, redacted_url

SENTINEL_PORT = 26379  # a sentinel address without a port: Sentinel's own default
REDIS_PORT = 6379  # a cluster node's address without a port


def _split_address(entry: str, default_port: int = SENTINEL_PORT) -> tuple[str, int]:
    """("h", 26379) from "h:26379", "h" or "[::1]:26379"; ValueError if not one."""
    parts = urlsplit(f"//{entry}")
    host, port = parts.hostname, parts.port  # port: ValueError when out of range
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(entry)
    return host, default_port if port is None else port


def _address(kind: str) -> Any:
    def check(entry: str) -> str:
        entry = entry.strip()
        try:
            _split_address(entry)
        except ValueError:
            raise PydanticCustomError(
                f"{kind}_address",
                f"not a {kind} address host:port: {{entry}}",
                {"entry": redacted_url(entry)},  # nothing before an @ (a password?) shown
            ) from None
        return entry

    return AfterValidator(check)


def _comma_separated(value: Any) -> Any:
    """`sentinels: ${REDIS_SENTINELS}` with "h1:26379,h2:26379": a list of them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,]+", value) if part]
    return value


# How the gateway finds its Redis; each mode's clients are in gateway/redis/client.py.
RedisMode = Literal["standalone", "sentinel", "cluster"]


class RedisConfig(FrozenModel):
    """One Redis (`url`), the master that a set of Sentinels names (`mode: sentinel`), or
    a Redis Cluster (`mode: cluster`)."""

    mode: RedisMode = "standalone"
    # standalone: the Redis, redis://[[user]:password@]host[:port][/db] (rediss:// for
    # TLS); empty (`url: ${REDIS_URL:-}` unset): no Redis, as without this section.
    # sentinel: optional, how to talk to the master the sentinels name: the same URL
    # without host or port, redis://[[user]:password@]/db or rediss://…/db?ssl_…
    # cluster: one node to learn the cluster from (a managed cluster's configuration
    # endpoint) with the credentials and TLS of every node; database 0 only.
    url: str | None = Field(None, validate_default=True)
    # sentinel only: host:port of each sentinel (a list, or one comma-separated string)
    sentinels: list[Annotated[str, _address("sentinel")]] = Field(
        default_factory=list, validate_default=True
    )
    # cluster only: more nodes to learn the cluster from when `url`'s does not answer
    # (host[:port], a list or one comma-separated string); the rest it finds itself.
    nodes: list[Annotated[str, _address("node")]] = Field(
        default_factory=list, validate_default=True
    )
    master_name: str | None = Field(None, validate_default=True)  # `sentinel monitor NAME …`
    sentinel_username: str | None = None  # the sentinels' own ACL user, if any
    sentinel_password: str | None = None  # the sentinels' `requirepass`, if any
    socket_timeout_s: float = Field(0.25, gt=0)
    connect_timeout_s: float = Field(0.25, gt=0)  # each sentinel too, when asked for the master
    # Whole call, pool wait included; on the pipelined connection, each reply after
    # its connect (which connect_timeout_s bounds).
    operation_deadline_s: float = Field(0.5, gt=0)
    max_connections: int = Field(64, ge=1)

    @field_validator("sentinels", "nodes", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("url")
    @classmethod
    def _url_for_the_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip() or None
        mode = info.data.get("mode")
        if mode in ("standalone", "cluster") and value is None:
            raise PydanticCustomError("missing", "Field required")
        if mode == "cluster":
            _cluster_url(value or "")
        if mode == "sentinel" and value is not None:
            # Never the URL itself in a message: it may hold the master's password.
            try:
                parts = urlsplit(value)
                has_address = bool(parts.hostname) or parts.port is not None
            except ValueError:
                raise PydanticCustomError("url", "not a redis:// or rediss:// URL") from None
            if parts.scheme not in ("redis", "rediss"):
                raise PydanticCustomError("url", "not a redis:// or rediss:// URL")
            if has_address:
                raise PydanticCustomError(
                    "url",
                    "in sentinel mode the sentinels name the master's address: give only "
                    "credentials, database and TLS, e.g. redis://:PASSWORD@/0",
                )
        return value

    @field_validator("sentinels")
    @classmethod
    def _sentinels_for_the_mode(cls, value: list[str], info: ValidationInfo) -> list[str]:
        mode = info.data.get("mode")
        if mode == "sentinel" and not value:
            raise PydanticCustomError(
                "missing", "required in sentinel mode: the sentinels' addresses, host:port"
            )
        if mode != "sentinel" and value:
            raise PydanticCustomError("extra", "only with redis.mode: sentinel")
        return value

    @field_validator("nodes")
    @classmethod
    def _nodes_for_the_mode(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("mode") != "cluster" and value:
            raise PydanticCustomError("extra", "only with redis.mode: cluster")
        return value

    @field_validator("master_name")
    @classmethod
    def _master_name_for_the_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip() or None
        mode = info.data.get("mode")
        if mode == "sentinel" and value is None:
            raise PydanticCustomError(
                "missing",
                "required in sentinel mode: the name the sentinels monitor the master "
                "by (`sentinel monitor NAME host port quorum`)",
            )
        if mode != "sentinel" and value is not None:
            raise PydanticCustomError("extra", "only with redis.mode: sentinel")
        return value

    @field_validator("sentinel_username", "sentinel_password")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None  # `${SENTINEL_PASSWORD:-}` unset: no password

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel, in the written order."""
        return [_split_address(entry) for entry in self.sentinels]

    def cluster_seeds(self) -> list[tuple[str, int]]:
        """(host, port) of `url`'s node, then of each of `nodes`: where to learn the
        cluster's layout from, in that order."""
        parts = urlsplit(self.url or "")
        first = (parts.hostname or "localhost", parts.port or REDIS_PORT)
        return [first, *(_split_address(entry, REDIS_PORT) for entry in self.nodes)]


def _cluster_url(value: str) -> None:
    """A cluster's `url`: redis:// or rediss:// with a host, database 0 (a cluster has only
    that one). Never the URL itself in a message: it may hold a password."""
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise PydanticCustomError("url", "not a redis:// or rediss:// URL") from None
    if parts.scheme not in ("redis", "rediss") or not host:
        raise PydanticCustomError(
            "url", "not a redis:// or rediss:// URL with a host: one node of the cluster"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise PydanticCustomError("url", "a Redis Cluster has only database 0")
