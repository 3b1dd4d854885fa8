"""HTTP to upstreams: the seam (Upstream and its request, response and stream types), the
native client, httpx, SSE decoding.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.transport.base import (
    Timeouts,
    Upstream,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)
from gateway.transport.dispatch import DispatchingUpstream, http_upstream
from gateway.transport.sse import EventBatches

__all__ = [
    "DispatchingUpstream",
    "EventBatches",
    "Timeouts",
    "Upstream",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamStream",
    "http_upstream",
]
