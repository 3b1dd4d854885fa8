"""Model catalog: prices, context windows and capabilities per model.

The file format is LiteLLM's ``model_prices_and_context_window.json`` (MIT, BerriAI/litellm):
a JSON object keyed by model name, prices in USD per token. ``config/catalog.json`` is a
trimmed copy built by ``scripts/build_catalog.py``; a full, newer upstream file loads too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from gateway.config.pricing import Prices
from gateway.config.schema import env_catalog_path

CHAT = "chat"
EMBEDDING = "embedding"
_MODES = frozenset({CHAT, EMBEDDING})
_ALIAS_FIELD = "alias_of"
# Upstream aliases point straight at concrete entries; the cap only guards against cycles.
_MAX_ALIAS_DEPTH = 8

# Gateway provider kind -> (catalog key prefix, litellm_provider values that price it).
# Anthropic and OpenAI models are listed without a prefix upstream.
_PROVIDER_KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "openai": ("", frozenset({"openai"})),
    "anthropic": ("", frozenset({"anthropic"})),
    "gemini": ("gemini/", frozenset({"gemini"})),
    "azure": ("azure/", frozenset({"azure"})),
    "mistral": ("mistral/", frozenset({"mistral"})),
    "groq": ("groq/", frozenset({"groq"})),
    "together": ("together_ai/", frozenset({"together_ai"})),
    "together_ai": ("together_ai/", frozenset({"together_ai"})),
    "deepseek": ("deepseek/", frozenset({"deepseek"})),
    "openrouter": ("openrouter/", frozenset({"openrouter"})),
}


class CatalogError(ValueError):
    """The catalog file is unreadable or not a LiteLLM-format JSON object."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    model: str
    provider: str
    mode: str
    input_price_per_mtok_usd: float
    output_price_per_mtok_usd: float
    cached_input_price_per_mtok_usd: float | None
    cache_write_price_per_mtok_usd: float | None
    context_window_tokens: int | None
    max_output_tokens: int | None
    capabilities: frozenset[str]

    def prices(self) -> Prices:
        return Prices(
            input_per_mtok_usd=self.input_price_per_mtok_usd,
            output_per_mtok_usd=self.output_price_per_mtok_usd,
            cached_input_per_mtok_usd=self.cached_input_price_per_mtok_usd,
            cache_write_per_mtok_usd=self.cache_write_price_per_mtok_usd,
        )


def default_catalog_path() -> Path:
    """$GATEWAY_CATALOG, else the source tree's config/catalog.json. An installed wheel
    has no source tree: the container image sets GATEWAY_CATALOG to its copy."""
    return env_catalog_path() or Path(__file__).resolve().parents[2] / "config" / "catalog.json"


def _number(value: object) -> float | None:
    # bool is an int subclass; a stray true/false must not become a price of 1/0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _per_mtok(value: object) -> float | None:
    per_token = _number(value)
    # round() strips float noise such as 1.5e-07 * 1e6 == 0.15000000000000002.
    return None if per_token is None else round(per_token * 1e6, 6)


def _token_count(value: object) -> int | None:
    # Upstream uses placeholder strings in sample_spec and the odd float like 2048.0.
    number = _number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return int(number)


def _capabilities(spec: Mapping[str, Any], mode: str) -> frozenset[str]:
    caps: set[str] = set()
    if mode == EMBEDDING:
        caps.add("embeddings")
    else:
        caps.add("stream")
    if spec.get("supports_function_calling") is True:
        caps.add("tools")
    if spec.get("supports_vision") is True:
        caps.add("vision")
    if spec.get("supports_response_schema") is True:
        caps.add("json_schema")
    return frozenset(caps)


def _parse_entry(model: str, spec: object) -> CatalogEntry | None:
    """One catalog entry, or None for non-model keys, other modes and unpriced entries."""
    if not isinstance(spec, Mapping):
        return None
    mode = spec.get("mode")
    provider = spec.get("litellm_provider")
    input_price = _per_mtok(spec.get("input_cost_per_token"))
    if mode not in _MODES or not isinstance(provider, str) or input_price is None:
        return None
    # Embedding entries often omit the output price: there is no output to bill.
    output_price = _per_mtok(spec.get("output_cost_per_token"))
    return CatalogEntry(
        model=model,
        provider=provider,
        mode=str(mode),
        input_price_per_mtok_usd=input_price,
        output_price_per_mtok_usd=0.0 if output_price is None else output_price,
        cached_input_price_per_mtok_usd=_per_mtok(spec.get("cache_read_input_token_cost")),
        cache_write_price_per_mtok_usd=_per_mtok(spec.get("cache_creation_input_token_cost")),
        context_window_tokens=_token_count(spec.get("max_input_tokens"))
        or _token_count(spec.get("max_tokens")),
        max_output_tokens=_token_count(spec.get("max_output_tokens")),
        capabilities=_capabilities(spec, str(mode)),
    )


