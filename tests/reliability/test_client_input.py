"""No 500 from client input: every `x-gateway-*` and cache header, and every content part
type, whatever its value, gets an answer below 500; a refusal is an OpenAI-shaped 400
that names the header or the param (property tests, through the real gateway)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GATEWAY_KEY
from tests.gatewayproc import GatewayProcess

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HEADERS = [
    "x-gateway-policy",
    "x-gateway-max-cost-usd",
    "x-gateway-providers",
    "x-gateway-exclude-providers",
    "x-gateway-task",
    "x-gateway-cache-ttl",
    "cache-control",
]
PART_TYPES = ["text", "refusal", "image_url", "input_audio", "file", "video", ""]
CONFIG: dict[str, Any] = {
    "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
    "cache": {"enabled": True, "backend": "memory"},
    "providers": {"sim": {"kind": "simulated"}, "sim2": {"kind": "simulated"}},
    "models": [
        {"name": "sim-a", "id": "sim/a", "provider": "sim", "model": "a"},
        {"name": "sim-b", "id": "sim2/b", "provider": "sim2", "model": "b"},
    ],
    "routes": [{"name": "both", "policy": "cheapest", "models": ["sim/a", "sim2/b"]}],
}
# Header values as a client may send them: digits of every script, huge numbers, signs,
# lists with holes, control-free text of any alphabet.
HEADER_VALUES = st.one_of(
    st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=30),
    st.from_regex(r"[0-9]{1,5000}", fullmatch=True),
    st.sampled_from(["²", "٣", "-1", "1e308", "nan", "inf", ",,,", " , ", "0", "no-store"]),
    st.lists(st.sampled_from(["sim", "sim2", "nope", ""]), max_size=4).map(",".join),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway(CONFIG)


def _assert_clean(answer: httpx.Response, names: tuple[str, ...]) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}
        assert answer.status_code == 400, answer.text
        assert error["param"] is not None and error["param"].startswith(names), error


@SETTINGS
@given(name=st.sampled_from(HEADERS), value=HEADER_VALUES)
def test_any_control_header_value_is_served_or_a_400_naming_it(
    gateway: GatewayProcess, name: str, value: str
) -> None:
    body = {"model": "both", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", name: value.strip().encode()}
    answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)
    _assert_clean(answer, (name,))


@SETTINGS
@given(
    kind=st.sampled_from(PART_TYPES),
    fields=st.dictionaries(
        st.sampled_from(["text", "refusal", "image_url", "input_audio", "file", "url"]),
        JSON_VALUES,
        max_size=3,
    ),
)
def test_any_content_part_is_served_or_a_400_naming_it(
    gateway: GatewayProcess, kind: str, fields: dict[str, Any]
) -> None:
    part = {**fields, "type": kind}
    body = {"model": "both", "messages": [{"role": "user", "content": [part]}]}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)
    _assert_clean(answer, ("messages",))


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "text", "text": 5}, "messages[0].content[0].text"),
        ({"type": "text", "text": None}, "messages[0].content[0].text"),
        ({"type": "image_url", "image_url": {"url": 3}}, "messages[0].content[0].image_url"),
    ],
)
def test_the_content_parts_that_gave_500s(
    gateway: GatewayProcess, part: dict[str, Any], param: str
) -> None:
    body = {"model": "both", "messages": [{"role": "user", "content": [part]}]}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


@pytest.mark.parametrize("value", ["²", "9" * 4301, "1" * 10])
def test_the_cache_ttls_that_gave_500s(gateway: GatewayProcess, value: str) -> None:
    body = {"model": "both", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", "x-gateway-cache-ttl": value.encode()}
    answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "x-gateway-cache-ttl"
