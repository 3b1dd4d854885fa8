"""Configuration: one YAML file, environment substitution, validated once.

Substitution, in string values, as POSIX shells and docker compose read it:
`${VAR}` (empty when unset), `${VAR:-default}` (when unset or empty), `${VAR-default}`
(when unset only), `${VAR:?message}` (unset or empty: an error naming VAR and the
message), `${VAR?message}` (unset only).

This is the only module that reads `os.environ`. Errors name the field and the file
line (from PyYAML's node marks), e.g. `gateway.yaml:14: providers.openai.timeouts.read_s:
Input should be a valid number`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator

from gateway.config.common import FrozenModel as _Model
from gateway.config.common import redacted_url
from gateway.config.redis_settings import RedisConfig

# ${NAME}, or ${NAME<op>word} with op one of :- - :? ?
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class ConfigError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class TimeoutsConfig(_Model):
    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(60.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class SimulationConfig(_Model):
    ttft_s: float = Field(0.0, ge=0)  # delay before the first token
    chunk_delay_s: float = Field(0.0, ge=0)  # delay between streamed chunks
    output_tokens: int = Field(16, ge=1)
    embedding_dimensions: int = Field(16, ge=1)


class ProviderConfig(_Model):
    kind: str
    base_url: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    # An http:// proxy URL for this provider, or "none" for none; absent: the environment's
    # (HTTPS_PROXY, HTTP_PROXY, NO_PROXY: see `environment_proxies`).
    proxy: str | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None  # `proxy: ${PROXY:-}` left empty: the environment's
        if value.lower() == "none":
            return "none"
        return proxy_url(value)  # the message never holds the URL's credentials


Capability = Literal["tools", "vision", "json_schema", "stream", "embeddings"]


class ModelConfig(_Model):
    """One deployment: a public model name served by one provider's model."""

    name: str
    provider: str
    model: str
    id: str | None = None
    mode: Literal["chat", "embedding"] = "chat"
    input_price_per_mtok_usd: float | None = Field(None, ge=0)
    output_price_per_mtok_usd: float | None = Field(None, ge=0)
    cached_input_price_per_mtok_usd: float | None = Field(None, ge=0)
    context_window_tokens: int | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)
    capabilities: list[Capability] | None = None
    # This deployment costs nothing (a model you host, a free tier), whatever the catalog
    # says. A deployment priced neither here nor in the catalog is a configuration error.
    free: bool = False
    quality: float = Field(0.5, ge=0, le=1)
    quality_by_tag: dict[str, float] = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    # OpenAI's own Responses API (`{base_url}/responses`): a `/v1/responses` request routed
    # here is forwarded natively (built-in tools, files, reasoning items: nothing lost)
    # instead of through chat completions. OpenAI-compatible kinds only.
    responses_api: bool = False


class RouteCacheConfig(_Model):
    enabled: bool | None = None
    ttl_s: int | None = Field(None, ge=1)


class RouteConfig(_Model):
    name: str
    policy: str = "fallback"
    models: list[str]  # deployment ids or public model names, in written order
    params: dict[str, Any] = Field(default_factory=dict)
    cache: RouteCacheConfig = Field(default_factory=RouteCacheConfig)
    # Keep each request's body and answer in the request log (secrets redacted), for
    # `database.payload_retention_days`. Off: the log holds no prompt or answer.
    log_payloads: bool = False


class KeySpec(_Model):
    """What a gateway key grants: in the config (`KeyConfig`) and in the admin API's
    request for a new key (gateway.api.schemas.NewKey)."""

    name: str
    team: str | None = None
    routes: list[str] | None = None  # None = every route
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    budget_period: Literal["day", "month", "total"] = "month"
    labels: dict[str, str] = Field(default_factory=dict)
    # Requests of this key in flight at once, per process (body reads included): one
    # key cannot take every slot of `server.max_concurrent_requests`. None: no bound.
    max_concurrent: int | None = Field(None, ge=1)
    # The request log keeps this key's request bodies and answers (secrets redacted),
    # as a route's `log_payloads` does.
    log_payloads: bool = False


class KeyConfig(KeySpec):
    key: str


