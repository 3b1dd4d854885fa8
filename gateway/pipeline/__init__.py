"""A request's way through the providers: the fallback loop, one attempt, the relay of a
committed stream, accounting.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.pipeline.relay import ChatStream
from gateway.pipeline.run import Pipeline, PipelineParts

__all__ = [
    "ChatStream",
    "Pipeline",
    "PipelineParts",
]
