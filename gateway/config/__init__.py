"""Configuration: the schema and its loading, the model catalog and prices, provider
presets.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.config.catalog import Catalog, Deployment, Route, build_catalog
from gateway.config.catalog_data import ModelCatalog, default_catalog_path
from gateway.config.presets import PRESETS, preset
from gateway.config.pricing import cost_usd, estimate_tokens
from gateway.config.schema import (
    AuthConfig,
    CacheConfig,
    ConfigError,
    GatewayConfig,
    KeyConfig,
    MetricsConfig,
    ProviderConfig,
    RedisConfig,
    ServerConfig,
    SimulationConfig,
    default_config_path,
    env_config_path,
    load_config,
    multiproc_dir,
    set_worker_environment,
)

__all__ = [
    "AuthConfig",
    "CacheConfig",
    "Catalog",
    "ConfigError",
    "Deployment",
    "GatewayConfig",
    "KeyConfig",
    "MetricsConfig",
    "ModelCatalog",
    "PRESETS",
    "ProviderConfig",
    "RedisConfig",
    "Route",
    "ServerConfig",
    "SimulationConfig",
    "build_catalog",
    "cost_usd",
    "default_catalog_path",
    "default_config_path",
    "env_config_path",
    "estimate_tokens",
    "load_config",
    "multiproc_dir",
    "preset",
    "set_worker_environment",
]
