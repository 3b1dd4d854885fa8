"""`redis:`: one Redis (`url`), or the master a set of Sentinels names (`mode: sentinel`).
The clients are gateway.redis.client's."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from gateway.config.common import FrozenModel, redacted_url

SENTINEL_PORT = 26379  # a sentinel address without a port: Sentinel's own default


def _split_address(entry: str) -> tuple[str, int]:
    """("h", 26379) from "h:26379", "h" or "[::1]:26379"; ValueError if not one."""
    parts = urlsplit(f"//{entry}")
    host, port = parts.hostname, parts.port  # port: ValueError when out of range
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(entry)
    return host, SENTINEL_PORT if port is None else port


def _sentinel_address(entry: str) -> str:
    entry = entry.strip()
    try:
        _split_address(entry)
    except ValueError:
        raise PydanticCustomError(
            "sentinel_address",
            "not a sentinel address host:port: {entry}",
            {"entry": redacted_url(entry)},  # nothing before an @ (a password?) shown
        ) from None
    return entry


# How the gateway finds its Redis. `cluster` is to join these (issue 28): a new member
# here, its fields and checks below, and its clients in gateway/redis/client.py.
RedisMode = Literal["standalone", "sentinel"]


class RedisConfig(FrozenModel):
    """One Redis (`url`), or the master that a set of Sentinels names (`mode: sentinel`)."""

    mode: RedisMode = "standalone"
    # standalone: the Redis, redis://[[user]:password@]host[:port][/db] (rediss:// for
    # TLS); empty (`url: ${REDIS_URL:-}` unset): no Redis, as without this section.
    # sentinel: optional, how to talk to the master the sentinels name: the same URL
    # without host or port, redis://[[user]:password@]/db or rediss://…/db?ssl_…
    url: str | None = Field(None, validate_default=True)
    # sentinel only: host:port of each sentinel (a list, or one comma-separated string)
    sentinels: list[Annotated[str, AfterValidator(_sentinel_address)]] = Field(
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

    @field_validator("sentinels", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """`sentinels: ${REDIS_SENTINELS}` with "h1:26379,h2:26379": a list of them."""
        if value is None:
            return []
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("url")
    @classmethod
    def _url_for_the_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip() or None
        mode = info.data.get("mode")
        if mode == "standalone" and value is None:
            raise PydanticCustomError("missing", "Field required")
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
        if mode == "standalone" and value:
            raise PydanticCustomError("extra", "only with redis.mode: sentinel")
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
        if mode == "standalone" and value is not None:
            raise PydanticCustomError("extra", "only with redis.mode: sentinel")
        return value

    @field_validator("sentinel_username", "sentinel_password")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None  # `${SENTINEL_PASSWORD:-}` unset: no password

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel, in the written order."""
        return [_split_address(entry) for entry in self.sentinels]