def _is_model_key(key: str) -> bool:
    return not key.startswith(("_", "sample_spec"))


def _resolve_alias(raw: Mapping[str, Any], key: str) -> str | None:
    """Follow alias_of links to a concrete key; None for dangling or cyclic aliases."""
    current = key
    for _ in range(_MAX_ALIAS_DEPTH):
        spec = raw.get(current)
        target = spec.get(_ALIAS_FIELD) if isinstance(spec, Mapping) else None
        if not isinstance(target, str):
            return current
        current = target
    return None


def _parse_catalog(raw: Mapping[str, Any]) -> dict[str, CatalogEntry]:
    entries: dict[str, CatalogEntry] = {}
    for key, spec in raw.items():
        if _is_model_key(key):
            entry = _parse_entry(key, spec)
            if entry is not None:
                entries[key] = entry
    for key in raw:
        if key in entries or not _is_model_key(key):
            continue
        target = _resolve_alias(raw, key)
        if target is not None and target != key and target in entries:
            # An alias is priced like its target but keeps its own name.
            entries[key] = replace(entries[target], model=key)
    return entries


_DATED = re.compile(r"^(?P<base>.+?)[-@](?P<date>\d{8}|\d{4}-\d{2}-\d{2})$")


def _alias_candidates(model: str, entries: Mapping[str, CatalogEntry]) -> list[str]:
    """Other names the same priced model may go by, best first."""
    dated = _DATED.match(model)
    if dated is not None:
        return [dated.group("base")]
    if model.endswith("-latest"):
        base = model[: -len("-latest")]
        snapshots = sorted(
            (key for key in entries if (m := _DATED.match(key)) and m.group("base") == base),
            key=lambda key: _DATED.match(key).group("date").replace("-", ""),  # type: ignore[union-attr]
            reverse=True,
        )
        return [base, *snapshots]
    return []


def _read_json_object(path: Path) -> Mapping[str, Any]:
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise CatalogError(f"cannot read model catalog {path}: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"invalid JSON in model catalog {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"model catalog {path} must be a JSON object keyed by model name")
    return raw


class ModelCatalog:
    """Read-only model lookup, built once at startup."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, CatalogEntry]) -> None:
        self._entries: dict[str, CatalogEntry] = dict(entries)

    @classmethod
    def load(cls, path: str | Path) -> ModelCatalog:
        return cls(_parse_catalog(_read_json_object(Path(path))))

    def lookup(self, model: str, provider_kind: str | None = None) -> CatalogEntry | None:
        """The model's entry; failing that, the entry of the name the provider publishes
        it under: a dated snapshot (`claude-haiku-4-5-20251001`, `gpt-4o-2024-08-06`)
        priced as its undated model, a `-latest` alias as the newest dated snapshot of
        its base name. The entry keeps the name asked for."""
        entry = self._lookup(model, provider_kind)
        if entry is not None:
            return entry
        for alias in _alias_candidates(model, self._entries):
            entry = self._lookup(alias, provider_kind)
            if entry is not None:
                return replace(entry, model=model)
        return None

    def _lookup(self, model: str, provider_kind: str | None) -> CatalogEntry | None:
        """Exact key first, then the provider kind's prefixed key.

        When both exist, the one actually priced for that provider wins: "gpt-4o" on an
        Azure provider should use the "azure/gpt-4o" price, not OpenAI's.
        """
        exact = self._entries.get(model)
        kind = _PROVIDER_KINDS.get(provider_kind) if provider_kind is not None else None
        if kind is None:
            return exact
        prefix, providers = kind
        if exact is not None and exact.provider in providers:
            return exact
        prefixed = self._entries.get(prefix + model) if prefix else None
        return prefixed if prefixed is not None else exact

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model: object) -> bool:
        return model in self._entries

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries.values())
