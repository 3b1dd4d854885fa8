"""The management API's request and response models, for validation and the OpenAPI
description (`/openapi.json`, `/docs`). Answers are built as plain dicts on the
handlers' own path; these models say what they hold."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import KeySpec


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error, OpenAI's shape: the SDKs raise the matching exception class."""

    error: ErrorDetail


class ModelGatewayInfo(BaseModel):
    policy: str
    mode: str
    simulated: bool
    deployments: list[str]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    gateway: ModelGatewayInfo


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class RankedDeployment(BaseModel):
    deployment_id: str
    provider: str
    score: float
    breakdown: dict[str, Any]


class RejectedDeployment(BaseModel):
    deployment_id: str
    provider: str
    reason: str
    detail: str | None = None


class RoutePlan(BaseModel):
    route: str
    policy: str
    ordered: list[RankedDeployment]
    reasons: list[str]
    rejected: list[RejectedDeployment]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "draining"]
    checks: dict[str, str]


class NewKey(KeySpec):
    """A runtime key's attributes, as the config's keys have them (bounded names)."""

    name: str = Field(min_length=1, max_length=128)
    team: str | None = Field(None, max_length=128)


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_s: float = Field(0.0, ge=0, le=30 * 86_400)


class KeyView(BaseModel):
    """A gateway key as admins see it: never its secret's digest."""

    object: Literal["gateway.key"] = "gateway.key"
    id: str
    name: str
    team: str | None
    routes: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: str
    labels: dict[str, str]
    max_concurrent: int | None = None
    log_payloads: bool = False
    source: Literal["config", "runtime"]
    created_at: int | None
    revoked: bool
    revoked_at: int | None
    previous_secret_valid_until: int | None


class KeyWithSecret(KeyView):
    key: str = Field(description="The secret: shown in this answer only.")


class Spend(BaseModel):
    period: str
    spent_usd: float
    reserved_usd: float


class KeyWithSpend(KeyView):
    spend: Spend


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyView]


class RequestRecord(BaseModel):
    """One request-log row (no prompt or answer)."""

    object: Literal["gateway.request"] = "gateway.request"
    id: int  # the row's own id (the database's)
    request_id: str  # the x-request-id the client saw
    ts: float  # when it started, Unix seconds
    day: str
    endpoint: str
    key_id: str | None
    key_name: str | None
    team: str | None
    route: str | None
    policy: str | None
    deployment: str | None
    provider: str | None
    model: str | None
    status: int
    error_code: str | None
    attempts: int
    failed_attempts: list[str]  # "deployment: outcome" of each failed attempt
    stream: bool
    stream_outcome: str | None
    cache: str | None
    input_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    usage_estimated: bool | None
    cost_usd: float | None  # as the headers said it; the ledger sums exact decimals
    latency_ms: float
    ttft_ms: float | None
    # A `log_payloads` route's body and answer (secrets redacted), until they expire.
    request_payload: dict[str, Any] | None = None
    response_payload: dict[str, Any] | None = None


class RequestList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RequestRecord]


class UsageReport(BaseModel):
    model_config = ConfigDict(extra="allow")  # by_key, by_team, by_route, by_day

    object: Literal["usage_report"] = "usage_report"
    since: str | None
    until: str | None
    rows: list[dict[str, Any]]
    total: dict[str, Any]


class Purge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(
        None, description="'team:<team>' or 'key:<key id>'; absent: every entry"
    )


class Purged(BaseModel):
    purged: int
    tenant: str | None


class Cooldown(BaseModel):
    """A deployment whose circuit breaker is open (cooling down) or half-open, as the
    process that answers sees it (its own cooldowns and those synced from replicas)."""

    object: Literal["gateway.cooldown"] = "gateway.cooldown"
    deployment: str
    provider: str
    state: Literal["cooling_down", "half_open"]
    cooling_down_until: float = Field(description="Unix seconds the cooldown ends (ended).")
    seconds_left: float = Field(description="0 once half-open.")
    consecutive_failures: int = Field(description="This process's failure streak.")
    reason: str | None = Field(
        description="The outcome of the failure that began the cooldown, when known."
    )


class CooldownList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Cooldown]


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body the handler reads and validates itself
    (bounded, after the caller is authenticated)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": False}}


CHAT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "A chat completions body, as POST /v1/chat/completions",
                    "required": ["model", "messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "items": {"type": "object"}},
                    },
                }
            }
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 503)
}
