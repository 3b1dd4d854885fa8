"""Google Gemini API (`{base_url}/models/{model}:generateContent`), translated to and from OpenAI.

Request (OpenAI -> Gemini `GenerateContentRequest`):
- auth is the `x-goog-api-key` header only; the key never goes in the URL (`?key=` ends up
  in exception strings and proxy logs, rule 11). Streams use `:streamGenerateContent?alt=sse`.
- messages -> `systemInstruction` + `contents` (see `gemini_messages`).
- tools -> one `functionDeclarations` tool; the OpenAI JSON Schema goes in
  `parametersJsonSchema` (`parameters` takes only an OpenAPI subset and rejects e.g.
  `additionalProperties`, which strict OpenAI tools always carry); tool_choice ->
  `toolConfig.functionCallingConfig` (AUTO/ANY/NONE, a named function = ANY + its name).
- sampling and limits -> `generationConfig`; response_format json_object/json_schema ->
  `responseMimeType` application/json (+ `responseJsonSchema`, full JSON Schema);
  reasoning_effort -> `thinkingConfig.thinkingBudget` (Google's OpenAI-compatibility table).
- The API rejects fields it does not know, so the body is built from what maps; OpenAI
  knobs with no effect on the answer's shape (user, metadata, store, logit_bias,
  parallel_tool_calls, stream_options, ...) are dropped; what has no equivalent (logprobs,
  audio output, non-function tools, legacy functions) is a 400 naming the parameter.
Embeddings: one input -> `:embedContent`, several -> `:batchEmbedContents`; dimensions ->
outputDimensionality; Gemini reports no usage (the gateway estimates and marks it).
Errors are Google's {"error": {"code", "message", "status", "details"}}: a 400 about the
API key (ErrorInfo reason API_KEY_*) or FAILED_PRECONDITION (billing, region) is the
gateway's account, not the client's request (502, next candidate); a 429's
RetryInfo.retryDelay becomes the retry-after.
Responses and streams (Gemini -> OpenAI): see `gemini_stream`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from gateway.config import Deployment
from gateway.errors import ProviderError, UpstreamAuthError
from gateway.providers.base import BaseProvider, now_s, retry_after_s
from gateway.providers.gemini.request import convert_messages, unsupported
from gateway.providers.gemini.stream import (
    GeminiStream,
    embeddings_from_gemini,
    from_gemini,
    google_error,
)
from gateway.providers.openai_side import UnsupportedByProviderError, json_schema_of
from gateway.transport import UpstreamRequest
from gateway.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JSONObject,
)

API_KEY_HEADER = "x-goog-api-key"
# OpenAI reasoning_effort -> Gemini thinking budget in tokens (Google's OpenAI compatibility).
THINKING_BUDGETS: Mapping[str, int] = {
    "none": 0,
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
}
SAMPLING: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
TOOL_MODES: Mapping[str, str] = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def model_resource(model: str) -> str:
    """`models/{id}` (a configured `tunedModels/...` or `models/...` name is kept as is)."""
    return model if "/" in model else f"models/{model}"


class GeminiProvider(BaseProvider):
    kind: ClassVar[str] = "gemini"

    def model_url(self, d: Deployment, method: str) -> str:
        return f"{self.base_url}/{model_resource(d.model)}:{method}"

    def auth_headers(self) -> dict[str, str]:
        return {API_KEY_HEADER: self.api_key} if self.api_key else {}

    def chat_request(self, req: ChatRequest, d: Deployment) -> UpstreamRequest:
        method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
        return self.upstream_request(self.model_url(d, method), self.auth_headers(), to_gemini(req))

    def chat_response(self, body: bytes, d: Deployment) -> ChatResponse:
        return from_gemini(self.parse_json(body), d.model, now_s())

    def chat_stream(self, req: ChatRequest, d: Deployment) -> GeminiStream:
        return GeminiStream(d.model, now_s(), self.classify_error, candidates=_n(req.body))

    def embeddings_request(self, req: EmbeddingRequest, d: Deployment) -> UpstreamRequest:
        method, body = to_gemini_embeddings(req, model_resource(d.model))
        return self.upstream_request(self.model_url(d, method), self.auth_headers(), body)

    def embeddings_response(self, body: bytes, d: Deployment) -> EmbeddingResponse:
        return embeddings_from_gemini(self.parse_json(body), d.model)

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        error = google_error(body)
        if _is_account_problem(status, error):
            # A bad or blocked key, or billing/region: our account, not the client's request.
            return UpstreamAuthError(
                f"Upstream refused the gateway's credentials (HTTP {status}, "
                f"{error.get('status') or 'no status'}).",
                upstream_status=status,
            )
        delay_s = _retry_delay_s(error)
        if status == 429 and retry_after_s(headers) is None and delay_s is not None:
            headers = {"retry-after": f"{delay_s:g}"}
        return super().classify_error(status, body, headers)

    def error_fields(self, body: bytes) -> tuple[str, str, str | None, str | None]:
        """Google's body is {"error": {"code", "message", "status", "details"}}."""
        return str(google_error(body).get("message") or ""), "invalid_request_error", None, None


