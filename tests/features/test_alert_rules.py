"""The shipped Prometheus alert rules (docker/prometheus/alerts.yml): promtool checks them
and runs their unit tests (alerts.test.yml), in which every alert has a case where it
fires and one where it does not. tests/features/test_dashboard.py evaluates the same
rules in a real Prometheus scraping a real gateway."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.gatewayproc import REPO

PROMETHEUS_DIR = REPO / "docker" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
EXPECTED = {
    "GatewayDown",
    "GatewayErrorRatioHigh",
    "GatewayRouteAllDeploymentsCoolingDown",
    "GatewayKeyBudgetAbove90Percent",
    "GatewayRedisErrors",
    "GatewayOverheadP99High",
}


def promtool() -> str:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is not installed (Debian package `prometheus`)"
    return binary


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    output = run_promtool("check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_the_rules_unit_tests_pass() -> None:
    output = run_promtool("test", "rules", ALERT_TESTS.name)
    assert "SUCCESS" in output and "FAILED" not in output


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names == EXPECTED
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    cases: dict[str, set[bool]] = {name: set() for name in names}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {name: sorted(fires) for name, fires in cases.items()} == {
        name: [False, True] for name in names
    }


def test_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]  # beside prometheus.yml, in the stack too
