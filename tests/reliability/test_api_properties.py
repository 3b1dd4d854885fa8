"""Property-based API tests: requests generated from OpenAI's published schemas.

Valid requests are drawn from `CreateChatCompletionRequest` / `CreateEmbeddingRequest`
(shared/data/openai-openapi-subset.json) by a small schema-to-strategy translation, and
checked against the schema before they are sent. Whatever the gateway makes of them, the
answer is a 200 whose body (or every SSE chunk) is schema-valid, or a clean OpenAI-shaped
4xx; never a 5xx or a 422. Mutated requests (one field of the wrong type or out of range,
a required field gone, an egress field, an unknown model, a body that is not an object)
must get an OpenAI-shaped 4xx and never reach the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess
from tests.openai_schema import _document, validate

CHAT_MODEL, EMBED_MODEL = "gpt-test", "embed-test"
SETTINGS = settings(
    max_examples=80,
    deadline=None,
    database=None,  # no example database left in the tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- from schema to strategy --------------------------------------------------------------

SCHEMAS: dict[str, Any] = _document()["components"]["schemas"]
TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=12
)
UNBOUNDED_INT = st.integers(-2, 64)  # schema integers without bounds: small, mostly sane
MAX_ITEMS = 3  # arrays stay short: the point is shapes, not sizes
MAX_DEPTH = 4  # below this, objects get their required properties only


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Properties of an object schema, `allOf` parts merged."""
    schema = resolve(schema)
    merged: dict[str, dict[str, Any]] = {}
    for part in schema.get("allOf", []):
        merged.update(properties(part))
    merged.update(schema.get("properties", {}))
    return merged


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """The JSON Schema subset these schemas use: enough to draw valid instances."""
    schema = resolve(schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(option, depth + 1) for option in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: 0 < len(s) <= schema.get("maxLength", 64)
            )
        return TEXT
    if kind == "integer":
        if "minimum" not in schema and "maximum" not in schema:
            return UNBOUNDED_INT
        low = int(schema.get("minimum", -(2**31)))
        return st.integers(low, int(schema.get("maximum", low + 100)))
    if kind == "number":
        low, high = schema.get("minimum", -10.0), schema.get("maximum", 10.0)
        return st.floats(low, high, allow_nan=False) | st.integers(int(low), int(high))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        high = max(low, min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS))
        return st.lists(
            from_schema(schema.get("items", {}), depth + 1), min_size=low, max_size=high
        )
    return object_strategy(schema, depth)


