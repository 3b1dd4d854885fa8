"""Build the gateway's trimmed model catalog from LiteLLM's price list.

Source: ``model_prices_and_context_window.json`` from the LiteLLM project
(BerriAI/litellm, https://github.com/BerriAI/litellm, release 1.110), published under the
MIT License, Copyright (c) 2023 Berri AI. All prices, context windows and capability flags
in the generated ``config/catalog.json`` come from that file.

The output keeps the upstream format (same field names, USD per token) so the gateway can be
pointed at a newer, untrimmed upstream file without conversion. Only chat and embedding models
of the providers the gateway talks to are kept, and only the fields the gateway reads.
``alias_of`` entries (e.g. ``claude-sonnet-latest``) are kept when their target is kept.

Usage: python scripts/build_catalog.py [--source PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT / "config" / "sources" / "model_prices_and_context_window.json"
DEFAULT_OUT = Path("config/catalog.json")

KEPT_MODES = frozenset({"chat", "embedding"})
KEPT_PROVIDERS = frozenset(
    {
        "openai",
        "anthropic",
        "gemini",
        "azure",
        "mistral",
        "groq",
        "together_ai",
        "deepseek",
        "openrouter",
    }
)
KEPT_FIELDS = frozenset(
    {
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "max_input_tokens",
        "max_output_tokens",
        "max_tokens",
        "mode",
        "litellm_provider",
        "supports_function_calling",
        "supports_vision",
        "supports_response_schema",
        "supports_tool_choice",
        "supports_prompt_caching",
        "output_vector_size",
    }
)
ALIAS_FIELD = "alias_of"

HEADER: dict[str, str] = {
    "_license": "MIT License, Copyright (c) 2023 Berri AI (LiteLLM project)",
    "_source": (
        "Trimmed from model_prices_and_context_window.json of LiteLLM "
        "(https://github.com/BerriAI/litellm, release 1.110) by scripts/build_catalog.py. "
        "Same format as upstream: costs are USD per token."
    ),
}


def is_kept(key: str, spec: object) -> bool:
    """A priced chat/embedding model of a provider the gateway supports."""
    if key.startswith(("sample_spec", "_")) or not isinstance(spec, dict):
        return False
    if spec.get("mode") not in KEPT_MODES or spec.get("litellm_provider") not in KEPT_PROVIDERS:
        return False
    # Entries without an input price cannot be billed; the gateway skips them anyway.
    return isinstance(spec.get("input_cost_per_token"), int | float)


def trim_entry(spec: dict[str, Any]) -> dict[str, Any]:
    return {field: spec[field] for field in sorted(spec) if field in KEPT_FIELDS}


def kept_aliases(source: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """Aliases whose target survived trimming (upstream aliases point at concrete entries)."""
    aliases: dict[str, Any] = {}
    for key, spec in source.items():
        if key in kept or not isinstance(spec, dict):
            continue
        target = spec.get(ALIAS_FIELD)
        if isinstance(target, str) and target in kept:
            aliases[key] = {ALIAS_FIELD: target}
    return aliases


def build(source: dict[str, Any]) -> dict[str, Any]:
    kept = {key: trim_entry(spec) for key, spec in source.items() if is_kept(key, spec)}
    models = kept | kept_aliases(source, kept)
    # Header first (sort_keys would put "_..." after upper-case and digit keys).
    return dict(HEADER) | {key: models[key] for key in sorted(models)}


def render(catalog: dict[str, Any]) -> str:
    return json.dumps(catalog, indent=1, ensure_ascii=False) + "\n"


def resolve_default(path: Path, given: bool) -> Path:
    """Defaults are relative to the repo root; user-given paths to the working directory."""
    return path if given or path.is_absolute() else REPO_ROOT / path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=None, help=f"default: {DEFAULT_SOURCE}")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    source_path = resolve_default(args.source or DEFAULT_SOURCE, args.source is not None)
    out_path = resolve_default(args.out or DEFAULT_OUT, args.out is not None)

    try:
        source = json.loads(source_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"error: cannot load {source_path}: {exc}\n")
        return 1
    if not isinstance(source, dict):
        sys.stderr.write(f"error: {source_path}: top-level JSON is not an object\n")
        return 1
    catalog = build(source)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render(catalog), encoding="utf-8")
    # sys.stdout rather than print: the project lint config bans print (T201).
    sys.stdout.write(f"wrote {len(catalog) - len(HEADER)} entries to {out_path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
