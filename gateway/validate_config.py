"""Checks that span sections of the config, and the summaries `check-config` prints."""

from __future__ import annotations

import importlib.util

from gateway.config import (
    PRESETS,
    UNPRICED,
    Catalog,
    GatewayConfig,
    ModelCatalog,
    RequestLimits,
    build_catalog,
    default_catalog_path,
)
from gateway.dialects import PARSERS
from gateway.errors import GatewayError
from gateway.routing import Planner, RoutingControls, StatsStore, route_request
from gateway.types import JSONObject
from routers import POLICIES, PolicyConfigError, build_policy


def reference_problems(config: GatewayConfig) -> list[str]:
    problems: list[str] = []
    for name, provider in config.providers.items():
        if provider.kind not in PRESETS:
            problems.append(
                f"providers.{name}.kind: unknown kind {provider.kind!r} "
                f"(known: {', '.join(sorted(PRESETS))})"
            )
        if provider.kind in ("openai_compatible", "azure") and not provider.base_url:
            problems.append(f"providers.{name}.base_url: required for kind {provider.kind}")
    problems.extend(_key_problems(config))
    seen: set[str] = set()
    for index, model in enumerate(config.models):
        if model.provider not in config.providers:
            problems.append(f"models[{index}].provider: no provider named {model.provider!r}")
        elif model.mode == "embedding" and config.providers[model.provider].kind == "anthropic":
            problems.append(f"models[{index}].mode: Anthropic has no embeddings API")
        elif model.responses_api and preset_adapter(config, model.provider) != "openai":
            kind = config.providers[model.provider].kind
            problems.append(
                f"models[{index}].responses_api: the Responses API is OpenAI's; provider "
                f"{model.provider!r} is of kind {kind!r}"
            )
        deployment_id = model.id or f"{model.provider}/{model.model}"
        if deployment_id in seen:
            problems.append(f"models[{index}]: duplicate deployment id {deployment_id!r}")
        seen.add(deployment_id)
    known = seen | {m.name for m in config.models}
    for index, route in enumerate(config.routes):
        problems.extend(_route_problems(index, route.name, route.models, known))
        problems.extend(_policy_problems(f"routes[{index}]", route.policy, route.params))
    problems.extend(_policy_problems("routing.default_policy", config.routing.default_policy, {}))
    if config.server.upstream_transport == "httpx-aiohttp" and not _installed("httpx_aiohttp"):
        problems.append(
            "server.upstream_transport: httpx-aiohttp needs the httpx-aiohttp package "
            "(pip install -e '.[bench]')"
        )
    return problems


def preset_adapter(config: GatewayConfig, provider: str) -> str | None:
    kind = config.providers[provider].kind
    return PRESETS[kind].adapter if kind in PRESETS else None


def _key_problems(config: GatewayConfig) -> list[str]:
    """An empty key (its environment variable unset) would refuse every request with a
    401 while the gateway looks healthy: a start-up error naming it instead."""
    problems = [
        f"auth.keys[{index}].key: the key of {spec.name!r} is empty (is the environment "
        "variable it names set?)"
        for index, spec in enumerate(config.auth.keys)
        if not spec.key.strip()
    ]
    problems += [
        f"auth.admin_keys[{index}]: empty (is the environment variable it names set?)"
        for index, key in enumerate(config.auth.admin_keys)
        if not key.strip()
    ]
    return problems


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _route_problems(index: int, name: str, refs: list[str], known: set[str]) -> list[str]:
    missing = [ref for ref in refs if ref not in known]
    if not refs:
        return [f"routes[{index}] ({name}).models: must list at least one model"]
    return [
        f"routes[{index}] ({name}).models: unknown model or deployment {ref!r}" for ref in missing
    ]


def _policy_problems(where: str, policy: str, params: dict[str, object]) -> list[str]:
    if policy not in POLICIES:
        return [f"{where}.policy: unknown policy {policy!r} (known: {', '.join(sorted(POLICIES))})"]
    try:
        build_policy(policy, params)
    except PolicyConfigError as exc:
        return [f"{where}.params: {exc}"]
    return []


def pricing_problems(catalog: Catalog) -> list[str]:
    """Deployments of active providers priced neither in the config nor in the catalog:
    they would be billed $0 in headers, metrics, budgets and reports (rule 22)."""
    return [
        f"models: deployment {d.id!r} ({d.kind} model {d.model!r}) has no price in the "
        "config or the model catalog. Set input_price_per_mtok_usd and "
        "output_price_per_mtok_usd on it, or `free: true` if it really costs nothing."
        for d in catalog.deployments.values()
        if d.price_source == UNPRICED
    ]


def load_catalog(config: GatewayConfig) -> Catalog:
    return build_catalog(config, ModelCatalog.load(config.catalog_path or default_catalog_path()))


def describe_config(config: GatewayConfig) -> tuple[list[str], list[str]]:
    problems = reference_problems(config)
    if problems:
        return problems, []
    catalog = load_catalog(config)
    lines = [f"note: {note}" for note in catalog.notes]
    lines.append("models:")
    for d in catalog.deployments.values():
        lines.append(
            f"  {d.id}: name={d.name} provider={d.provider} ({d.kind}) model={d.model} "
            f"in=${d.prices.input_per_mtok_usd}/Mtok out=${d.prices.output_per_mtok_usd}/Mtok "
            f"({d.price_source}) window={d.context_window_tokens} "
            f"caps={','.join(sorted(d.capabilities))}"
        )
    lines.append("routes:")
    for route in catalog.routes.values():
        lines.append(f"  {route.name}: policy={route.policy} -> {', '.join(route.deployment_ids)}")
    return [], lines


def explain_body(
    config: GatewayConfig, raw: bytes, dialect: str = "chat"
) -> tuple[JSONObject, JSONObject | None]:
    """The routing plan for a body in `dialect` (a name of PARSERS), or its error."""
    catalog = load_catalog(config)
    stats = StatsStore(
        cooldown_failures=config.routing.cooldown_failures, cooldown_s=config.routing.cooldown_s
    )
    planner = Planner(catalog.routes, catalog.deployments, stats)
    try:
        req = PARSERS[dialect](raw, RequestLimits.from_server(config.server))
        route = catalog.route_for(req.model)
    except GatewayError as error:
        return {}, error.to_openai_body()
    request = route_request(
        req.prompt_chars(), req.max_tokens, req.required_capabilities(), RoutingControls()
    )
    plan = planner.plan(route, request)
    return {"route": route.name, **plan.to_dict()}, None
