"""What the benchmark can run. Each scenario names a gateway config variant and a load.

New scenarios (issue 8: slow streams, cache hits, several workers) are added here as
one more `Scenario`; `bench.run` runs whatever this table lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Variant = Literal["minimal", "realistic"]


@dataclass(frozen=True, slots=True)
class Pacing:
    """A paced upstream (bench.slow_upstream): like a model generating tokens."""

    ttft_ms: float = 200.0
    chunks: int = 20
    interval_ms: float = 50.0

    @property
    def stream_s(self) -> float:
        """How long one stream takes at best: the ideal rate is connections / this."""
        return (self.ttft_ms + (self.chunks - 1) * self.interval_ms) / 1000


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    variant: Variant  # which generated gateway config (bench.gateway)
    stream: bool = False
    unique_bodies: bool = False  # every request differs: a response cache always misses
    count_events: bool = False  # wrk counts SSE events and unfinished streams
    pacing: Pacing | None = None  # None: nginx answers at once; else the paced upstream
    connections: tuple[int, ...] = ()  # empty: the --concurrency levels
    features: frozenset[str] | None = None  # realistic variant: None = all of them


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "chat",
            "non-streaming chat; minimal config: open auth, one deployment, defaults",
            "minimal",
        ),
        Scenario(
            "realistic",
            "non-streaming chat; gateway key, `cheapest` over 3 deployments, metrics, "
            "Redis, cache on (every request a miss), request log and ledger in SQLite",
            "realistic",
            unique_bodies=True,
        ),
        Scenario(
            "realistic-no-records",
            "`realistic` without the request log and spend ledger (database.records: "
            "false): what writing them costs",
            "realistic",
            unique_bodies=True,
            features=frozenset({"key", "routing", "cache", "metrics"}),
        ),
        Scenario(
            "realistic-limits",
            "`realistic` with rpm and tpm limits on its key (never reached): each "
            "request admitted and settled in Redis",
            "realistic",
            unique_bodies=True,
            features=frozenset({"key", "routing", "cache", "metrics", "records", "limits"}),
        ),
        Scenario(
            "cache-hits",
            "non-streaming chat, every request a response-cache hit (Redis backend; the "
            "probe stores the entry); realistic config",
            "realistic",
        ),
        Scenario(
            "stream",
            "streaming chat (12 SSE events per answer); minimal config",
            "minimal",
            stream=True,
            count_events=True,
        ),
        Scenario(
            "streams-1k",
            "1,000 concurrent streams; paced upstream: 200 ms to the first token, then 20 "
            "chunks 50 ms apart; minimal config",
            "minimal",
            stream=True,
            count_events=True,
            pacing=Pacing(),
            connections=(1000,),
        ),
    )
}

# The cost of each feature of `realistic` alone, at c=1: its +p50 minus `feature-none`'s.
for _feature in ("none", "key", "routing", "cache", "metrics", "records"):
    SCENARIOS[f"feature-{_feature}"] = Scenario(
        f"feature-{_feature}",
        f"realistic config with only `{_feature}` on; at c=1",
        "realistic",
        unique_bodies=True,
        features=frozenset() if _feature == "none" else frozenset({_feature}),
        connections=(1,),
    )
FEATURE_SCENARIOS = tuple(n for n in SCENARIOS if n.startswith("feature-"))

DEFAULT_SCENARIOS = ("chat", "realistic", "stream", "streams-1k")
