"""The cache key: every parameter that changes the answer changes it, the rest don't."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from openai.types.chat import completion_create_params

from gateway.cache.key import IGNORED_FIELDS, KEY_FIELDS, STORAGE_PREFIX, cache_key, tenant_prefix
from gateway.routing.planning import RoutingControls

NO_CONTROLS = RoutingControls()
BASE: dict[str, Any] = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": "Hello?"}],
}

# One different value per answer-changing field (absent from BASE, or different from it).
KEY_VALUES: dict[str, Any] = {
    "model": "other-model",
    "messages": [{"role": "user", "content": "Hello!"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "required",
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "temperature": 0.3,
    "top_p": 0.9,
    "max_tokens": 50,
    "max_completion_tokens": 50,
    "stop": ["END"],
    "seed": 7,
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": {"50256": -100},
    "reasoning_effort": "high",
    "verbosity": "low",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "Hello"},
    "web_search_options": {"search_context_size": "low"},
    "moderation": {"model": "omni-moderation-latest"},
    "service_tier": "flex",
}

IGNORED_VALUES: dict[str, Any] = {
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "user-123",
    "safety_identifier": "hash-of-user",
    "metadata": {"team": "search"},
    "store": True,
    "prompt_cache_key": "conversation-42",
    "prompt_cache_options": {"mode": "explicit"},
    "prompt_cache_retention": "24h",
}


def key(
    body: dict[str, Any], tenant: str = "team:a", controls: RoutingControls = NO_CONTROLS
) -> str:
    return cache_key(tenant, body, controls)


def sdk_chat_parameters() -> set[str]:
    names: set[str] = set()
    for params in (
        completion_create_params.CompletionCreateParamsNonStreaming,
        completion_create_params.CompletionCreateParamsStreaming,
    ):
        for klass in params.__mro__:
            names |= set(getattr(klass, "__annotations__", {}))
    return names


def test_every_openai_chat_parameter_is_classified() -> None:
    names = sdk_chat_parameters()
    assert {"messages", "model", "stream", "temperature"} <= names  # the enumeration works
    unclassified = names - KEY_FIELDS - IGNORED_FIELDS
    assert unclassified == set(), f"classify in gateway/cache/key.py: {sorted(unclassified)}"


def test_key_and_ignored_fields_are_disjoint_and_covered_here() -> None:
    assert KEY_FIELDS & IGNORED_FIELDS == set()
    assert set(KEY_VALUES) == KEY_FIELDS
    assert set(IGNORED_VALUES) == IGNORED_FIELDS


@pytest.mark.parametrize("field", sorted(KEY_FIELDS))
def test_answer_changing_field_changes_the_key(field: str) -> None:
    changed = {**BASE, field: KEY_VALUES[field]}
    assert key(changed) != key(BASE)


@pytest.mark.parametrize("field", sorted(IGNORED_FIELDS))
def test_ignored_field_keeps_the_key(field: str) -> None:
    assert key({**BASE, field: IGNORED_VALUES[field]}) == key(BASE)


def test_unclassified_field_is_assumed_to_change_the_answer() -> None:
    assert key({**BASE, "top_k": 40}) != key(BASE)  # a vendor extra passed upstream


def test_tenant_scopes_the_key() -> None:
    assert key(BASE, tenant="team:a") != key(BASE, tenant="team:b")
    assert key(BASE, tenant="team:a") != key(BASE, tenant="key:abc")
    assert key(BASE, "team:a").startswith(tenant_prefix("team:a"))
    assert not key(BASE, "team:b").startswith(tenant_prefix("team:a"))
    assert tenant_prefix(None) == STORAGE_PREFIX
    assert key(BASE).startswith(STORAGE_PREFIX)


@pytest.mark.parametrize(
    "controls",
    [
        RoutingControls(policy="cheapest"),
        RoutingControls(allowed_providers=frozenset({"openai"})),
        RoutingControls(excluded_providers=frozenset({"openai"})),
        RoutingControls(task_tag="code"),
        RoutingControls(max_cost_usd=0.01),
    ],
    ids=["policy", "providers", "exclude", "task", "max_cost"],
)
def test_routing_controls_change_the_key(controls: RoutingControls) -> None:
    assert key(BASE, controls=controls) != key(BASE)


def test_equal_values_give_equal_keys() -> None:
    reordered = {"messages": BASE["messages"], "temperature": 1, "model": "gpt-test"}
    assert key(reordered) == key({**BASE, "temperature": 1.0})
    assert type(reordered["temperature"]) is int  # normalised in the key, not in the body
    assert key(copy.deepcopy(BASE)) == key(BASE)
    provider_order = RoutingControls(allowed_providers=frozenset({"a", "b"}))
    assert key(BASE, controls=provider_order) == key(
        BASE, controls=RoutingControls(allowed_providers=frozenset({"b", "a"}))
    )


def test_key_does_not_contain_the_tenant_or_prompt_in_clear() -> None:
    value = key(BASE, tenant="team:secret-team")
    assert "secret-team" not in value and "Hello" not in value
