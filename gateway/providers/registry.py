"""Provider kind -> adapter class, and building the adapters of a config."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from gateway.config import ProviderConfig, preset
from gateway.providers.base import Provider

# Adapter modules are imported only when a config uses them (no work at import time).
ADAPTERS: dict[str, str] = {
    "openai": "gateway.providers.openai:OpenAIProvider",
    "simulated": "gateway.providers.simulated:SimulatedProvider",
    "azure": "gateway.providers.azure:AzureProvider",
    "anthropic": "gateway.providers.anthropic.adapter:AnthropicProvider",
    "gemini": "gateway.providers.gemini.adapter:GeminiProvider",
}


def adapter_class(kind: str) -> type[Provider]:
    module_name, _, class_name = ADAPTERS[preset(kind).adapter].partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_providers(configs: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, config in configs.items():
        cls = adapter_class(config.kind)
        providers[name] = cls(name, config)  # type: ignore[call-arg]  # Protocol has no __init__
    return providers