def object_strategy(schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    props = properties(schema)
    required = set(schema.get("required", []))
    if not props:  # free-form (metadata, function parameters): small string maps
        return st.dictionaries(TEXT, TEXT, max_size=2)
    optional = {} if depth >= MAX_DEPTH else {k: v for k, v in props.items() if k not in required}
    return st.fixed_dictionaries(
        {k: from_schema(props[k], depth + 1) for k in required},
        optional={k: from_schema(v, depth + 1) for k, v in optional.items()},
    )


def schema_valid(instance: Any, name: str) -> bool:
    try:
        validate(instance, name)
    except jsonschema.ValidationError:
        return False
    return True


CHAT_PROPS = properties(SCHEMAS["CreateChatCompletionRequest"])
# What a client sets to shape an answer. Left out: audio/modalities/prediction/moderation
# (other products), and tool/function messages (they must answer a preceding tool call,
# which the fake upstream checks like the real API).
CHAT_OPTIONAL = [
    "temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens",
    "max_completion_tokens", "n", "seed", "stop", "user", "metadata", "store", "logprobs",
    "top_logprobs", "service_tier", "reasoning_effort", "verbosity", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "logit_bias", "stream",
]  # fmt: skip
MESSAGE_SCHEMAS = [
    option
    for option in SCHEMAS["ChatCompletionRequestMessage"]["oneOf"]
    if not option["$ref"].endswith(("ToolMessage", "FunctionMessage"))
]


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    messages = st.lists(
        st.one_of([from_schema(m) for m in MESSAGE_SCHEMAS]), min_size=1, max_size=3
    )
    optional = {name: from_schema(CHAT_PROPS[name]) for name in CHAT_OPTIONAL}
    body = draw(st.fixed_dictionaries({"messages": messages}, optional=optional))
    body["model"] = CHAT_MODEL
    if body.get("stream") is True and draw(st.booleans()):  # only meaningful with stream
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


@st.composite
def embedding_requests(draw: st.DrawFn) -> dict[str, Any]:
    props = properties(SCHEMAS["CreateEmbeddingRequest"])
    optional = {k: from_schema(v) for k, v in props.items() if k not in ("input", "model")}
    body = draw(st.fixed_dictionaries({"input": from_schema(props["input"])}, optional=optional))
    body["model"] = EMBED_MODEL
    return body


VALID_CHAT = chat_requests().filter(lambda b: schema_valid(b, "CreateChatCompletionRequest"))
VALID_EMBEDDING = embedding_requests().filter(lambda b: schema_valid(b, "CreateEmbeddingRequest"))

# --- mutations: each makes a request invalid in a way the gateway itself must catch ---------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Only what JSON can carry (no inf, 64-bit ints): the gateway must judge the value itself.
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | FLOATS | TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=4,
)
NOT_NUMBER = ANY_JSON.filter(lambda v: v is not None and not _is_number(v))
NOT_INT = ANY_JSON.filter(
    lambda v: v is not None and not (isinstance(v, int) and not isinstance(v, bool))
)
WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "model": ANY_JSON.filter(lambda v: not isinstance(v, str)) | st.just(""),
    "messages": ANY_JSON.filter(lambda v: not isinstance(v, list)) | st.just([]),
    "temperature": NOT_NUMBER | st.floats(2.0001, 1e6) | st.floats(-1e6, -0.0001),
    "top_p": NOT_NUMBER | st.floats(1.0001, 1e6) | st.floats(-1e6, -0.0001),
    "frequency_penalty": NOT_NUMBER | st.floats(2.0001, 1e6) | st.floats(-1e6, -2.0001),
    "presence_penalty": NOT_NUMBER | st.floats(2.0001, 1e6) | st.floats(-1e6, -2.0001),
    "max_tokens": NOT_INT | st.integers(max_value=0),
    "max_completion_tokens": NOT_INT | st.integers(max_value=0),
    "n": NOT_INT | st.integers(max_value=0),
    "top_logprobs": NOT_INT | st.integers(max_value=-1),
    "seed": NOT_INT,
    "stop": ANY_JSON.filter(
        lambda v: (
            v is not None
            and not isinstance(v, str)
            and not (isinstance(v, list) and all(isinstance(s, str) for s in v))
        )
    ),
    "stream": ANY_JSON.filter(lambda v: v is not None and not isinstance(v, bool)),
    "stream_options": ANY_JSON.filter(lambda v: v is not None and not isinstance(v, dict)),
    "tools": ANY_JSON.filter(lambda v: v is not None and not isinstance(v, list)),
    "response_format": ANY_JSON.filter(
        lambda v: v is not None and not (isinstance(v, dict) and isinstance(v.get("type"), str))
    ),
}
EGRESS = st.sampled_from(
    ["api_base", "base_url", "api_key", "api_version", "extra_headers", "user_config", "headers"]
)
UNKNOWN_MODEL = TEXT.filter(lambda m: m not in (CHAT_MODEL, EMBED_MODEL))
BAD_MESSAGE = st.one_of(
    ANY_JSON.filter(lambda v: not isinstance(v, dict)),
    st.fixed_dictionaries({"role": TEXT.filter(lambda r: r not in ROLES), "content": TEXT}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system"])}),  # no content
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": ANY_JSON.filter(lambda v: v is not None and not isinstance(v, str | list)),
        }
    ),
)
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@st.composite
def mutated_chat(draw: st.DrawFn) -> tuple[str, bytes]:
    """(what was done, raw body) for a valid request with one thing broken."""
    body = draw(VALID_CHAT)
    body.pop("stream_options", None)  # a bad `stream` must not hide behind its options
    kind = draw(st.sampled_from(["wrong", "missing", "egress", "model", "message", "shape"]))
    if kind == "wrong":
        field = draw(st.sampled_from(sorted(WRONG_TYPE)))
        body[field] = draw(WRONG_TYPE[field])
        return f"{field}={body[field]!r}", encode(body)
    if kind == "missing":
        field = draw(st.sampled_from(["model", "messages"]))
        del body[field]
        return f"no {field}", encode(body)
    if kind == "egress":
        field = draw(EGRESS)
        body[field] = draw(ANY_JSON)
        return f"egress {field}", encode(body)
    if kind == "model":
        body["model"] = draw(UNKNOWN_MODEL)
        return f"model {body['model']!r}", encode(body)
    if kind == "message":
        messages = body["messages"]
        messages.insert(draw(st.integers(0, len(messages))), draw(BAD_MESSAGE))
        return f"messages {messages!r}", encode(body)
    return shape_mutation(draw, body)


def shape_mutation(draw: st.DrawFn, body: dict[str, Any]) -> tuple[str, bytes]:
    """Not a JSON object at all: another JSON value, or the body cut short."""
    if draw(st.booleans()):
        value = draw(ANY_JSON.filter(lambda v: not isinstance(v, dict)))
        return f"body {value!r}", encode(value)
    raw = encode(body)
    cut = draw(st.integers(0, len(raw) - 1))
    return f"cut at {cut}", raw[:cut]


EMBED_WRONG_INPUT = st.one_of(
    ANY_JSON.filter(lambda v: not isinstance(v, str | list)),
    st.just([]),
    st.lists(FLOATS.filter(lambda f: not f.is_integer()), min_size=1, max_size=3),
    st.lists(
        st.booleans() | st.none() | st.dictionaries(TEXT, TEXT, max_size=1), min_size=1, max_size=3
    ),
    st.tuples(TEXT, st.integers()).map(list),  # strings and tokens mixed
    st.tuples(st.lists(st.integers(), min_size=1, max_size=2), TEXT).map(list),
)


