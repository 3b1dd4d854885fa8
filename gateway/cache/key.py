"""The response cache key: the tenant plus everything that changes the answer (rule 9).

key = sha256("v1" \\0 tenant \\0 canonical JSON of [request fields, routing controls])

- Request fields: every body field except the IGNORED ones. KEY_FIELDS lists the known
  OpenAI parameters that change the answer; a field nobody classified (a vendor extra
  such as vLLM's `top_k`) passes through to the upstream, so it is assumed to change the
  answer and is hashed too: an unknown field can cost a hit, never poison an entry.
- Routing controls (policy override, provider allow/deny lists, task tag, cost ceiling)
  choose which model answers, so a request restricted to one provider never gets an
  answer another provider produced.
- The tenant is the gateway key's team, else the key itself: one tenant never reads
  another's entries (compare LiteLLM #29955, Portkey's unscoped key).
- "v1" changes whenever the key or the stored entry format changes.

A test enumerates the openai SDK's chat parameters and fails when one of them is in
neither KEY_FIELDS nor IGNORED_FIELDS.
"""

from __future__ import annotations

import functools
import hashlib

from gateway import jsonutil
from gateway.routing import RoutingControls
from gateway.types import JSONObject

KEY_VERSION = "v1"
STORAGE_PREFIX = f"gateway:cache:{KEY_VERSION}:"

KEY_FIELDS: frozenset[str] = frozenset(
    {
        "model",  # the route or public model name asked for
        "messages",
        "tools",
        "tool_choice",
        "functions",  # deprecated form of tools
        "function_call",  # deprecated form of tool_choice
        "parallel_tool_calls",
        "response_format",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "reasoning_effort",
        "verbosity",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "moderation",  # moderation of input and output can block or change the answer
        "service_tier",  # echoed in the response; flex/priority answers are priced differently
    }
)

IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        # Streamed and non-streamed requests share entries: a hit is replayed in the
        # shape the client asked for.
        "stream",
        # Only asks for the final usage chunk, which the replay adds or leaves out per
        # request.
        "stream_options",
        # End-user id for the provider's abuse monitoring; the model never sees it.
        "user",
        # The newer name for `user`: same reason.
        "safety_identifier",
        # Labels stored with the completion on the provider's side (with `store`); not
        # shown to the model.
        "metadata",
        # Whether the provider keeps the completion for evals/distillation; not the answer.
        "store",
        # Hints for the provider's own prompt cache (which prefix to reuse, for how long):
        # they change price and latency, not the answer.
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
    }
)

# JSON gives 1 and 1.0 different bytes; these are the same setting.
_FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_FLOAT_FIELDS_SET = frozenset(_FLOAT_FIELDS)


@functools.lru_cache(maxsize=4096)  # tenants are keys and teams: few, asked per request
def tenant_tag(tenant: str) -> str:
    """A fixed-width tag for a tenant in storage keys (safe in Redis MATCH patterns)."""
    return hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:16]


def tenant_prefix(tenant: str | None) -> str:
    """Storage-key prefix of one tenant's entries, or of every entry (None)."""
    return STORAGE_PREFIX if tenant is None else f"{STORAGE_PREFIX}{tenant_tag(tenant)}:"


def cache_key(
    tenant: str, body: JSONObject, controls: RoutingControls, dialect: str = "chat"
) -> str:
    """The storage key of a chat request's response for this tenant; `dialect`: the
    client's wire format (chat's keys are as they were before dialects)."""
    prefix, seeded = _tenant_start(tenant)
    digest = seeded.copy()
    material: list[object] = [key_fields(body), routing_fields(controls)]
    if dialect != "chat":
        material.append(dialect)
    digest.update(jsonutil.dumps_canonical(material))
    return prefix + digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def _tenant_start(tenant: str) -> tuple[str, hashlib._Hash]:
    """A tenant's storage-key prefix and a SHA-256 that has hashed its part of the key
    material (copied per request: the same bytes are not hashed again)."""
    seeded = hashlib.sha256(f"{KEY_VERSION}\0{tenant}\0".encode())
    return tenant_prefix(tenant), seeded


def key_fields(body: JSONObject) -> JSONObject:
    """The body minus the ignored fields, numbers normalised (a copy when that changes
    anything: the body itself is what goes upstream)."""
    if IGNORED_FIELDS.isdisjoint(body):
        fields = body  # the usual case: nothing to leave out, no copy to make
    else:
        fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    if _FLOAT_FIELDS_SET.isdisjoint(fields):
        return fields
    for name in _FLOAT_FIELDS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if fields is body:
                fields = dict(body)
            fields[name] = float(value)
    return fields


def routing_fields(controls: RoutingControls) -> JSONObject:
    """The per-request routing controls that choose who answers; empty when none is set."""
    fields: JSONObject = {}
    if controls.policy:
        fields["policy"] = controls.policy
    if controls.allowed_providers is not None:
        fields["providers"] = sorted(controls.allowed_providers)
    if controls.excluded_providers:
        fields["exclude"] = sorted(controls.excluded_providers)
    if controls.task_tag:
        fields["task"] = controls.task_tag
    if controls.max_cost_usd is not None:
        fields["max_cost_usd"] = controls.max_cost_usd
    return fields
