"""A runtime gateway key as its stores hold it (hashes only), and what a store does.

A key's secret is shown once, at creation or rotation; the store keeps its SHA-256
digest. The store is SQL (`gateway.keys.sql_store`): the system of record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway import jsonutil
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

    def to_fields(self) -> dict[str, str]:
        def text(value: object) -> str:
            return "" if value is None else str(value)

        return {
            "id": self.id,
            "name": self.name,
            "team": text(self.team),
            "routes": "" if self.routes is None else jsonutil.dumps(list(self.routes)).decode(),
            "rpm": text(self.rpm),
            "tpm": text(self.tpm),
            "budget_usd": "" if self.budget_usd is None else repr(self.budget_usd),
            "budget_period": self.budget_period,
            "labels": jsonutil.dumps(dict(self.labels)).decode(),
            "max_concurrent": text(self.max_concurrent),
            "log_payloads": "1" if self.log_payloads else "",
            "created_at": repr(self.created_at),
            "revoked_at": "" if self.revoked_at is None else repr(self.revoked_at),
            "digest": self.digest,
            "old_digest": self.old_digest,
            "old_until": repr(self.old_until),
        }

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> KeyRecord:
        f = {decoded(k): decoded(v) for k, v in raw.items()}
        return cls(
            id=f["id"],
            name=f["name"],
            team=f.get("team") or None,
            routes=tuple(jsonutil.loads(f["routes"])) if f.get("routes") else None,
            rpm=int(f["rpm"]) if f.get("rpm") else None,
            tpm=int(f["tpm"]) if f.get("tpm") else None,
            budget_usd=float(f["budget_usd"]) if f.get("budget_usd") else None,
            budget_period=f.get("budget_period") or "month",
            labels=jsonutil.loads(f.get("labels") or "{}"),
            max_concurrent=int(f["max_concurrent"]) if f.get("max_concurrent") else None,
            log_payloads=bool(f.get("log_payloads")),
            created_at=float(f.get("created_at") or 0),
            revoked_at=float(f["revoked_at"]) if f.get("revoked_at") else None,
            digest=f.get("digest", ""),
            old_digest=f.get("old_digest", ""),
            old_until=float(f.get("old_until") or 0),
        )


def decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KeyRecords(Protocol):
    """A store that cannot be reached raises `RecordsUnavailableError`."""

    async def create(self, record: KeyRecord) -> bool: ...  # False: the name is taken

    async def revoke(self, key_id: str) -> KeyRecord | None: ...

    async def rotate(self, key_id: str, digest: str, grace_s: float) -> KeyRecord | None: ...

    async def revoke_config(self, digest: str) -> None: ...

    async def version(self) -> str | None: ...

    async def load(self) -> tuple[list[KeyRecord], frozenset[str]]: ...

    async def adopt(self, records: list[KeyRecord], revoked_config: frozenset[str]) -> bool: ...