@st.composite
def mutated_embedding(draw: st.DrawFn) -> tuple[str, bytes]:
    body = draw(VALID_EMBEDDING)
    kind = draw(st.sampled_from(["input", "missing", "model", "egress", "shape"]))
    if kind == "input":
        body["input"] = draw(EMBED_WRONG_INPUT)
        return f"input {body['input']!r}", encode(body)
    if kind == "missing":
        field = draw(st.sampled_from(["model", "input"]))
        del body[field]
        return f"no {field}", encode(body)
    if kind == "model":
        body["model"] = draw(UNKNOWN_MODEL | ANY_JSON.filter(lambda v: not isinstance(v, str)))
        return f"model {body['model']!r}", encode(body)
    if kind == "egress":
        field = draw(EGRESS)
        body[field] = draw(ANY_JSON)
        return f"egress {field}", encode(body)
    return shape_mutation(draw, body)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the gateway ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    config = {
        "server": {"request_timeout_s": 5},
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
        "providers": {
            "fake": {
                "kind": "openai",
                "base_url": f"{fake_openai.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": {"read_s": 2.0},
            }
        },
        "models": [
            {"name": CHAT_MODEL, "provider": "fake", "model": "gpt-4o-mini"},
            {
                "name": EMBED_MODEL,
                "provider": "fake",
                "model": "text-embedding-3-small",
                "mode": "embedding",
            },
        ],
    }
    return start_gateway(config)


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=10) as client:
        yield client


def assert_clean_4xx(response: httpx.Response, what: str) -> None:
    assert 400 <= response.status_code < 500 and response.status_code != 422, (
        what,
        response.status_code,
        response.text,
    )
    body = response.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert OPENAI_KEY not in response.text and "Traceback" not in response.text


def assert_passed_through(body: dict[str, Any], sent: dict[str, Any]) -> None:
    """The upstream got the client's parameters unchanged; only the model id is ours."""
    assert sent["model"] == "gpt-4o-mini"
    for name, value in body.items():
        if name not in ("model", "stream_options"):  # streams always ask for usage
            assert sent.get(name) == value, (name, value, sent.get(name))


def outcome(response: httpx.Response) -> str:
    """For --hypothesis-show-statistics: how many valid requests really got served."""
    if response.status_code == 200:
        return "200"
    error = response.json().get("error") if "json" in response.headers["content-type"] else None
    return f"{response.status_code} {error.get('param') if isinstance(error, dict) else ''}"


def assert_stream(response: httpx.Response) -> None:
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", response.text[-300:]
    for data in events[:-1]:
        chunk = json.loads(data)
        assert "error" not in chunk, chunk
        validate(chunk, "CreateChatCompletionStreamResponse")


# --- properties -----------------------------------------------------------------------------


@SETTINGS
@given(body=VALID_CHAT)
def test_valid_chat_requests_get_a_valid_answer_or_a_clean_4xx(
    http: httpx.Client, fake_openai: FakeOpenAI, body: dict[str, Any]
) -> None:
    fake_openai.reset()
    response = http.post("/chat/completions", content=encode(body))
    event(outcome(response))
    if response.status_code == 200:
        if body.get("stream"):
            assert_stream(response)
        else:
            validate(response.json(), "CreateChatCompletionResponse")
        assert_passed_through(body, fake_openai.received[-1].json)
    else:
        assert_clean_4xx(response, json.dumps(body))
    assert fake_openai.violations == []  # whatever was forwarded was a valid upstream call


@SETTINGS
@given(case=mutated_chat())
def test_mutated_chat_requests_get_a_4xx_and_stay_local(
    http: httpx.Client, fake_openai: FakeOpenAI, case: tuple[str, bytes]
) -> None:
    what, raw = case
    fake_openai.reset()
    response = http.post("/chat/completions", content=raw)
    assert_clean_4xx(response, what)
    assert fake_openai.calls == 0, what


@SETTINGS
@given(body=VALID_EMBEDDING)
def test_valid_embedding_requests_get_a_valid_answer_or_a_clean_4xx(
    http: httpx.Client, fake_openai: FakeOpenAI, body: dict[str, Any]
) -> None:
    fake_openai.reset()
    response = http.post("/embeddings", content=encode(body))
    event(outcome(response))
    if response.status_code == 200:
        out = response.json()
        validate(out, "CreateEmbeddingResponse")
        inputs = body["input"]
        if not isinstance(inputs[0], int):  # (the fake answers a token array per token)
            assert len(out["data"]) == (1 if isinstance(inputs, str) else len(inputs))
    else:
        assert_clean_4xx(response, json.dumps(body))
    assert fake_openai.violations == []


@SETTINGS
@given(case=mutated_embedding())
def test_mutated_embedding_requests_get_a_4xx_and_stay_local(
    http: httpx.Client, fake_openai: FakeOpenAI, case: tuple[str, bytes]
) -> None:
    what, raw = case
    fake_openai.reset()
    response = http.post("/embeddings", content=raw)
    assert_clean_4xx(response, what)
    assert fake_openai.calls == 0, what
