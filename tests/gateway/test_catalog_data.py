from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config.catalog_data import CatalogError, ModelCatalog, default_catalog_path
from gateway.config.pricing import cost_usd

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_catalog.py"
UPSTREAM_FILE = REPO_ROOT / "config" / "sources" / "model_prices_and_context_window.json"
KEPT_PROVIDERS = {
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


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog.load(default_catalog_path())


def _raw_catalog() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    return raw


def test_default_path_is_repo_config() -> None:
    assert default_catalog_path() == REPO_ROOT / "config" / "catalog.json"


def test_generated_catalog_loads(catalog: ModelCatalog) -> None:
    assert len(catalog) > 300


def test_gpt_4o_mini(catalog: ModelCatalog) -> None:
    entry = catalog.lookup("gpt-4o-mini")
    assert entry is not None
    assert entry.provider == "openai"
    assert entry.mode == "chat"
    assert entry.input_price_per_mtok_usd == 0.15
    assert entry.output_price_per_mtok_usd == 0.6
    assert entry.context_window_tokens == 128000
    assert {"tools", "vision", "json_schema", "stream"} <= entry.capabilities
    assert "embeddings" not in entry.capabilities


def test_entry_prices_feed_cost_function(catalog: ModelCatalog) -> None:
    entry = catalog.lookup("gpt-4o-mini", "openai")
    assert entry is not None
    cost = cost_usd(1000, 500, 0, 0, entry.prices())
    assert cost == pytest.approx(0.00045, rel=1e-12)


def test_claude_found_without_prefix(catalog: ModelCatalog) -> None:
    entry = catalog.lookup("claude-sonnet-4-5", "anthropic")
    assert entry is not None
    assert entry.provider == "anthropic"
    assert entry.cached_input_price_per_mtok_usd == 0.3
    assert entry.cache_write_price_per_mtok_usd == 3.75


def test_gemini_found_via_prefix(catalog: ModelCatalog) -> None:
    # gemini-2.0-flash is only listed under vertex_ai in release 1.110, so use 2.5.
    entry = catalog.lookup("gemini-2.5-flash", "gemini")
    assert entry is not None
    assert entry.model == "gemini/gemini-2.5-flash"
    assert entry.provider == "gemini"
    assert catalog.lookup("gemini-2.5-flash") is None


@pytest.mark.parametrize(
    ("model", "kind", "expected_key"),
    [
        pytest.param("mistral-embed", "mistral", "mistral/mistral-embed", id="mistral"),
        pytest.param("openai/gpt-oss-120b", "groq", "groq/openai/gpt-oss-120b", id="groq"),
        pytest.param(
            "deepseek-ai/DeepSeek-V3",
            "together",
            "together_ai/deepseek-ai/DeepSeek-V3",
            id="together",
        ),
        pytest.param("deepseek-chat", "deepseek", "deepseek-chat", id="deepseek-exact"),
        pytest.param("gpt-4o", "azure", "azure/gpt-4o", id="azure-prefers-own-price"),
        pytest.param("gpt-4o", "openai", "gpt-4o", id="openai-exact"),
        pytest.param("azure/gpt-4o", None, "azure/gpt-4o", id="already-prefixed"),
    ],
)
def test_lookup_by_provider_kind(
    catalog: ModelCatalog, model: str, kind: str | None, expected_key: str
) -> None:
    entry = catalog.lookup(model, kind)
    assert entry is not None
    assert entry.model == expected_key


def test_unknown_model_is_none(catalog: ModelCatalog) -> None:
    assert catalog.lookup("no-such-model") is None
    assert catalog.lookup("no-such-model", "gemini") is None
    assert catalog.lookup("gpt-4o-mini", "not-a-kind") is not None


def test_alias_priced_like_target(catalog: ModelCatalog) -> None:
    raw = _raw_catalog()
    target_key = raw["claude-sonnet-latest"]["alias_of"]
    alias = catalog.lookup("claude-sonnet-latest", "anthropic")
    target = catalog.lookup(target_key)
    assert alias is not None and target is not None
    assert alias.model == "claude-sonnet-latest"
    assert alias.prices() == target.prices()


def test_embedding_model(catalog: ModelCatalog) -> None:
    entry = catalog.lookup("text-embedding-3-small")
    assert entry is not None
    assert entry.mode == "embedding"
    assert entry.capabilities == frozenset({"embeddings"})
    assert entry.input_price_per_mtok_usd == 0.02
    assert entry.output_price_per_mtok_usd == 0.0


def test_every_entry_has_kept_provider_and_mode() -> None:
    raw = _raw_catalog()
    assert "_source" in raw and "_license" in raw
    models = {key: spec for key, spec in raw.items() if not key.startswith("_")}
    for key, spec in models.items():
        concrete = models[spec["alias_of"]] if "alias_of" in spec else spec
        assert concrete["litellm_provider"] in KEPT_PROVIDERS, key
        assert concrete["mode"] in {"chat", "embedding"}, key


def test_every_file_entry_loads(catalog: ModelCatalog) -> None:
    models = [key for key in _raw_catalog() if not key.startswith("_")]
    assert len(catalog) == len(models)
    assert all(key in catalog for key in models)


def test_build_is_deterministic(tmp_path: Path) -> None:
    out = tmp_path / "catalog.json"
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--source", str(UPSTREAM_FILE), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == default_catalog_path().read_bytes()


def test_full_upstream_file_loads(catalog: ModelCatalog) -> None:
    full = ModelCatalog.load(UPSTREAM_FILE)
    assert len(full) > len(catalog)
    entry = full.lookup("gpt-4o-mini")
    assert entry == catalog.lookup("gpt-4o-mini")
    assert full.lookup("sample_spec") is None


def test_loader_tolerates_odd_entries(tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    spec = {
        "_comment": "ignored",
        "sample_spec": {"mode": "chat", "litellm_provider": "openai", "input_cost_per_token": 1},
        "image-model": {"mode": "image_generation", "litellm_provider": "openai"},
        "unpriced": {"mode": "chat", "litellm_provider": "openai"},
        "not-a-dict": 3,
        "weird": {
            "mode": "chat",
            "litellm_provider": "groq",
            "input_cost_per_token": 1e-06,
            "max_input_tokens": "lots",
            "max_tokens": 4096,
        },
        "loop-a": {"alias_of": "loop-b"},
        "loop-b": {"alias_of": "loop-a"},
        "dangling": {"alias_of": "missing"},
    }
    path.write_text(json.dumps(spec), encoding="utf-8")
    loaded = ModelCatalog.load(path)
    assert len(loaded) == 1
    weird = loaded.lookup("weird")
    assert weird is not None
    assert weird.context_window_tokens == 4096
    assert weird.max_output_tokens is None
    assert weird.output_price_per_mtok_usd == 0.0


def test_bad_json_names_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogError, match="broken.json"):
        ModelCatalog.load(path)


def test_non_object_json_names_path(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(CatalogError, match="list.json"):
        ModelCatalog.load(str(path))


def test_missing_file_is_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(CatalogError, match="absent.json") as info:
        ModelCatalog.load(path)
    assert isinstance(info.value, ValueError)