class AuthConfig(_Model):
    mode: Literal["keys", "open"] = "keys"
    keys: list[KeyConfig] = Field(default_factory=list)
    admin_keys: list[str] = Field(default_factory=list)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(2048, ge=1)
    max_tools: int = Field(256, ge=1)
    # Nesting of the JSON body. At most 200: the JSON encoder stops at 254 levels.
    max_json_depth: int = Field(100, ge=8, le=200)
    max_header_bytes: int = Field(32 * 1024, ge=1024)  # request line + headers; beyond: 431
    request_timeout_s: float = Field(300.0, gt=0)
    # A stream still running this long after its request started ends with an in-band
    # error event (no [DONE]), billed for what it produced.
    stream_timeout_s: float = Field(600.0, gt=0)
    # On SIGTERM (or SIGINT) the gateway stops accepting connections and lets requests in
    # flight finish, streams included, for at most this long; then it cuts those still
    # running (each billed for what it produced) and exits. Below Kubernetes' default
    # grace period (30 s before its SIGKILL), leaving time for the final writes.
    drain_timeout_s: float = Field(25.0, gt=0)
    # Before that: on SIGTERM /readyz answers 503 at once, and the gateway goes on
    # accepting and serving for this long, so that a load balancer checking /readyz
    # takes it out of rotation before its listener closes (a request already sent to a
    # closed listener is lost). Behind HAProxy, nginx or a cloud LB: longer than their
    # check interval x fall count. Kubernetes: its preStop sleep does this instead.
    shutdown_delay_s: float = Field(0.0, ge=0)
    max_concurrent_requests: int = Field(4096, ge=1)  # beyond: 503 with retry-after
    docs: bool = True  # the management API's /docs and /openapi.json
    body_timeout_s: float = Field(30.0, gt=0)  # reading a request body; beyond: 408
    # An idle client connection is closed after this. Longer than clients keep theirs
    # (httpx and the OpenAI SDKs: 5 s), or a request sent as the gateway closes is lost.
    keep_alive_s: int = Field(75, ge=1)
    # native (gateway/transport/native.py) is the fast default; the others exist to
    # measure against (bench.run --transport)
    upstream_transport: Literal["native", "aiohttp", "httpx", "httpx-aiohttp"] = "native"
    access_log: bool = True
    # Idle with RSS grown since the last check: free C-heap pages go back to the OS
    # (gateway/telemetry/memory_trim.py). Seconds between checks (a check reads /proc, a few
    # microseconds; often enough to catch a short lull after a burst); 0 = off.
    idle_memory_trim_s: float = Field(1.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class CacheConfig(_Model):
    enabled: bool = False
    backend: Literal["auto", "memory", "redis"] = "auto"
    ttl_s: int = Field(3600, ge=1)
    max_entry_bytes: int = Field(1024 * 1024, ge=1)
    memory_max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    coalesce: bool = True


class RoutingConfig(_Model):
    default_policy: str = "fallback"
    max_attempts: int = Field(4, ge=1)  # across all deployments, retries included
    same_deployment_retries: int = Field(1, ge=0)
    max_retry_after_s: float = Field(2.0, ge=0)  # sleep in place only for short waits
    retry_budget_ratio: float = Field(0.2, ge=0)  # retries / active requests (Envoy)
    retry_budget_min: int = Field(3, ge=0)
    cooldown_failures: int = Field(3, ge=0)  # 0: the circuit breaker is off
    cooldown_s: float = Field(30.0, gt=0)
    cooldown_on_retry_after: bool = True  # a 429 with retry-after cools its deployment
    # After a cooldown, at most this many requests at once probe the deployment (per
    # process); the others go on to the next candidate until a probe succeeds.
    half_open_probes: int = Field(1, ge=1)
    expected_output_tokens: int = Field(256, ge=1)
    stats_sync_interval_s: float = Field(1.0, gt=0)  # Redis sharing of stats and cooldowns


class RedisFailureConfig(_Model):
    """What limits do while Redis is unreachable (rule 7)."""

    rate_limits: Literal["open", "closed"] = "open"  # open: serve without counting
    budgets: Literal["closed", "open"] = "closed"  # closed: refuse keys that have a budget
    retry_after_s: int = Field(2, ge=1)  # on the 503 a closed rule answers


class LimitsConfig(_Model):
    window_s: float = Field(60.0, gt=0)  # rpm/tpm count over this sliding window
    on_redis_error: RedisFailureConfig = Field(default_factory=RedisFailureConfig)
    key_sync_interval_s: float = Field(0.5, gt=0)  # bound on revocation reaching every replica
    deployment_sync_interval_s: float = Field(0.25, gt=0)  # sharing of deployment rpm/tpm use
    # No longer used: the usage report is the SQL ledger's (database:). Still accepted,
    # so that a config written for an earlier version loads.
    usage_retention_days: int = Field(400, ge=1)
    pending_writes_max: int = Field(10_000, ge=1)  # settlements held while Redis is down


class DatabaseConfig(_Model):
    """The system of record (gateway/records): keys, the spend ledger, the request log."""

    # SQLAlchemy URL: postgresql+asyncpg://user:pass@host/db in production. None: the
    # embedded default, SQLite in `data_dir`/gateway.db (nothing to install).
    url: str | None = None
    data_dir: str = "data"  # relative to the working directory
    migrate: Literal["auto", "off"] = "auto"  # auto: `gateway db upgrade` at start-up
    # The request log (one row per request, no prompts or answers) and the spend ledger
    # it sums (per key, team, route, deployment and day). Keys live in SQL either way.
    records: bool = True
    request_log_retention_days: int = Field(30, ge=1)
    payload_retention_days: int = Field(7, ge=1)  # bodies and answers of `log_payloads` routes
    # Stored Responses (`POST /v1/responses` with `store`, the default): their input items
    # and output, for `previous_response_id` and `GET /v1/responses/{id}`.
    response_retention_days: int = Field(30, ge=1)
    flush_interval_s: float = Field(1.0, gt=0)  # rows go out in batches this often
    batch_rows: int = Field(10_000, ge=1)
    # Rows held while SQL is unreachable; past it new rows are dropped, with their ledger
    # sums (counted in gateway_records_dropped_total).
    buffer_max_rows: int = Field(100_000, ge=1)
    connect_timeout_s: float = Field(2.0, gt=0)

    def sqlalchemy_url(self) -> str:
        if self.url:
            return self.url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'gateway.db'}"


