"""Config loading: env substitution, validation errors with file:line, check-config CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.catalog import build_catalog
from gateway.config.catalog_data import ModelCatalog, default_catalog_path
from gateway.config.schema import ConfigError, default_config_path, load_config, parse_config
from gateway.validate_config import reference_problems
from tests.gatewayproc import REPO

GOOD = """
providers:
  main:
    kind: openai
    base_url: ${MAIN_URL:-http://127.0.0.1:9/v1}
    api_key: ${MAIN_KEY}
models:
  - name: chat
    provider: main
    model: gpt-4o-mini
routes:
  - name: auto
    policy: cheapest
    models: [chat]
"""


def test_env_substitution_and_defaults() -> None:
    config = parse_config(GOOD, "g.yaml", {"MAIN_KEY": "sk-x"})
    assert config.providers["main"].api_key == "sk-x"
    assert config.providers["main"].base_url == "http://127.0.0.1:9/v1"
    config = parse_config(GOOD, "g.yaml", {"MAIN_KEY": "k", "MAIN_URL": "http://h/v1"})
    assert config.providers["main"].base_url == "http://h/v1"


def test_provider_without_key_is_skipped_with_its_routes() -> None:
    config = parse_config(GOOD, "g.yaml", {})
    catalog = build_catalog(config, ModelCatalog.load(default_catalog_path()))
    assert catalog.routes == {} and catalog.deployments == {}
    assert "provider main (openai) skipped: no API key configured" in catalog.notes


def test_catalog_fills_prices_and_config_overrides() -> None:
    config = parse_config(GOOD, "g.yaml", {"MAIN_KEY": "k"})
    catalog = build_catalog(config, ModelCatalog.load(default_catalog_path()))
    deployment = catalog.deployments["main/gpt-4o-mini"]
    assert deployment.price_source == "catalog"
    assert deployment.prices.input_per_mtok_usd == pytest.approx(0.15)
    assert deployment.context_window_tokens == 128000
    override = GOOD.replace(
        "model: gpt-4o-mini", "model: gpt-4o-mini\n    input_price_per_mtok_usd: 9"
    )
    catalog = build_catalog(parse_config(override, "g", {"MAIN_KEY": "k"}), None)
    assert catalog.deployments["main/gpt-4o-mini"].prices.input_per_mtok_usd == 9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  port: nope\n", "g.yaml:2: server.port"),
        (
            "providers:\n  p:\n    kind: openai\n    timeouts:\n      read_s: x\n",
            "g.yaml:5: providers.p.timeouts.read_s",
        ),
        ("server:\n  prot: 1\n", "g.yaml:2: server.prot: Extra inputs are not permitted"),
        ("models:\n  - name: a\n    provider: p\n", "g.yaml:2: models.0.model: Field required"),
        ("a: [1,\n", "invalid YAML"),
    ],
    ids=["type", "nested", "unknown-field", "missing-field", "yaml"],
)
def test_errors_name_field_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "g.yaml", {})
    assert expected in str(info.value)


def test_reference_problems() -> None:
    text = GOOD.replace("provider: main", "provider: nobody").replace("cheapest", "magic")
    problems = reference_problems(parse_config(text, "g", {}))
    assert any("no provider named 'nobody'" in p for p in problems)
    assert any("unknown policy 'magic'" in p for p in problems)
    bad_params = GOOD.replace("policy: cheapest", "policy: cheapest\n    params: {speed: 1}")
    assert any("speed" in p for p in reference_problems(parse_config(bad_params, "g", {})))


def run_cli(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_check_config_cli(tmp_path: Path) -> None:
    result = run_cli("check-config", str(default_config_path()))
    assert result.returncode == 0, result.stderr
    assert "routes:" in result.stdout and "auto: policy=cheapest" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: nope\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode != 0 and f"{bad}:2: server.port" in result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: x\n    models: [nothing]\n")
    result = run_cli("serve", "--config", str(bad), "--port", "0")
    assert result.returncode != 0
    assert "unknown model or deployment 'nothing'" in result.stderr


def test_default_config_loads() -> None:
    config = load_config(default_config_path())
    assert config.auth.mode == "open" and config.server.host == "127.0.0.1"
    assert reference_problems(config) == []


def test_a_key_whose_variable_is_unset_stops_the_start(tmp_path: Path) -> None:
    """Accepted, it would refuse every request with a 401 while the gateway looks fine."""
    path = tmp_path / "keys.yaml"
    path.write_text(
        "auth:\n  mode: keys\n  keys:\n    - {name: svc, key: '${SURELY_UNSET_KEY_VAR:-}'}\n"
        "  admin_keys: ['${SURELY_UNSET_ADMIN_VAR:-}']\n"
    )
    for command in (["check-config", str(path)], ["serve", "--config", str(path), "--port", "0"]):
        result = run_cli(*command)
        assert result.returncode != 0
        assert "auth.keys[0].key: the key of 'svc' is empty" in result.stderr
        assert "auth.admin_keys[0]: empty" in result.stderr


def test_ready_is_logged_with_the_listen_url_only_once_bound(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:  # the port is taken: the bind fails, and nothing says ready
        result = run_cli("serve", "--port", str(port), cwd=tmp_path)
        assert result.returncode != 0
        assert "address already in use" in result.stderr
        assert "gateway ready" not in result.stderr
    finally:
        holder.close()
    proc = subprocess.Popen(  # in tmp_path: the embedded database goes to ./data
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "gateway ready" in line:
                assert f"listening on http://127.0.0.1:{port}" in line
                break
        else:
            raise AssertionError("no ready line")
        assert (tmp_path / "data" / "gateway.db").is_file()  # the embedded database
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # drains and closes the pipe


# --- environment substitution: the shell's and compose's forms --------------------------

TOKEN = "metrics:\n  token: '{}'\n"


@pytest.mark.parametrize(
    ("template", "environ", "expected"),
    [
        ("${V}", {}, ""),
        ("${V}", {"V": "v"}, "v"),
        ("${V:-d}", {}, "d"),
        ("${V:-d}", {"V": ""}, "d"),  # unset or empty: the default
        ("${V:-d}", {"V": "v"}, "v"),
        ("${V-d}", {}, "d"),
        ("${V-d}", {"V": ""}, ""),  # unset only: empty stays empty
        ("${V-d}", {"V": "v"}, "v"),
        ("${V:?needed}", {"V": "v"}, "v"),
        ("${V?needed}", {"V": ""}, ""),  # unset only: empty is fine
        ("a-${V:-x}-${W-y}-b", {"W": "w"}, "a-x-w-b"),
        ("$V and ${not a var}", {"V": "v"}, "$V and ${not a var}"),
    ],
)
def test_substitution_forms(template: str, environ: dict[str, str], expected: str) -> None:
    assert parse_config(TOKEN.format(template), "g.yaml", environ).metrics.token == expected


@pytest.mark.parametrize(
    ("template", "environ", "state"),
    [
        ("${V:?set V to the token}", {}, "unset"),
        ("${V:?set V to the token}", {"V": ""}, "empty"),
        ("${V?set V to the token}", {}, "unset"),
    ],
)
def test_a_required_variable_missing_is_an_error(
    template: str, environ: dict[str, str], state: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(TOKEN.format(template), "g.yaml", environ)
    assert info.value.errors == [
        f"g.yaml:2: metrics.token: environment variable V is {state}: set V to the token"
    ]


def test_every_missing_variable_is_named_with_its_line() -> None:
    text = (
        "auth:\n  keys:\n    - name: a\n      key: ${A:?}\n"
        "    - {name: b, key: '${B:?the key of b}'}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "g.yaml", {})
    assert info.value.errors == [
        "g.yaml:4: auth.keys.0.key: environment variable A is unset",
        "g.yaml:5: auth.keys.1.key: environment variable B is unset: the key of b",
    ]


@pytest.mark.parametrize(
    "redis",
    ["redis: {url: ''}", "redis: {url: '${REDIS_URL:-}', max_connections: 8}", "redis: {url: }"],
)
def test_an_empty_redis_url_means_no_redis(redis: str) -> None:
    assert parse_config(redis, "g.yaml", {"REDIS_URL": ""}).redis is None
    assert parse_config(redis, "g.yaml", {}).redis is None
    with pytest.raises(ConfigError, match="redis.url: Field required"):
        parse_config("redis: {max_connections: 8}", "g.yaml", {})  # no url at all: a mistake
    configured = parse_config(
        "redis: {url: '${REDIS_URL:-}'}", "g.yaml", {"REDIS_URL": "redis://r"}
    )
    assert configured.redis is not None and configured.redis.url == "redis://r"


def test_drain_timeout() -> None:
    assert parse_config("", "g.yaml", {}).server.drain_timeout_s == 25
    assert parse_config("server: {drain_timeout_s: 0.5}", "g", {}).server.drain_timeout_s == 0.5
    with pytest.raises(ConfigError, match="server.drain_timeout_s: Input should be greater than 0"):
        parse_config("server: {drain_timeout_s: 0}", "g.yaml", {})


# --- the container image's config, run without compose ------------------------------------

DOCKER_CONFIG = REPO / "config" / "gateway.docker.yaml"
SECRET_KEY = "gw-image-key-CANARY-41d7"


def test_docker_config_alone_runs_without_redis() -> None:
    config = load_config(DOCKER_CONFIG, {"GATEWAY_KEY": SECRET_KEY, "METRICS_TOKEN": "t"})
    assert config.redis is None  # REDIS_URL unset: memory stores, /readyz ready
    assert config.server.drain_timeout_s == 60
    assert [k.key for k in config.auth.keys] == [SECRET_KEY] and config.metrics.token == "t"
    assert reference_problems(config) == []


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_docker_config_refuses_to_start_without_its_secrets(command: str) -> None:
    """Unset, the key would refuse every request and /metrics would be open on 0.0.0.0."""
    args = (
        [command, str(DOCKER_CONFIG)]
        if command == "check-config"
        else [command, "--config", str(DOCKER_CONFIG), "--port", "0"]
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_KEY", "METRICS_TOKEN")}
    result = run_cli(*args, env=env)
    assert result.returncode == (1 if command == "check-config" else 2)
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1:3] for line in lines] == [
        ["auth.keys.0.key", "environment variable GATEWAY_KEY is unset"],
        ["metrics.token", "environment variable METRICS_TOKEN is unset"],
    ]
    # One set, one empty: only the empty one is named, and no value is ever shown.
    result = run_cli(*args, env={**env, "GATEWAY_KEY": SECRET_KEY, "METRICS_TOKEN": ""})
    assert result.returncode != 0
    assert "environment variable METRICS_TOKEN is empty" in result.stderr
    assert "GATEWAY_KEY" not in result.stderr and SECRET_KEY not in result.stderr
