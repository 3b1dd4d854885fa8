"""The container and compose stack, checked statically (no Docker engine needed): the
services, ports, paths and tokens the files refer to agree with each other, with the
gateway's docker config and with the README's install command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import make_url

from gateway.config.schema import GatewayConfig, load_config, referenced_env_vars
from gateway.records.tables import metadata
from gateway.telemetry.metrics import Metrics
from gateway.validate_config import reference_problems
from tests.gatewayproc import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKER_CONFIG = REPO / "config" / "gateway.docker.yaml"
PROMETHEUS = REPO / "docker" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gateway.json"
SPEND_DASHBOARD = GRAFANA / "dashboards" / "spend.json"
POSTGRES_DATASOURCE = GRAFANA / "provisioning" / "datasources" / "postgres.yml"
_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def compose_value(value: str) -> str:
    """What compose substitutes when the variables are unset: their `:-` defaults."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2) is not None, (
            f"{value} has no default: `docker compose up` would need setup"
        )
        return match.group(2)

    return _COMPOSE_VAR.sub(default, value)


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


def test_gateway_service_runs_the_docker_config(
    compose: dict[str, Any], docker_config: GatewayConfig
) -> None:
    service = compose["services"]["gateway"]
    config_in_container = service["command"][service["command"].index("--config") + 1]
    assert mounts(service)["config/gateway.docker.yaml"] == config_in_container
    cmd = json.loads(dict(dockerfile_instructions())["CMD"])
    assert cmd[cmd.index("--config") + 1] == config_in_container  # the image alone too
    published = [p.rsplit(":", 1)[-1] for p in service["ports"]]
    assert str(docker_config.server.port) in published
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])  # trial defaults stay local
    # every variable the config needs without a default is provided by compose
    needed = referenced_env_vars(DOCKER_CONFIG.read_text())
    assert needed <= set(service["environment"]) | {"REDIS_URL"}
    assert reference_problems(docker_config) == []


def test_docker_config_needs_keys_off_localhost(docker_config: GatewayConfig) -> None:
    assert docker_config.server.host == "0.0.0.0"
    assert docker_config.auth.mode == "keys"
    assert [k.key for k in docker_config.auth.keys if k.key]
    assert docker_config.metrics.token
    assert docker_config.redis is not None and "//redis:" in docker_config.redis.url


def test_postgres_is_persistent_healthchecked_and_the_gateways_database(
    compose: dict[str, Any], docker_config: GatewayConfig
) -> None:
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:16\.\d+", postgres["image"]), postgres["image"]  # pinned
    assert "/var/lib/postgresql/data" in named_volumes(compose, postgres).values()
    assert "ports" not in postgres  # reachable on the compose network only
    env = service_env(compose, "postgres")
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:-") and env["POSTGRES_PASSWORD"]
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
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "mkdir -p /app/data && chown 10001 /app/data" in dockerfile


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
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


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


def test_dockerfile_is_slim_unprivileged_healthchecked_and_installs_like_the_readme(
    docker_config: GatewayConfig,
) -> None:
    steps = dockerfile_instructions()
    kinds = [kind for kind, _ in steps]
    assert dict(steps)["FROM"] == "python:3.11-slim"
    user = [arg for kind, arg in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    healthcheck = dict(steps)["HEALTHCHECK"]
    assert f"127.0.0.1:{docker_config.server.port}/healthz" in healthcheck
    # The locked dependencies, then the project without resolving anything: as the
    # README's install command does.
    runs = [arg for kind, arg in steps if kind == "RUN"]
    readme = (REPO / "README.md").read_text()
    for install in (
        "pip install --require-hashes --no-deps -r requirements.lock",
        "pip install --no-deps --no-build-isolation -e .",
    ):
        assert any(install in run for run in runs), install
        assert install in readme, install
    copied = [arg.split()[0] for kind, arg in steps if kind == "COPY"]
    assert {"gateway", "routers", "config", "pyproject.toml", "requirements.lock"} <= set(copied)
    assert copied.index("requirements.lock") < copied.index("gateway")  # layer caching
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