class MetricsConfig(_Model):
    enabled: bool = True
    token: str | None = None  # when set, /metrics needs `Authorization: Bearer <token>`
    # When set, /metrics is served only on this port (its own listener), not the main one.
    port: int | None = Field(None, ge=1, le=65535)
    host: str = "127.0.0.1"  # bind address of that listener


class GatewayConfig(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    redis: RedisConfig | None = None
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    catalog_path: str | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)

    @field_validator("redis", mode="before")
    @classmethod
    def _no_redis_without_its_url(cls, value: Any) -> Any:
        """`url: ${REDIS_URL:-}` left empty: no Redis at all, as without the section (in
        standalone mode; in sentinel mode the sentinels say where Redis is)."""
        standalone = isinstance(value, Mapping) and value.get("mode") in (None, "standalone")
        if standalone and "url" in value:
            url = value["url"]
            if url is None or (isinstance(url, str) and not url.strip()):
                return None
        return value


def default_config_path() -> Path:
    return Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, substitute and validate a config file; raises ConfigError with file:line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(path), os.environ if environ is None else environ)


def parse_config(text: str, source: str, environ: Mapping[str, str]) -> GatewayConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    missing: list[tuple[tuple[str | int, ...], str]] = []
    data = _substitute(data if data is not None else {}, environ, (), missing)
    if missing:
        raise ConfigError([_located(source, path, lines, text) for path, text in missing])
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines)) from None


def _index_lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[Any, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _index_lines(value, (*path, str(key.value)), out)
            out[(*path, str(key.value))] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), out)


def _describe(exc: ValidationError, source: str, lines: dict[Any, int]) -> list[str]:
    return [_located(source, tuple(error["loc"]), lines, error["msg"]) for error in exc.errors()]


