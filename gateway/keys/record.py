"""A runtime gateway key as its stores hold it (hashes only), and what a store does.

A key's secret is shown once, at creation or rotation; the store keeps its SHA-256
digest. The store is SQL (`gateway.keys.sql_store`): the system of record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.keys.store import Caller, caller_of


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    team: str | None = None
    routes: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    labels: Mapping[str, str] = field(default_factory=dict)
    max_concurrent: int | None = None
    log_payloads: bool = False
    created_at: float = 0.0
    revoked_at: float | None = None
    digest: str = ""  # SHA-256 of the current secret
    old_digest: str = ""  # the previous secret during a rotation's grace period
    old_until: float = 0.0

    def to_caller(self) -> Caller:
        return caller_of(self.id, self)

    def live_digests(self, now_s: float) -> dict[str, float | None]:
        """Digest -> valid until (None: no end) of the secrets that still authenticate."""
        if self.revoked_at is not None:
            return {}
        live: dict[str, float | None] = {self.digest: None}
        if self.old_digest and self.old_until > now_s:
            live[self.old_digest] = self.old_until
        return live


class KeyRecords(Protocol):
    """A store that cannot be reached raises `RecordsUnavailableError`."""

    async def create(self, record: KeyRecord) -> bool: ...  # False: the name is taken

    async def revoke(self, key_id: str) -> KeyRecord | None: ...

    async def rotate(self, key_id: str, digest: str, grace_s: float) -> KeyRecord | None: ...

    async def revoke_config(self, digest: str) -> None: ...

    async def version(self) -> str | None: ...

    async def load(self) -> tuple[list[KeyRecord], frozenset[str]]: ...

    async def adopt(self, records: list[KeyRecord], revoked_config: frozenset[str]) -> bool: ...
