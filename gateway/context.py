"""Per-request facts gathered along the pipeline, for headers, the access log and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.types import Usage


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    stream: bool = False
    route: str | None = None
    policy: str | None = None
    deployment_id: str | None = None  # the deployment that answered
    attempt_deployment_id: str | None = None  # the one being tried right now
    provider: str | None = None
    model: str | None = None  # upstream model id of the deployment that answered
    attempts: int = 0
    fallbacks: int = 0
    retries: int = 0
    usage: Usage | None = None
    cost_usd: float | None = None
    saved_usd: float | None = None
    cache: str | None = None  # HIT | MISS | BYPASS, None when caching is off for the route
    ttft_s: float | None = None
    upstream_s: float | None = None
    status: int = 200
    error_code: str | None = None
    key_id: str | None = None
    key_name: str | None = None
    key_slot: str | None = None  # the key whose concurrency slot this request holds
    rate_headers: list[tuple[bytes, bytes]] | None = None  # x-ratelimit-*, after admission
    failed_attempts: list[str] | None = None  # "deployment: outcome" of each failed attempt
    team: str | None = None
    stream_outcome: str | None = None  # complete | error | client_disconnect
    # A `log_payloads` route's request body, and its answer: a chat.completion, or for a
    # stream something with `result()` that assembles one (None: the stream was cut).
    payload_request: object = None
    payload_response: object = None

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """The gateway's own response headers, as raw (lower-case name, value) pairs."""
        headers = [(b"x-request-id", self.request_id.encode("latin-1"))]
        if self.deployment_id:
            headers.append((b"x-gateway-deployment", self.deployment_id.encode("latin-1")))
            headers.append((b"x-gateway-provider", (self.provider or "").encode("latin-1")))
        if self.policy:
            headers.append((b"x-gateway-policy", self.policy.encode("latin-1")))
        if self.attempts:
            headers.append((b"x-gateway-attempts", b"%d" % self.attempts))
        if self.cache:
            headers.append((b"x-gateway-cache", self.cache.encode("latin-1")))
        if self.saved_usd is not None:
            headers.append((b"x-gateway-cost-saved-usd", b"%.10f" % self.saved_usd))
        if self.usage is not None and not self.stream:
            headers.append((b"x-gateway-tokens-input", b"%d" % self.usage.prompt_tokens))
            headers.append((b"x-gateway-tokens-output", b"%d" % self.usage.completion_tokens))
        if self.cost_usd is not None and not self.stream:
            headers.append((b"x-gateway-cost-usd", b"%.10f" % self.cost_usd))
        if self.rate_headers is not None:
            headers.extend(self.rate_headers)
        return headers