def _nearest_line(loc: tuple[Any, ...], lines: dict[Any, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _located(source: str, loc: tuple[Any, ...], lines: dict[Any, int], text: str) -> str:
    """`file:line: field: text`."""
    line = _nearest_line(loc, lines)
    where = ".".join(str(p) for p in loc) or "(root)"
    prefix = f"{source}:{line}" if line else source
    return f"{prefix}: {where}: {text}"


def _substitute(
    value: Any,
    environ: Mapping[str, str],
    path: tuple[str | int, ...],
    missing: list[tuple[tuple[str | int, ...], str]],
) -> Any:
    """`value` with its `${...}` replaced; each required variable that is missing goes to
    `missing` as (where, why): the message names the variable, never a value."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, op, word = match.group(1), match.group(2), match.group(3)
            found = environ.get(name)
            if op is None:
                return found or ""
            if found is None or (not found and op[0] == ":"):
                if op[-1] == "-":
                    return word
                why = f"environment variable {name} is {'unset' if found is None else 'empty'}"
                missing.append((path, f"{why}: {word}" if word.strip() else why))
                return ""
            return found

        return _ENV_PATTERN.sub(replace, value) if "${" in value else value
    if isinstance(value, dict):
        return {k: _substitute(v, environ, (*path, str(k)), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, (*path, i), missing) for i, v in enumerate(value)]
    return value


def referenced_env_vars(text: str) -> set[str]:
    return {m.group(1) for m in _ENV_PATTERN.finditer(text)}


@dataclass(frozen=True, slots=True, repr=False)
class ProxySettings:
    """The environment's outbound proxies, read once at start-up (`environment_proxies`):
    normalised `http://` URLs (credentials included: show them with `describe`)."""

    http: str | None = None  # for http:// upstreams
    https: str | None = None  # for https:// upstreams (a CONNECT tunnel)
    no_proxy: str = ""  # hosts, domains, IPs and CIDRs, with optional ports, or "*"

    def describe(self) -> str:
        """For a log line: credentials shown as `***`."""
        shown = [
            f"{scheme} via {redacted_url(url)}"
            for scheme, url in (("https", self.https), ("http", self.http))
            if url
        ]
        if self.no_proxy:
            shown.append(f"not for {self.no_proxy}")
        return ", ".join(shown) or "none"

    def __repr__(self) -> str:  # never the credentials
        return f"ProxySettings({self.describe()})"


def environment_proxies(environ: Mapping[str, str] | None = None) -> ProxySettings:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY, in lower or upper case (the lower-case one
    first, as curl and urllib read them; empty counts as unset). Raises ConfigError for
    a proxy the transports cannot use (anything but http://)."""
    env = os.environ if environ is None else environ
    urls: dict[str, str | None] = {}
    problems = []
    for name in ("http_proxy", "https_proxy"):
        variable, value = _variable(env, name)
        try:
            urls[name] = proxy_url(value) if value else None
        except ValueError as exc:
            problems.append(f"{variable}: {exc}")
    if problems:
        raise ConfigError(problems)
    return ProxySettings(urls["http_proxy"], urls["https_proxy"], _variable(env, "no_proxy")[1])


def _variable(env: Mapping[str, str], name: str) -> tuple[str, str]:
    """(the variable set, its value) of `name` in lower case or else upper case."""
    for variable in (name, name.upper()):
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return name, ""


def proxy_url(url: str) -> str:
    """`url` as an http:// proxy URL (`proxy:3128` gains its scheme, as curl reads it);
    ValueError otherwise, whose message shows the URL redacted."""
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        raise ValueError(f"not a proxy URL: {redacted_url(url)}") from None
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"unsupported proxy {redacted_url(url)}: only http:// proxies are supported"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"not a proxy URL (http://[user:password@]host[:port]): {redacted_url(url)}"
        )
    return url


CONFIG_ENV = "GATEWAY_CONFIG"
CATALOG_ENV = "GATEWAY_CATALOG"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def env_config_path() -> Path:
    """The config path handed to worker processes (uvicorn factory mode)."""
    return Path(os.environ.get(CONFIG_ENV) or default_config_path())


def env_catalog_path() -> Path | None:
    """$GATEWAY_CATALOG: the model catalog when the config names none (the image's copy)."""
    value = os.environ.get(CATALOG_ENV)
    return Path(value) if value else None


def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def set_worker_environment(config_path: Path, metrics_dir: str | None) -> None:
    """Set before uvicorn forks workers, so every worker reads the same settings."""
    os.environ[CONFIG_ENV] = str(config_path)
    if metrics_dir:
        os.environ[MULTIPROC_ENV] = metrics_dir


# The JSON nesting a body may have: see `RequestLimits.max_json_depth`.
DEFAULT_MAX_JSON_DEPTH = 100


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_messages: int = 2048
    max_tools: int = 256
    max_n: int = 128  # OpenAI's bound
    # orjson parses up to 1024 levels but serializes only 254: a body between the two
    # would parse, then fail when forwarded (a 500). Bounded well below, adapters nest more.
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH

    @classmethod
    def from_server(cls, server: ServerConfig) -> RequestLimits:
        return cls(
            max_messages=server.max_messages,
            max_tools=server.max_tools,
            max_json_depth=server.max_json_depth,
        )
