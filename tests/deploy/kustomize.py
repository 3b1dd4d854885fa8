"""deploy/kubernetes as `kubectl kustomize` renders it, and lookups into the objects, for
tests/deploy/test_kubernetes.py."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.routing import APIRoute
from starlette.routing import NoMatchFound

from gateway.api import health
from gateway.app import create_app
from gateway.config.schema import GatewayConfig, parse_config
from tests.gatewayproc import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
COMPONENT = KUBERNETES / "components" / "prometheus-operator"
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
# The oldest Kubernetes the manifests are for (docs/kubernetes.md) and kubectl's own.
KUBERNETES_VERSIONS = ("1.27", "1.32")
MONITORING = "monitoring.coreos.com/v1"
CUSTOM_KINDS = {(MONITORING, "ServiceMonitor"), (MONITORING, "PrometheusRule")}
# What the Secrets would hold: any value of the right shape.
DUMMY_SECRETS = {
    "DATABASE_URL": "postgresql+asyncpg://gateway:dummy@postgres:5432/gateway",
    "REDIS_URL": "redis://:dummy@redis:6379/0",
}
Object = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not installed: it renders the Kustomize overlays "
            "(Debian package `kubectl`; scripts/test installs it)",
            pytrace=False,
        )
    return path


@functools.cache
def render(overlay: str) -> tuple[Object, ...]:
    command = [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


class Rendered:
    """One overlay's objects, with lookups by kind."""

    def __init__(self, overlay: str) -> None:
        self.overlay = overlay
        self.objects = render(overlay)

    def all(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> Object:
        found = self.all(kind)
        assert len(found) == 1, f"{self.overlay}: {len(found)} objects of kind {kind}"
        return found[0]

    def maybe(self, kind: str) -> Object | None:
        found = self.all(kind)
        return found[0] if found else None

    @property
    def pod(self) -> Object:
        spec: Object = self.one("Deployment")["spec"]["template"]
        return spec

    @property
    def container(self) -> Object:
        containers: list[Object] = self.pod["spec"]["containers"]
        (container,) = [c for c in containers if c["name"] == "gateway"]
        return container

    def config_text(self) -> str:
        """The gateway config the pods read: the ConfigMap key at $GATEWAY_CONFIG."""
        path = Path(env_values(self.container)["GATEWAY_CONFIG"])
        mount = next(
            m for m in self.container["volumeMounts"] if m["mountPath"] == str(path.parent)
        )
        volume = next(v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"])
        config_map = self.one("ConfigMap")
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]
        text: str = config_map["data"][path.name]
        return text

    def config(self, with_providers: bool = True) -> GatewayConfig:
        env = dummy_env(self.container, with_providers)
        return parse_config(self.config_text(), f"{self.overlay} ConfigMap", env)


def secret_ref(var: Object) -> Object | None:
    ref: Object | None = var.get("valueFrom", {}).get("secretKeyRef")
    return ref


def env_values(container: Object) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


def dummy_env(container: Object, with_providers: bool = True) -> dict[str, str]:
    """The container's environment with a dummy for each Secret key it reads (without the
    optional ones when `with_providers` is false: their Secret not created)."""
    env = env_values(container)
    for var in container["env"]:
        ref = secret_ref(var)
        if ref is not None and (with_providers or not ref.get("optional", False)):
            env[var["name"]] = DUMMY_SECRETS.get(var["name"], f"dummy-{var['name'].lower()}")
    return env


def container_port(container: Object, port: int | str) -> int:
    """A port as a probe or Service names it (number or name) -> the container's number."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]]
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def dockerfile(instruction: str) -> str:
    """The runtime stage's (last) value of an instruction."""
    values = re.findall(rf"^{instruction} (.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    return str(values[-1]).strip()


def health_endpoint(config: GatewayConfig, path: str) -> Callable[..., Any] | None:
    """The gateway.api.health endpoint a GET of `path` reaches in the app built from
    `config` (nothing started), found by the route's name through the app's URL lookup."""
    app = create_app(config).app  # the FastAPI app inside the middleware
    for route in health.router.routes:
        if isinstance(route, APIRoute) and route.path == path and "GET" in (route.methods or ()):
            try:
                found = app.url_path_for(route.name)  # type: ignore[attr-defined]
            except NoMatchFound:
                return None  # the router is not part of the app
            return route.endpoint if found == path else None
    return None


def with_kind(kind: str) -> list[tuple[Rendered, Object]]:
    """(overlay, its object) for each overlay that has one object of `kind`; at least one."""
    found = [(r, obj) for r in map(Rendered, OVERLAYS) for obj in r.all(kind)]
    assert found, f"no overlay has a {kind}"
    return found
