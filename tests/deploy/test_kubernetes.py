"""deploy/kubernetes: every overlay rendered by `kubectl kustomize`, each object validated
offline against the Kubernetes JSON schemas (kubernetes-validate), the Prometheus
Operator's custom resources checked by hand, and the invariants that tie the manifests
to the gateway: probe paths it serves, a grace period that outlasts its drain, one port
everywhere, its config valid, its secrets referenced and never defined."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.api import health
from gateway.app import CUT_REQUESTS_BOUND_S
from tests.deploy.kustomize import (
    ALERTS,
    COMPONENT,
    CUSTOM_KINDS,
    DUMMY_SECRETS,
    KUBERNETES_VERSIONS,
    MONITORING,
    OVERLAYS,
    Object,
    Rendered,
    container_port,
    dockerfile,
    dummy_env,
    health_endpoint,
    quantity,
    render,
    secret_ref,
    selects,
    with_kind,
)
from tests.gatewayproc import REPO


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param)


def test_there_are_overlays_and_kubectl_renders_them() -> None:
    assert {"production", "minimal"} <= set(OVERLAYS)
    for overlay in OVERLAYS:
        assert {o["kind"] for o in render(overlay)} >= {"Deployment", "Service", "ConfigMap"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered: Rendered, version: str) -> None:
    checked = []
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue  # no schema shipped: test_service_monitor_*, test_prometheus_rule_*
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        checked.append(obj["kind"])
    assert "Deployment" in checked and "Service" in checked


def test_the_strict_schema_rejects_a_misspelt_field(rendered: Rendered) -> None:
    """The validation above can fail: an unknown field is an error in strict mode."""
    deployment = copy.deepcopy(rendered.one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_namespaced_object_is_in_the_overlays_restricted_namespace(
    rendered: Rendered,
) -> None:
    namespace = rendered.one("Namespace")
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == name, obj["kind"]


def test_the_pods_run_unprivileged_as_the_images_user(rendered: Rendered) -> None:
    uid, gid = (int(part) for part in dockerfile("USER").split(":"))
    assert uid != 0 and gid != 0
    pod = rendered.pod["spec"]
    for context in (pod["securityContext"], rendered.container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert (context.get("runAsUser", uid), context.get("runAsGroup", gid)) == (uid, gid)
    assert type(pod["securityContext"]["runAsUser"]) is int  # numeric: runAsNonRoot checks it
    container = rendered.container["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["name"] == pod["serviceAccountName"]
    assert account["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # a Service `gateway` would set GATEWAY_PORT


def test_only_emptydirs_are_writable_and_tmp_is_one(rendered: Rendered) -> None:
    volumes = {v["name"]: v for v in rendered.pod["spec"]["volumes"]}
    writable = {
        m["mountPath"]: volumes[m["name"]]
        for m in rendered.container["volumeMounts"]
        if not m.get("readOnly", False)
    }
    assert "/tmp" in writable  # worker processes' metrics files
    for path, volume in writable.items():
        assert "emptyDir" in volume and volume["emptyDir"]["sizeLimit"], path


def test_resources_are_requested_and_limited(rendered: Rendered) -> None:
    resources = rendered.container["resources"]
    for name in ("cpu", "memory"):
        request, limit = resources["requests"][name], resources["limits"][name]
        assert 0 < quantity(request) <= quantity(limit), (name, request, limit)


def test_probes_ask_the_gateways_health_routes(rendered: Rendered) -> None:
    config = rendered.config()
    expected = {
        "readinessProbe": health.readyz,  # config loaded and Redis answering
        "livenessProbe": health.healthz,  # the process answers
        "startupProbe": health.healthz,
    }
    for probe, endpoint in expected.items():
        get = rendered.container[probe]["httpGet"]
        assert health_endpoint(config, get["path"]) is endpoint, (probe, get["path"])
        assert container_port(rendered.container, get["port"]) == config.server.port, probe


def test_one_port_everywhere(rendered: Rendered) -> None:
    config = rendered.config()
    assert config.server.host == "0.0.0.0"
    (port,) = rendered.container["ports"]
    assert port["containerPort"] == config.server.port
    service = rendered.one("Service")
    labels = rendered.pod["metadata"]["labels"]
    assert selects(service["spec"]["selector"], labels)
    (service_port,) = service["spec"]["ports"]
    assert container_port(rendered.container, service_port["targetPort"]) == config.server.port


def prestop_sleep_s(container: Object) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # the kubelet's own sleep action
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def test_grace_period_outlasts_the_prestop_sleep_and_the_drain(rendered: Rendered) -> None:
    drain_s = rendered.config().server.drain_timeout_s
    sleep_s = prestop_sleep_s(rendered.container)
    assert sleep_s >= 5  # endpoints removed before the gateway stops accepting
    grace_s = rendered.pod["spec"]["terminationGracePeriodSeconds"]
    # After the drain, requests it cut get CUT_REQUESTS_BOUND_S to bill before exit.
    assert grace_s >= sleep_s + drain_s + CUT_REQUESTS_BOUND_S, (grace_s, sleep_s, drain_s)


def test_rolling_updates_never_go_below_the_current_count(rendered: Rendered) -> None:
    strategy = rendered.one("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0%")


def test_the_configmap_passes_gateway_check_config(rendered: Rendered, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(rendered.config_text())
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **dummy_env(rendered.container)}
    command = [sys.executable, "-m", "gateway", "check-config", str(path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Without the optional providers Secret: the simulated models still make a config.
    assert rendered.config(with_providers=False).models


def test_secrets_are_referenced_never_defined(rendered: Rendered) -> None:
    assert not rendered.all("Secret")
    refs = {v["name"]: secret_ref(v) for v in rendered.container["env"]}
    plain = {name for name, ref in refs.items() if ref is None}
    assert not {n for n in plain if re.search(r"KEY|TOKEN|PASSWORD|_URL", n)}, plain
    for name in ("GATEWAY_KEY", "METRICS_TOKEN"):
        ref = refs[name]
        assert ref is not None and not ref.get("optional", False), name
    providers = [ref for name, ref in refs.items() if name.endswith("_API_KEY")]
    assert providers and all(ref is not None and ref["optional"] is True for ref in providers)
    config = rendered.config()
    assert config.metrics.token == dummy_env(rendered.container)["METRICS_TOKEN"]
    assert [k.key for k in config.auth.keys] == [dummy_env(rendered.container)["GATEWAY_KEY"]]


def test_replicas_share_sql_and_redis_and_a_single_pod_may_embed_them(
    rendered: Rendered,
) -> None:
    config = rendered.config()
    hpa = rendered.maybe("HorizontalPodAutoscaler")
    replicas = rendered.one("Deployment")["spec"].get("replicas")
    if hpa is None and replicas == 1:
        # The embedded defaults: SQLite in data_dir (writable), no Redis.
        assert config.redis is None and not config.database.url
        data_dir = Path(dockerfile("WORKDIR")) / config.database.data_dir
        mounts = [m["mountPath"] for m in rendered.container["volumeMounts"]]
        assert str(data_dir) in mounts
        return
    assert hpa is not None and replicas is None  # the HPA owns the count
    assert hpa["spec"]["minReplicas"] >= 2
    assert config.redis is not None and config.redis.url == DUMMY_SECRETS["REDIS_URL"]
    assert config.database.url == DUMMY_SECRETS["DATABASE_URL"]
    refs = {v["name"]: secret_ref(v) for v in rendered.container["env"]}
    for name in ("DATABASE_URL", "REDIS_URL"):
        ref = refs[name]
        assert ref is not None and not ref.get("optional", False), name


def test_the_hpa_scales_the_deployment_by_cpu() -> None:
    for rendered, hpa in with_kind("HorizontalPodAutoscaler"):
        check_hpa(rendered, hpa)


def check_hpa(rendered: Rendered, hpa: Object) -> None:
    deployment = rendered.one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "cpu" in rendered.container["resources"]["requests"]  # Utilization needs it


def test_pdb_spreading_and_network_policies_select_the_pods(rendered: Rendered) -> None:
    labels = rendered.pod["metadata"]["labels"]
    assert selects(rendered.one("Deployment")["spec"]["selector"]["matchLabels"], labels)
    pdb = rendered.maybe("PodDisruptionBudget")
    if rendered.maybe("HorizontalPodAutoscaler") is not None:
        assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    if pdb is not None:
        assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    spec = rendered.pod["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    for spread in spec["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"]["matchLabels"], labels)
    policies = rendered.all("NetworkPolicy")
    assert policies and all(
        selects(p["spec"]["podSelector"]["matchLabels"], labels) for p in policies
    )


def policy_ports(policies: list[Object], direction: str) -> set[tuple[int | str, str]]:
    return {
        (port["port"], port.get("protocol", "TCP"))
        for policy in policies
        for rule in policy["spec"].get(direction, [])
        for port in rule.get("ports", [])
    }


def test_network_policies_let_through_what_the_gateway_needs(rendered: Rendered) -> None:
    policies = rendered.all("NetworkPolicy")
    config = rendered.config()
    ingress = {
        (container_port(rendered.container, port), protocol)
        for port, protocol in policy_ports(policies, "ingress")
    }
    assert ingress == {(config.server.port, "TCP")}
    egress = policy_ports(policies, "egress")
    needed = {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    if config.redis is not None:
        needed.add((6379, "TCP"))
    if config.database.url:
        needed.add((5432, "TCP"))
    assert egress == needed, (sorted(egress, key=str), sorted(needed, key=str))
    for policy in policies:
        assert "Egress" in policy["spec"]["policyTypes"]


def alert_groups() -> list[Object]:
    groups: list[Object] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def test_the_production_overlay_has_the_prometheus_operator_objects() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in Rendered("production").objects}
    assert CUSTOM_KINDS <= kinds


def test_prometheus_rule_is_the_repositorys_alert_rules() -> None:
    source = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    assert source["spec"] == {"groups": alert_groups()}, (
        "components/prometheus-operator/prometheusrule.yaml differs from "
        "docker/prometheus/alerts.yml: copy that file's groups under `spec:`"
    )
    for overlay in OVERLAYS:
        for rule in Rendered(overlay).all("PrometheusRule"):
            assert rule["apiVersion"] == MONITORING
            assert rule["spec"] == {"groups": alert_groups()}, overlay


def test_service_monitor_scrapes_the_service_with_the_pods_metrics_token() -> None:
    for rendered, monitor in with_kind("ServiceMonitor"):
        check_service_monitor(rendered, monitor)


def check_service_monitor(rendered: Rendered, monitor: Object) -> None:
    assert monitor["apiVersion"] == MONITORING
    service = rendered.one("Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    # `job` comes from the Service's label: the job the alert rules query
    jobs = set(re.findall(r'job="(\w+)"', ALERTS.read_text()))
    assert jobs == {service["metadata"]["labels"][monitor["spec"]["jobLabel"]]}
    config = rendered.config()
    assert config.metrics.enabled and config.metrics.port is None  # on the main port
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert health_endpoint(config, endpoint.get("path", "/metrics")) is health.metrics
    assert endpoint["authorization"]["type"] == "Bearer"
    (token,) = [v for v in rendered.container["env"] if v["name"] == "METRICS_TOKEN"]
    assert endpoint["authorization"]["credentials"] == secret_ref(token)
