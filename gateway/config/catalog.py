"""The resolved view of the config: deployments, routes and the public model names.

Built once at start-up. Providers whose key is missing are skipped (one log line
each) with their deployments; prices and windows come from the deployment's own
config, else from the model catalog (config/catalog.json), else safe defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config.catalog_data import CatalogEntry, ModelCatalog
from gateway.config.presets import PRESETS, needs_api_key, preset
from gateway.config.pricing import Prices, cost_usd
from gateway.config.schema import GatewayConfig, ModelConfig, ProviderConfig, RouteConfig
from gateway.errors import ModelNotFoundError
from gateway.types import Usage

log = logging.getLogger("gateway")

DEFAULT_CONTEXT_WINDOW_TOKENS = 128_000
DEFAULT_CHAT_CAPABILITIES = frozenset({"stream", "tools", "json_schema"})
# The capability of a deployment with `responses_api: true`, which a /v1/responses request
# with built-in tools (or other items only OpenAI's Responses API serves) requires.
RESPONSES_API = "responses_api"


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    name: str  # public model name
    provider: str  # provider config name
    kind: str
    model: str  # the upstream's model id (Azure: deployment name)
    mode: str
    prices: Prices
    context_window_tokens: int
    max_output_tokens: int | None
    capabilities: frozenset[str]
    quality: float = 0.5
    quality_by_tag: Mapping[str, float] = field(default_factory=dict)
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    price_source: str = "config"  # config | catalog | none
    simulated: bool = False
    responses_api: bool = False  # /v1/responses is forwarded to its Responses API as it came

    @property
    def has_quota(self) -> bool:
        """An rpm or tpm quota: the planner asks such a deployment for its headroom."""
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    policy: str
    deployment_ids: tuple[str, ...]
    params: Mapping[str, object]
    mode: str
    cache_enabled: bool | None = None
    cache_ttl_s: int | None = None
    log_payloads: bool = False  # the request log keeps its requests' bodies and answers


class Catalog:
    def __init__(
        self,
        deployments: dict[str, Deployment],
        routes: dict[str, Route],
        notes: tuple[str, ...] = (),
    ) -> None:
        self.deployments = deployments
        self.routes = routes
        self.notes = notes  # what was left out and why: the caller logs it, once

    def route_for(self, model: str, mode: str = "chat") -> Route:
        route = self.routes.get(model)
        if route is None or route.mode != mode:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
            )
        return route

    def deployments_of(self, route: Route) -> list[Deployment]:
        return [self.deployments[i] for i in route.deployment_ids]


def active_providers(config: GatewayConfig) -> dict[str, ProviderConfig]:
    return {
        name: provider
        for name, provider in config.providers.items()
        if provider.api_key or not needs_api_key(provider.kind)
    }


def build_catalog(config: GatewayConfig, models: ModelCatalog | None) -> Catalog:
    providers = active_providers(config)
    notes = [
        f"provider {name} ({provider.kind}) skipped: no API key configured"
        for name, provider in config.providers.items()
        if name not in providers
    ]
    deployments: dict[str, Deployment] = {}
    for spec in config.models:
        provider = providers.get(spec.provider)
        if provider is None:
            continue
        entry = models.lookup(spec.model, provider.kind) if models else None
        deployment = _deployment(spec, provider, entry)
        deployments[deployment.id] = deployment
    routes = _implicit_routes(deployments, config.routing.default_policy)
    for route_spec in config.routes:
        route = _explicit_route(route_spec, deployments)
        if route is not None:
            routes[route.name] = route
        else:
            notes.append(f"route {route_spec.name} skipped: none of its deployments is active")
    return Catalog(deployments, routes, tuple(notes))


def _deployment(
    spec: ModelConfig, provider: ProviderConfig, entry: CatalogEntry | None
) -> Deployment:
    prices, source = _prices(spec, provider, entry)
    return Deployment(
        id=spec.id or f"{spec.provider}/{spec.model}",
        name=spec.name,
        provider=spec.provider,
        kind=provider.kind,
        model=spec.model,
        mode=spec.mode,
        prices=prices,
        context_window_tokens=spec.context_window_tokens
        or (entry.context_window_tokens if entry else None)
        or DEFAULT_CONTEXT_WINDOW_TOKENS,
        max_output_tokens=spec.max_output_tokens or (entry.max_output_tokens if entry else None),
        capabilities=_capabilities(spec, entry, provider.kind),
        quality=spec.quality,
        quality_by_tag=dict(spec.quality_by_tag),
        weight=spec.weight,
        rpm=spec.rpm,
        tpm=spec.tpm,
        price_source=source,
        simulated=provider.kind == "simulated",
        responses_api=spec.responses_api,
    )


# Kinds that run on hardware of your own: free unless the config prices them.
LOCAL_KINDS = frozenset({"simulated", "vllm", "ollama"})
UNPRICED = "none"  # a price source: nowhere (a configuration error: `pricing_problems`)


def _prices(
    spec: ModelConfig, provider: ProviderConfig, entry: CatalogEntry | None
) -> tuple[Prices, str]:
    if spec.input_price_per_mtok_usd is not None or spec.output_price_per_mtok_usd is not None:
        return Prices(
            input_per_mtok_usd=spec.input_price_per_mtok_usd or 0.0,
            output_per_mtok_usd=spec.output_price_per_mtok_usd or 0.0,
            cached_input_per_mtok_usd=spec.cached_input_price_per_mtok_usd,
        ), "config"
    if spec.free:
        return Prices(0.0, 0.0), "free"
    if entry is not None:
        return Prices(
            input_per_mtok_usd=entry.input_price_per_mtok_usd,
            output_per_mtok_usd=entry.output_price_per_mtok_usd,
            cached_input_per_mtok_usd=entry.cached_input_price_per_mtok_usd,
            cache_write_per_mtok_usd=entry.cache_write_price_per_mtok_usd,
        ), "catalog"
    if provider.kind in LOCAL_KINDS:
        return Prices(0.0, 0.0), "free (local kind)"
    return Prices(0.0, 0.0), UNPRICED


def _capabilities(spec: ModelConfig, entry: CatalogEntry | None, kind: str) -> frozenset[str]:
    if spec.responses_api:  # what only a native /v1/responses request needs (built-in tools)
        return _capabilities_of(spec, entry, kind) | {RESPONSES_API}
    return _capabilities_of(spec, entry, kind)


def _capabilities_of(spec: ModelConfig, entry: CatalogEntry | None, kind: str) -> frozenset[str]:
    if spec.mode == "embedding":
        return frozenset(spec.capabilities or {"embeddings"})
    parameters = preset(kind).parameters if kind in PRESETS else frozenset()
    if spec.capabilities is not None:
        return frozenset(spec.capabilities) | parameters
    if entry is not None:
        return entry.capabilities | {"stream"} | parameters
    return DEFAULT_CHAT_CAPABILITIES | parameters


def _implicit_routes(deployments: dict[str, Deployment], policy: str) -> dict[str, Route]:
    """Every public model name is a route over the deployments that carry it."""
    grouped: dict[str, list[Deployment]] = {}
    for deployment in deployments.values():
        grouped.setdefault(deployment.name, []).append(deployment)
    return {
        name: Route(name, policy, tuple(d.id for d in group), {}, group[0].mode)
        for name, group in grouped.items()
    }


def _explicit_route(spec: RouteConfig, deployments: dict[str, Deployment]) -> Route | None:
    ids: list[str] = []
    for ref in spec.models:
        matches = [d.id for d in deployments.values() if ref in (d.id, d.name)]
        ids.extend(i for i in matches if i not in ids)
    if not ids:
        return None
    mode = deployments[ids[0]].mode
    return Route(
        spec.name,
        spec.policy,
        tuple(ids),
        dict(spec.params),
        mode,
        spec.cache.enabled,
        spec.cache.ttl_s,
        spec.log_payloads,
    )


def request_cost_usd(usage: Usage, d: Deployment) -> float:
    """What `usage` cost on deployment `d`, at its prices."""
    return cost_usd(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        d.prices,
    )