def _is_account_problem(status: int, error: JSONObject) -> bool:
    if status != 400:
        return False  # 401/403 are classified as auth failures by the shared rules
    if error.get("status") == "FAILED_PRECONDITION":  # e.g. billing or region not enabled
        return True
    return any(str(reason).startswith("API_KEY_") for reason in _detail_values(error, "reason"))


def _detail_values(error: JSONObject, key: str) -> list[object]:
    details = error.get("details")
    if not isinstance(details, list):
        return []
    return [d[key] for d in details if isinstance(d, dict) and key in d]


def _retry_delay_s(error: JSONObject) -> float | None:
    """google.rpc.RetryInfo.retryDelay ("37s"), sent on RESOURCE_EXHAUSTED."""
    for value in _detail_values(error, "retryDelay"):
        match = _RETRY_DELAY.match(str(value))
        if match:
            return float(match.group(1))
    return None


def _n(body: JSONObject) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 1 else 1


# --- request: OpenAI -> Gemini ---------------------------------------------------------


def to_gemini(req: ChatRequest) -> JSONObject:
    body = req.body
    _reject_unsupported(body)
    system, contents = convert_messages(req.messages)
    out: JSONObject = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    out.update(_tools(body))
    config = generation_config(req)
    if config:
        out["generationConfig"] = config
    return out


def _reject_unsupported(body: JSONObject) -> None:
    if body.get("logprobs") is True or body.get("top_logprobs") is not None:
        raise unsupported("'logprobs' asks for token log probabilities.", "logprobs")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or ()):
        raise unsupported("Audio output was requested.", "audio")
    if body.get("functions") is not None:
        raise unsupported("'functions' is legacy function calling; use tools.", "functions")


def generation_config(req: ChatRequest) -> JSONObject:
    body = req.body
    config: JSONObject = {
        gemini: body[openai] for openai, gemini in SAMPLING.items() if body.get(openai) is not None
    }
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if _n(body) > 1:
        config["candidateCount"] = _n(body)
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = list(stop)
    config.update(_response_format(body.get("response_format")))
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise unsupported(
                f"reasoning_effort {effort!r} has no thinking budget.", "reasoning_effort"
            )
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def _response_format(fmt: object) -> JSONObject:
    if not isinstance(fmt, dict) or fmt.get("type") == "text":
        return {}
    if fmt.get("type") == "json_object":
        return {"responseMimeType": "application/json"}
    if fmt.get("type") == "json_schema":
        schema = json_schema_of(fmt, "Gemini")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise unsupported(f"response_format type {fmt.get('type')!r}.", "response_format")


def _tools(body: JSONObject) -> JSONObject:
    tools = body.get("tools")
    if not tools:
        return {}
    declarations = [_declaration(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    out: JSONObject = {"tools": [{"functionDeclarations": declarations}]}
    choice = body.get("tool_choice")
    if choice is not None:
        out["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    return out


def _declaration(tool: JSONObject, where: str) -> JSONObject:
    if tool.get("type", "function") != "function":
        raise unsupported(f"Tool type {tool.get('type')!r} is not a function tool.", where)
    fn = tool["function"]
    out: JSONObject = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("parameters"):
        out["parametersJsonSchema"] = fn["parameters"]
    return out


def _calling_config(choice: object) -> JSONObject:
    if isinstance(choice, str) and choice in TOOL_MODES:
        return {"mode": TOOL_MODES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}
    raise unsupported(f"tool_choice {choice!r} has no Gemini equivalent.", "tool_choice")


# --- embeddings ------------------------------------------------------------------------


def to_gemini_embeddings(req: EmbeddingRequest, model: str) -> tuple[str, JSONObject]:
    """(method, body): embedContent for one input, batchEmbedContents for several."""
    if not all(isinstance(item, str) for item in req.inputs):
        raise unsupported("Token-array inputs cannot be embedded; send text.", "input")
    extra: JSONObject = {}
    dimensions = req.body.get("dimensions")
    if isinstance(dimensions, int) and not isinstance(dimensions, bool):
        extra["outputDimensionality"] = dimensions
    requests = [
        {"model": model, "content": {"parts": [{"text": text}]}, **extra} for text in req.inputs
    ]
    if len(requests) == 1:
        return "embedContent", requests[0]
    return "batchEmbedContents", {"requests": requests}


__all__ = ["GeminiProvider", "GeminiStream", "UnsupportedByProviderError", "to_gemini"]
