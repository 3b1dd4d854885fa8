"""OpenAI's Responses API (`POST {base_url}/responses`), for a `/v1/responses` request sent
to a deployment with `responses_api: true`: the upstream is sent the body the responses
dialect made from the client's (gateway.dialects.openai_responses.native), and its
Response, or its stream of events, goes back to the client as it came. This module
reads them into the internal completion and chunks, for what the gateway itself needs:
usage and cost, the commit point, the cache, fallback and errors.

Response -> `chat.completion`: the `output_text` parts of message items joined into
`content` (`refusal` parts into `refusal`), `function_call` items as `tool_calls`;
status `incomplete` -> finish_reason `length` (max_output_tokens) or `content_filter`,
tool calls -> `tool_calls`, else `stop`. A Response with status `failed` is its error.
Usage: input_tokens (cached included) -> prompt_tokens, output_tokens (reasoning
included) -> completion_tokens, with their details.

Stream events -> chunks:

    response.created                        the role-only first chunk (id, model)
    response.output_item.added              a function_call: the first tool_call chunk
    response.output_text.delta              content
    response.refusal.delta                  refusal
    response.function_call_arguments.delta  an arguments piece
    response.completed | .incomplete        the finish chunk and usage; done
    response.failed, error                  the matching ProviderError
    anything else                           nothing (in_progress, content parts,
                                            reasoning, built-in tools' progress: the
                                            client still gets them as they came)
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway import jsonutil
from gateway.errors import ProviderError, UpstreamUnavailableError
from gateway.providers.event_stream import Classifier, EventStream
from gateway.providers.openai_side import one_choice_completion
from gateway.types import ChatResponse, JSONObject, Usage

# A failed Response's error code -> the HTTP status the same failure has outside a stream.
_ERROR_STATUS: Mapping[str, int] = {
    "rate_limit_exceeded": 429,
    "invalid_prompt": 400,
    "invalid_image": 400,
    "invalid_image_format": 400,
    "invalid_base64_image": 400,
    "invalid_image_url": 400,
    "image_too_large": 400,
    "image_too_small": 400,
    "image_parse_error": 400,
    "image_content_policy_violation": 400,
    "invalid_image_mode": 400,
    "image_file_too_large": 400,
    "unsupported_image_media_type": 400,
    "empty_image_file": 400,
    "failed_to_download_image": 400,
    "image_file_not_found": 400,
}
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def is_response(data: JSONObject) -> bool:
    """A Responses API answer (its `object`), not a chat completion."""
    return data.get("object") == "response"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from_responses(data: object) -> Usage | None:
    if not isinstance(data, dict):
        return None
    input_details = data.get("input_tokens_details") or {}
    output_details = data.get("output_tokens_details") or {}
    return Usage(
        prompt_tokens=_count(data.get("input_tokens")),
        completion_tokens=_count(data.get("output_tokens")),
        cached_tokens=_count(input_details.get("cached_tokens")),
        reasoning_tokens=_count(output_details.get("reasoning_tokens")),
    )


def failure(response: JSONObject, classify: Classifier) -> ProviderError:
    """A failed Response (or an `error` event's fields) as the error it would be outside
    a stream."""
    error = response.get("error")
    fields = error if isinstance(error, dict) else response
    code = fields.get("code")
    status = _ERROR_STATUS.get(code, 500) if isinstance(code, str) else 500
    body = {"error": {"message": fields.get("message") or "The upstream response failed.",
                      "type": "server_error" if status >= 500 else "invalid_request_error",
                      "code": code}}  # fmt: skip
    return classify(status, jsonutil.dumps(body), {})


def finish_reason(response: JSONObject, has_calls: bool) -> str:
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return _INCOMPLETE.get(reason, "length") if isinstance(reason, str) else "length"
    return "tool_calls" if has_calls else "stop"


def from_response(data: JSONObject, created_s: int, classify: Classifier) -> ChatResponse:
    if data.get("status") == "failed":
        raise failure(data, classify)
    output = data.get("output")
    if not isinstance(output, list):
        raise UpstreamUnavailableError("The upstream returned a response without output.")
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[JSONObject] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refusals.append(part["refusal"])
        elif item.get("type") == "function_call":
            fn = {"name": item.get("name"), "arguments": item.get("arguments") or ""}
            calls.append({"id": item.get("call_id"), "type": "function", "function": fn})
    message: JSONObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": "".join(refusals) or None,
    }
    if calls:
        message["tool_calls"] = calls
    finish = finish_reason(data, bool(calls))
    usage = usage_from_responses(data.get("usage"))
    return one_choice_completion(
        data.get("id"), created_s, data.get("model"), message, finish, usage
    )


class ResponsesStream(EventStream):
    """Per-stream state: the Response's id and model, tool-call numbering."""

    __slots__ = ("_calls",)

    def __init__(self, created_s: int, classify: Classifier) -> None:
        super().__init__(created_s, classify)
        self._calls: dict[str, int] = {}  # function_call item id -> tool-call index

    # --- event handlers ---------------------------------------------------------------
    def _created(self, data: JSONObject) -> list[JSONObject]:
        response = data.get("response")
        if not isinstance(response, dict):
            raise UpstreamUnavailableError("The upstream sent response.created without one.")
        self._id = str(response.get("id") or "")
        self._model = str(response.get("model") or "")
        return [self._chunk({"role": "assistant", "content": ""})]

    def _item_added(self, data: JSONObject) -> list[JSONObject]:
        item = data.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return []
        index = self._calls[str(item.get("id"))] = len(self._calls)
        call = {"index": index, "id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": ""}}  # fmt: skip
        return [self._chunk({"tool_calls": [call]})]

    def _text(self, data: JSONObject) -> list[JSONObject]:
        delta = data.get("delta")
        return [self._chunk({"content": delta})] if isinstance(delta, str) and delta else []

    def _refusal(self, data: JSONObject) -> list[JSONObject]:
        delta = data.get("delta")
        return [self._chunk({"refusal": delta})] if isinstance(delta, str) and delta else []

    def _arguments(self, data: JSONObject) -> list[JSONObject]:
        index = self._calls.get(str(data.get("item_id")))
        delta = data.get("delta")
        if index is None or not isinstance(delta, str) or not delta:
            return []
        return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})]

    def _end(self, data: JSONObject) -> list[JSONObject]:
        response = data.get("response")
        if not isinstance(response, dict):
            raise UpstreamUnavailableError("The upstream ended its stream without a response.")
        self.usage = usage_from_responses(response.get("usage"))
        self.done = True
        return [self._chunk({}, finish_reason(response, bool(self._calls)))]

    def _failed(self, data: JSONObject) -> list[JSONObject]:
        response = data.get("response")
        raise failure(response if isinstance(response, dict) else {}, self._classify)

    def _error(self, data: JSONObject) -> list[JSONObject]:
        raise failure(data, self._classify)


ResponsesStream.handlers = {
    "response.created": ResponsesStream._created,
    "response.output_item.added": ResponsesStream._item_added,
    "response.output_text.delta": ResponsesStream._text,
    "response.refusal.delta": ResponsesStream._refusal,
    "response.function_call_arguments.delta": ResponsesStream._arguments,
    "response.completed": ResponsesStream._end,
    "response.incomplete": ResponsesStream._end,
    "response.failed": ResponsesStream._failed,
    "error": ResponsesStream._error,
}
