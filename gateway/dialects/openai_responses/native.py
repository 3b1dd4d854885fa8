"""A `/v1/responses` request for a deployment with `responses_api: true` (OpenAI's own
Responses API): the body it is sent, and its Response made the gateway's.

The gateway keeps the conversation state (its store, `previous_response_id`), so that a
conversation can move between providers and its records stay in the operator's SQL.
The upstream is sent the client's body as it came (built-in tools, files, `include`,
fields this gateway does not know yet) except:

- `previous_response_id` is replaced by the stored turns it names, in front of this
  request's input; `store` is false (nothing is kept at OpenAI);
- items go by value, as OpenAI's stateless clients send them (an `id` names an item
  OpenAI stored, and with `store: false` it stored none): messages, function calls and
  their outputs without their `id`, an assistant message as its text; a reasoning item
  only with its `encrypted_content` (OpenAI cannot use one without its stored copy);
  with `reasoning` set and `store` on, `include` asks for `reasoning.encrypted_content`
  so that the next turn can carry the reasoning.

The Response (and every stream event that carries one) gets the gateway's id, the
client's `previous_response_id` and `store`; the rest is the upstream's.
"""

from __future__ import annotations

from gateway.dialects.openai_responses.output import ResponseShell
from gateway.types import JSONObject

_WITHOUT_ID = frozenset({"message", "function_call", "function_call_output"})
_ENCRYPTED_REASONING = "reasoning.encrypted_content"


def upstream_body(body: JSONObject, history: list[JSONObject], store: bool) -> JSONObject:
    out = {k: v for k, v in body.items() if k not in ("previous_response_id", "store")}
    current = body.get("input")
    if history or not isinstance(current, str):
        turn = [{"role": "user", "content": current}] if isinstance(current, str) else current
        items = (_by_value(item) for item in [*history, *(turn or ())])
        out["input"] = [item for item in items if item is not None]
    out["store"] = False
    if store and isinstance(body.get("reasoning"), dict):
        include = body.get("include")
        include = list(include) if isinstance(include, list) else []
        if _ENCRYPTED_REASONING not in include:
            out["include"] = [*include, _ENCRYPTED_REASONING]
    return out


def _by_value(item: object) -> object:
    if not isinstance(item, dict):
        return item
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "reasoning":
        return item if item.get("encrypted_content") else None
    if kind not in _WITHOUT_ID:
        return item  # a built-in tool's call (its id is part of it), ...
    if kind == "message" and item.get("role") == "assistant" and "id" in item:
        return {"role": "assistant", "content": _text(item.get("content"))}
    return {k: v for k, v in item.items() if k != "id"}


def _text(content: object) -> object:
    """An assistant message's output_text and refusal parts, as one string."""
    if not isinstance(content, list):
        return content
    return "".join(
        str(part.get("text") or part.get("refusal") or "")
        for part in content
        if isinstance(part, dict)
    )


def own_response(response: JSONObject, shell: ResponseShell) -> JSONObject:
    """The upstream's Response as the gateway's (its id, and what the client asked)."""
    return {
        **response,
        "id": shell.id,
        "previous_response_id": shell.previous,
        "store": shell.store,
    }
