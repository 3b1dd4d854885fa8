"""Provider adapters: each translates the normalized request out and the answer back."""

from __future__ import annotations

from gateway.providers.base import Provider, StreamTranslator
from gateway.providers.registry import build_providers
from gateway.providers.simulated import SimulatedTransport

__all__ = [
    "Provider",
    "SimulatedTransport",
    "StreamTranslator",
    "build_providers",
]
