"""Configuration: the schema and its loading, the model catalog and prices, provider
presets.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.config.catalog import (
    RESPONSES_API,
    UNPRICED,
    Catalog,
    Deployment,
    Route,
    build_catalog,
    request_cost_usd,
)
from gateway.config.catalog_data import ModelCatalog, default_catalog_path
from gateway.config.presets import PRESETS, preset
from gateway.config.pricing import cost_usd, estimate_tokens, exact_cost_usd
from gateway.config.redis_settings import RedisConfig
from gateway.config.schema import (
    DEFAULT_MAX_JSON_DEPTH,
    AuthConfig,
    CacheConfig,
    ConfigError,
    DatabaseConfig,
    GatewayConfig,
    KeyConfig,
    KeySpec,
    MetricsConfig,
    ProviderConfig,
    ProxySettings,
    RequestLimits,
    ServerConfig,
    SimulationConfig,
    default_config_path,
    env_config_path,
    environment_proxies,
    load_config,
    multiproc_dir,
    set_worker_environment,
)

__all__ = [
    "RESPONSES_API",
    "UNPRICED",
    "DEFAULT_MAX_JSON_DEPTH",
    "RequestLimits",
    "AuthConfig",
    "CacheConfig",
    "Catalog",
    "ConfigError",
    "DatabaseConfig",
    "Deployment",
    "exact_cost_usd",
    "GatewayConfig",
    "KeyConfig",
    "KeySpec",
    "MetricsConfig",
    "ModelCatalog",
    "PRESETS",
    "ProviderConfig",
    "ProxySettings",
    "RedisConfig",
    "Route",
    "ServerConfig",
    "SimulationConfig",
    "build_catalog",
    "cost_usd",
    "default_catalog_path",
    "default_config_path",
    "env_config_path",
    "environment_proxies",
    "estimate_tokens",
    "load_config",
    "multiproc_dir",
    "preset",
    "request_cost_usd",
    "set_worker_environment",
]
