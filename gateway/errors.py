"""The gateway's error vocabulary; every error a client sees is one of these.

    GatewayError                      500 server_error
    ├── InvalidRequestError           400 invalid_request_error (names the `param`)
    │   ├── ModelNotFoundError        404 model_not_found
    │   └── ContextLengthError        400 context_length_exceeded (upstream said so)
    ├── PayloadTooLargeError          413
    ├── IncompleteBodyError           499 client_closed_request (hung up mid-body; log only)
    ├── AuthenticationError           401 invalid_api_key
    ├── PermissionDeniedError         403
    ├── NotFoundError                 404
    ├── RateLimitedError              429 rate_limit_exceeded (carries retry-after)
    ├── QuotaExceededError            429 insufficient_quota (x-should-retry: false)
    ├── LimitsUnavailableError        503 limits_unavailable (Redis down, budget fails closed)
    ├── NoEligibleDeploymentError     503 no_eligible_deployment (the plan was empty)
    ├── ProviderError                 what one upstream attempt produced
    │   ├── UpstreamTimeoutError      504 retryable (no answer, or no stream event, in read_s)
    │   │   └── StreamTimeoutError    504 stream_timeout (server.stream_timeout_s); not retried
    │   ├── UpstreamUnavailableError  502/503 retryable (5xx, connection refused, reset, and
    │   │                             protocol errors: bytes not UTF-8, bad JSON, bad events)
    │   ├── UpstreamRateLimitedError  429 retryable
    │   ├── UpstreamAuthError         502 retryable on the next deployment (our key, not theirs)
    │   └── UpstreamRejectedError     the upstream's own 4xx; never retried, goes back as is
    └── AllProvidersFailedError       the last attempt's status; keeps every attempt's error

`retryable` on a ProviderError means "another deployment may succeed"; the
pipeline is the only place that acts on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar


class GatewayError(Exception):
    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def status(self) -> int:
        return self.status_code

    @property
    def error_code(self) -> str | None:
        return self.code

    def headers(self) -> dict[str, str]:
        return {}

    def to_openai_body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.error_code,
            }
        }


class InvalidRequestError(GatewayError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFoundError(InvalidRequestError):
    status_code = 404
    code = "model_not_found"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class IncompleteBodyError(GatewayError):
    """The client hung up before its body was complete: nobody reads this answer, it is
    for the access log (nginx's 499), instead of an unhandled ClientDisconnect."""

    status_code = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class AuthenticationError(GatewayError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(GatewayError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class RateLimitedError(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        # Rounded up: a client that comes back early is refused again. The SDKs prefer -ms.
        return {
            "retry-after": str(max(1, math.ceil(self.retry_after_s))),
            "retry-after-ms": str(max(1, math.ceil(self.retry_after_s * 1000))),
        }


class ConcurrencyLimitError(RateLimitedError):
    """A key's `max_concurrent` requests are in flight."""

    code = "concurrency_limit_exceeded"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=1.0)


class RequestTimeoutError(GatewayError):
    """The request body did not arrive within `server.body_timeout_s`."""

    status_code = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"connection": "close"}  # the rest of the body may still come: not reused


class QuotaExceededError(GatewayError):
    """Budget exhausted: the SDK must not retry it."""

    status_code = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class LimitsUnavailableError(GatewayError):
    """Redis is unreachable and the rule for this key is to refuse (budgets by default)."""

    status_code = 503
    type = "server_error"
    code = "limits_unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        # The SDK waits this long and retries at most its max_retries (2): no hammering.
        return {"retry-after": str(self.retry_after_s)}


class DatabaseUnavailableError(LimitsUnavailableError):
    """The system of record (SQL) is unreachable: an admin read or write cannot be done
    now (requests are still served)."""

    code = "database_unavailable"


class GatewayOverloadedError(GatewayError):
    status_code = 503
    type = "server_error"
    code = "gateway_overloaded"


class NoEligibleDeploymentError(GatewayError):
    """Every candidate is cooling down or over its quota: could serve, but not now."""

    status_code = 503
    type = "server_error"
    code = "no_eligible_deployment"

    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class UnservableRequestError(InvalidRequestError):
    """No candidate can serve what the request asks (its size, parameters, provider or
    cost limits): the client's to change, a 400 the SDK does not retry."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message, param)
        self._code = code

    @property
    def error_code(self) -> str | None:
        return self._code


class DeploymentsProbingError(NoEligibleDeploymentError):
    """Every candidate is half-open with its probes in flight: could serve, not now."""

    code = "deployments_cooling_down"


class ProviderError(GatewayError):
    """One failed upstream attempt; `deployment_id` is filled in by the pipeline."""

    status_code = 502
    code = "upstream_error"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s
        self.deployment_id: str | None = None

    @property
    def outcome(self) -> str:
        """Bounded label for metrics and stats."""
        return _OUTCOMES.get(type(self), "unavailable")


class UpstreamTimeoutError(ProviderError):
    status_code = 504
    code = "upstream_timeout"


class StreamTimeoutError(UpstreamTimeoutError):
    """A stream reached `server.stream_timeout_s`: the gateway's own limit on a whole
    stream, so no other deployment could do better (not retried) and the deployment
    did nothing wrong (never cooled down for it)."""

    code = "stream_timeout"
    retryable = False

    def __init__(
        self, message: str = "The stream ran longer than the gateway allows (stream_timeout_s)."
    ) -> None:
        super().__init__(message)


class UpstreamUnavailableError(ProviderError):
    status_code = 502
    code = "upstream_unavailable"
    during_connect = False  # no response had started: safe to retry on the same deployment


class UpstreamRateLimitedError(ProviderError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after_s)))}


class UpstreamAuthError(ProviderError):
    """The provider refused *our* key; never shown to the client as a 401."""

    status_code = 502
    code = "upstream_auth_failed"


class UpstreamRejectedError(ProviderError):
    """The upstream's own 4xx about the request: the caller's fault, not retried."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self._type = error_type
        self._code = code
        self.param = param

    @property
    def status(self) -> int:
        return self.upstream_status or 400

    @property
    def error_code(self) -> str | None:
        return self._code

    def to_openai_body(self) -> dict[str, object]:
        body = super().to_openai_body()
        error = body["error"]
        assert isinstance(error, dict)
        error["type"] = self._type
        return body


class UpstreamContextLengthError(ProviderError):
    """Too long for this deployment; a larger-window deployment may still serve it."""

    status_code = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"


_OUTCOMES: Mapping[type[ProviderError], str] = {
    UpstreamTimeoutError: "timeout",
    StreamTimeoutError: "timeout",
    UpstreamRateLimitedError: "rate_limited",
    UpstreamUnavailableError: "unavailable",
    UpstreamAuthError: "auth_failed",
    UpstreamRejectedError: "rejected",
    UpstreamContextLengthError: "context_length",
}


class AllProvidersFailedError(GatewayError):
    """Every planned deployment failed; reports the last error's status and class."""

    def __init__(self, errors: list[ProviderError]) -> None:
        last = errors[-1]
        tried = ", ".join(f"{e.deployment_id}: {e.outcome}" for e in errors)
        super().__init__(f"All deployments failed ({tried}). Last error: {last.message}")
        self.errors = errors
        self.last = last

    @property
    def status(self) -> int:
        return self.last.status

    @property
    def error_code(self) -> str | None:
        return self.last.error_code

    def headers(self) -> dict[str, str]:
        return self.last.headers()

    def to_openai_body(self) -> dict[str, object]:
        body = self.last.to_openai_body()
        error = body["error"]
        assert isinstance(error, dict)
        error["message"] = self.message
        return body
