"""The management API on FastAPI: its OpenAPI description lists every cold endpoint and
the real answers fit the schemas it publishes; /docs serves; `server.docs: false` turns
both off; FastAPI's validation errors reach clients as OpenAI-shaped 400s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.api.error_handlers import EXCEPTION_HANDLERS
from tests.conftest import GATEWAY_KEY
from tests.gatewayproc import GatewayProcess

ADMIN_KEY = "gw-admin-management-test-key"
CONFIG: dict[str, Any] = {
    "auth": {
        "mode": "keys",
        "keys": [{"name": "app", "key": GATEWAY_KEY}],
        "admin_keys": [ADMIN_KEY],
    },
    "providers": {"sim": {"kind": "simulated"}},
    "models": [{"name": "sim-test", "provider": "sim", "model": "sim"}],
}
MANAGEMENT_PATHS = {
    "/v1/models",
    "/v1/models/{model_id}",
    "/v1/route/explain",
    "/healthz",
    "/readyz",
    "/admin/keys",
    "/admin/keys/{key_id}",
    "/admin/keys/{key_id}/revoke",
    "/admin/keys/{key_id}/rotate",
    "/admin/usage",
    "/admin/requests",
    "/admin/requests/{request_id}",
    "/admin/cache/purge",
    "/admin/cooldowns",
    "/admin/cooldowns/{deployment_id}",
}


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway(CONFIG)


@pytest.fixture(scope="module")
def spec(gateway: GatewayProcess) -> dict[str, Any]:
    answer = httpx.get(f"{gateway.url}/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def _check(spec: dict[str, Any], path: str, method: str, answer: httpx.Response) -> None:
    """`answer` fits the schema the description gives for its status."""
    operation = spec["paths"][path][method]
    response = operation["responses"][str(answer.status_code)]
    schema = response["content"]["application/json"]["schema"]
    resolver = {"components": spec["components"], **schema}
    jsonschema.Draft202012Validator(resolver).validate(answer.json())


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def test_the_description_lists_every_management_endpoint_and_no_hot_path(
    spec: dict[str, Any],
) -> None:
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == MANAGEMENT_PATHS
    post = spec["paths"]["/admin/keys"]["post"]
    assert "name" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_answers_fit_the_published_schemas(gateway: GatewayProcess, spec: dict[str, Any]) -> None:
    user = {"authorization": f"Bearer {GATEWAY_KEY}"}
    with httpx.Client(base_url=gateway.url) as http:
        _check(spec, "/v1/models", "get", http.get("/v1/models", headers=user))
        _check(spec, "/v1/models/{model_id}", "get", http.get("/v1/models/sim-test", headers=user))
        missing = http.get("/v1/models/nope", headers=user)
        assert missing.status_code == 404
        _check(spec, "/v1/models/{model_id}", "get", missing)
        body = {"model": "sim-test", "messages": [{"role": "user", "content": "hi"}]}
        plan = http.post("/v1/route/explain", json=body, headers=user)
        _check(spec, "/v1/route/explain", "post", plan)
        _check(spec, "/readyz", "get", http.get("/readyz"))
        _check(spec, "/admin/keys", "get", http.get("/admin/keys", headers=_admin()))
        created = http.post("/admin/keys", json={"name": "docs-key"}, headers=_admin())
        assert created.status_code == 201
        _check(spec, "/admin/keys", "post", created)
        key_id = created.json()["id"]
        one = http.get(f"/admin/keys/{key_id}", headers=_admin())
        _check(spec, "/admin/keys/{key_id}", "get", one)
        bad = http.post("/admin/keys", json={"name": ""}, headers=_admin())
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
        _check(spec, "/admin/keys", "post", bad)
        _check(spec, "/admin/usage", "get", http.get("/admin/usage", headers=_admin()))
        not_admin = http.get("/admin/usage", headers=user)
        assert not_admin.status_code == 403
        _check(spec, "/admin/usage", "get", not_admin)
        request_id = plan.headers["x-request-id"]
        _check(spec, "/admin/requests", "get", http.get("/admin/requests", headers=_admin()))
        logged = http.get(f"/admin/requests/{request_id}", headers=_admin())
        assert logged.status_code == 200
        _check(spec, "/admin/requests/{request_id}", "get", logged)
        purge = http.post("/admin/cache/purge", json={}, headers=_admin())
        _check(spec, "/admin/cache/purge", "post", purge)


def test_docs_are_served(gateway: GatewayProcess) -> None:
    answer = httpx.get(f"{gateway.url}/docs")
    assert answer.status_code == 200
    assert "swagger" in answer.text.lower() and "/openapi.json" in answer.text


def test_docs_can_be_turned_off(start_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = start_gateway({**CONFIG, "server": {"docs": False}})
    for path in ("/docs", "/openapi.json"):
        answer = httpx.get(f"{gateway.url}{path}")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gateway.url}/healthz").text == "ok"


def test_fastapi_validation_errors_are_openai_shaped_400s() -> None:
    """The gateway's exception handlers on a FastAPI app with typed parameters (the
    management endpoints read their bodies themselves, so a 422 would only come from a
    typed parameter): a 400 naming the parameter, never FastAPI's 422 shape."""
    app = FastAPI(exception_handlers=dict(EXCEPTION_HANDLERS))

    @app.get("/typed")
    async def typed(limit: int) -> dict[str, int]:
        return {"limit": limit}

    with TestClient(app) as client:
        assert client.get("/typed", params={"limit": 3}).json() == {"limit": 3}
        for params in ({"limit": "many"}, {}):
            answer = client.get("/typed", params=params)
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == "limit"
