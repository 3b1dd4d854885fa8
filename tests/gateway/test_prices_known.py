"""No silent $0 (rule 22): a deployment priced neither in the config nor in the catalog
stops `serve` and `check-config` with a message naming it and the fix; `free: true` and
the local kinds (vllm, ollama, simulated) are free and say so; the catalog resolves the
names providers publish (dated snapshots, `-latest`); every model the shipped configs
name is priced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ModelCatalog, default_catalog_path, load_config
from gateway.validate_config import load_catalog, pricing_problems, reference_problems

REPO = Path(__file__).resolve().parents[2]
UNPRICED = """
providers:
  anthropic: {kind: anthropic, api_key: sk-ant-test}
  local: {kind: vllm, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: claude-old, provider: anthropic, model: claude-3-5-haiku-latest}
  - {name: own-model, provider: local, model: my-finetune}
"""
FREE = UNPRICED.replace(
    "model: claude-3-5-haiku-latest}", "model: claude-3-5-haiku-latest, free: true}"
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_an_unpriced_deployment_stops_check_config_and_serve(tmp_path: Path) -> None:
    path = tmp_path / "unpriced.yaml"
    path.write_text(UNPRICED)
    for command in (["check-config", str(path)], ["serve", "--config", str(path), "--port", "0"]):
        result = run_cli(*command)
        assert result.returncode != 0
        assert "anthropic/claude-3-5-haiku-latest" in result.stderr
        assert "input_price_per_mtok_usd" in result.stderr and "free: true" in result.stderr
        assert "my-finetune" not in result.stderr  # a local kind: free


def test_free_and_local_deployments_are_said_to_be_free(tmp_path: Path) -> None:
    path = tmp_path / "free.yaml"
    path.write_text(FREE)
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("claude-3-5-haiku-latest" in line and "(free)" in line for line in lines)
    assert any("my-finetune" in line and "(free (local kind))" in line for line in lines)


@pytest.mark.parametrize("name", ["gateway.yaml", "gateway.docker.yaml"])
def test_every_model_of_the_shipped_configs_is_priced(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GATEWAY_KEY"):
        monkeypatch.setenv(variable, "set-for-the-test")
    monkeypatch.setenv("METRICS_TOKEN", "set-for-the-test")
    config = load_config(REPO / "config" / name)
    assert reference_problems(config) == []
    catalog = load_catalog(config)
    assert {d.provider for d in catalog.deployments.values()} >= {"openai", "anthropic", "gemini"}
    assert pricing_problems(catalog) == []
    assert all(d.price_source in ("config", "catalog") for d in catalog.deployments.values())


@pytest.mark.parametrize(
    ("published", "kind", "priced_as"),
    [
        ("claude-haiku-4-5-20251001", "anthropic", "claude-haiku-4-5"),
        ("gpt-4o-2024-11-20", "openai", "gpt-4o"),
        ("claude-sonnet-4-5-latest", "anthropic", "claude-sonnet-4-5"),
    ],
)
def test_the_catalog_resolves_published_names(published: str, kind: str, priced_as: str) -> None:
    catalog = ModelCatalog.load(default_catalog_path())
    entry, base = catalog.lookup(published, kind), catalog.lookup(priced_as, kind)
    assert entry is not None and base is not None
    assert entry.model == published
    assert entry.input_price_per_mtok_usd == base.input_price_per_mtok_usd
    assert entry.output_price_per_mtok_usd == base.output_price_per_mtok_usd
    assert catalog.lookup("claude-3-5-haiku-latest", "anthropic") is None  # retired: unpriced
