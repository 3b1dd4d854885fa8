"""Gateway API keys and the caller identity they resolve to.

Keys are held as SHA-256 hashes only; the clear key never leaves the request that
carried it. Lookups compare hashes, so timing does not reveal key prefixes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import AuthConfig, KeyConfig
from gateway.errors import AuthenticationError, ConcurrencyLimitError, PermissionDeniedError

log = logging.getLogger("gateway")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling. `key_id` is a short hash prefix: safe in logs, never the key."""

    key_id: str
    name: str
    team: str | None = None
    routes: frozenset[str] | None = None  # None = every route
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    labels: Mapping[str, str] = field(default_factory=dict)
    max_concurrent: int | None = None
    log_payloads: bool = False
    is_admin: bool = False

    @property
    def tenant(self) -> str:
        """Cache and spend scope: the team when there is one, else the key."""
        return f"team:{self.team}" if self.team else f"key:{self.key_id}"

    def check_route(self, route: str) -> None:
        if self.routes is not None and route not in self.routes:
            raise PermissionDeniedError(
                f"This key is not allowed to use the model '{route}'.", param="model"
            )


class KeyAttributes(Protocol):
    """What a key grants, whatever holds it: a config entry, a runtime record, an admin
    request for a new key, a caller. The one mapping between them is below."""

    @property
    def name(self) -> str: ...
    @property
    def team(self) -> str | None: ...
    @property
    def routes(self) -> Collection[str] | None: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...
    @property
    def budget_usd(self) -> float | None: ...
    @property
    def budget_period(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def max_concurrent(self) -> int | None: ...
    @property
    def log_payloads(self) -> bool: ...


def key_attributes(spec: KeyAttributes) -> dict[str, Any]:
    """The attributes as keyword arguments (routes in their given order)."""
    return {
        "name": spec.name,
        "team": spec.team,
        "routes": tuple(spec.routes) if spec.routes is not None else None,
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "budget_usd": spec.budget_usd,
        "budget_period": spec.budget_period,
        "labels": dict(spec.labels),
        "max_concurrent": spec.max_concurrent,
        "log_payloads": spec.log_payloads,
    }


def caller_of(key_id: str, spec: KeyAttributes) -> Caller:
    attributes = key_attributes(spec)
    routes = attributes["routes"]
    attributes["routes"] = frozenset(routes) if routes is not None else None
    return Caller(key_id=key_id, **attributes)


ANONYMOUS = Caller(key_id="anonymous", name="anonymous")


def caller_from_config(spec: KeyConfig) -> Caller:
    return caller_of(hash_key(spec.key)[:12], spec)


@dataclass(frozen=True, slots=True)
class RuntimeSecret:
    """A key created at run time (`gateway.keys.admin`), as mirrored from its store."""

    caller: Caller
    valid_until_s: float | None = None  # wall clock; set on the old secret of a rotation


class KeyStore:
    """Keys by hash: from config, plus a local mirror of the runtime keys.

    `authenticate` never waits on Redis: `gateway.keys.admin.KeyAdmin` refreshes the
    mirror (runtime keys, and config keys revoked at run time) in the background, so
    a revocation reaches every replica within `limits.key_sync_interval_s`.
    """

    def __init__(self, auth: AuthConfig) -> None:
        self.open = auth.mode == "open"
        self._by_hash: dict[str, Caller] = {
            hash_key(spec.key): caller_from_config(spec) for spec in auth.keys if spec.key
        }
        self._admin_hashes = {hash_key(k) for k in auth.admin_keys if k}
        self._runtime: Mapping[str, RuntimeSecret] = {}
        self._revoked: frozenset[str] = frozenset()  # digests of revoked config keys
        self.concurrency = KeyConcurrency()

    def config_keys(self) -> list[tuple[str, Caller]]:
        """(digest, caller) of every config key; the digest never leaves the process."""
        return list(self._by_hash.items())

    def callers(self) -> list[Caller]:
        """Every live key once: config keys not revoked, then the runtime mirror's (a key
        in a rotation's grace period has two secrets, one caller). From memory."""
        found = {c.key_id: c for d, c in self._by_hash.items() if d not in self._revoked}
        for secret in self._runtime.values():
            found.setdefault(secret.caller.key_id, secret.caller)
        return list(found.values())

    def is_revoked(self, digest: str) -> bool:
        return digest in self._revoked

    def replace_runtime(
        self, secrets: Mapping[str, RuntimeSecret], revoked_config: frozenset[str]
    ) -> None:
        """Swap in a new mirror at once (one assignment each: no partial view)."""
        self._runtime = secrets
        self._revoked = revoked_config

    def lookup(self, digest: str) -> Caller | None:
        caller = self._by_hash.get(digest)
        if caller is not None:
            return None if digest in self._revoked else caller
        secret = self._runtime.get(digest)
        if secret is None:
            return None
        if secret.valid_until_s is not None and time.time() >= secret.valid_until_s:
            return None
        return secret.caller

    def authenticate(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        if token is None:
            if self.open:
                return ANONYMOUS
            raise AuthenticationError(
                "Missing API key. Send it as 'Authorization: Bearer <gateway key>'."
            )
        digest = hash_key(token)
        caller = self.lookup(digest)
        if caller is not None:
            return caller
        if digest in self._admin_hashes:
            return Caller(key_id=digest[:12], name="admin", is_admin=True)
        if self.open:
            return ANONYMOUS
        raise AuthenticationError("Incorrect API key provided.")

    def authenticate_admin(self, authorization: str | None) -> Caller:
        """401 without a valid key, 403 for a valid key that is not an admin key."""
        token = bearer_token(authorization)
        digest = hash_key(token) if token is not None else ""
        if digest in self._admin_hashes:
            return Caller(key_id=digest[:12], name="admin", is_admin=True)
        if token is not None and self.lookup(digest) is not None:
            raise PermissionDeniedError("This endpoint needs an admin key.")
        raise AuthenticationError("This endpoint needs an admin key.")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyConcurrency:
    """Requests in flight per key with a `max_concurrent` (in this process)."""

    __slots__ = ("_in_flight",)

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def acquire(self, caller: Caller) -> None:
        """Counts one more request of `caller`; a 429 past its bound."""
        limit = caller.max_concurrent
        if limit is None:
            return
        now = self._in_flight.get(caller.key_id, 0)
        if now >= limit:
            raise ConcurrencyLimitError(
                f"Key '{caller.name}' has {limit} requests in flight, its limit "
                "(max_concurrent); retry when one has finished.",
            )
        self._in_flight[caller.key_id] = now + 1

    def release(self, key_id: str) -> None:
        left = self._in_flight.get(key_id, 0) - 1
        if left > 0:
            self._in_flight[key_id] = left
        else:
            self._in_flight.pop(key_id, None)
