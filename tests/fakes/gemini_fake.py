"""A fake Gemini API: `POST /v1beta/models/{model}:{method}` for generateContent,
streamGenerateContent (SSE, `alt=sse` required), embedContent and batchEmbedContents.

It rejects (400 INVALID_ARGUMENT, Google-shaped, and records a violation) what the real
API rejects: a wrong or missing `x-goog-api-key`, an API key in the query string (the
gateway must never put one there), an `Authorization` header, unknown fields anywhere it
checks (top level, generationConfig, parts, tools), contents roles other than user/model
(so no `system` role), empty parts or empty text, parts with zero or several data
fields, bad inlineData, functionCall outside model turns, functionResponse parts that do
not answer the functionCalls of the previous model turn (by name and count), mutually
exclusive fields set together (responseSchema/responseJsonSchema, parameters/
parametersJsonSchema), out-of-range sampling values, allowedFunctionNames without mode ANY,
and `parameters` schemas with fields outside Google's OpenAPI subset.

Answers are deterministic: a fixed reply (one word = one token for maxOutputTokens, one
word per stream event), a functionCall when tools are offered and the last turn answers
none, `candidateCount` candidates, fixed usage numbers (thoughts and cached tokens
settable). Scripting: `Behaviour(status=429|503|400|...)` answers Google's error body
for that status (429 carries a RetryInfo of RETRY_DELAY_S), `hang_s`, `drop_after_chunks`;
`GeminiBehaviour(block_prompt=True)` answers a prompt blocked before any candidate,
`finish_reason="SAFETY"` a candidate stopped by the filter, `error_event_after=N` an
in-stream error event after N events.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.server import Behaviour, FakeServer, Handler, write_sse

FORBIDDEN_HEADERS = ("authorization", "cookie", "openai-organization", "x-forwarded-for")
TOP_LEVEL = frozenset(
    (
        "contents systemInstruction tools toolConfig generationConfig safetySettings cachedContent"
    ).split()
)
GENERATION_CONFIG = frozenset(
    (
        "stopSequences responseMimeType responseSchema responseJsonSchema responseModalities "
        "candidateCount maxOutputTokens temperature topP topK seed presencePenalty "
        "frequencyPenalty responseLogprobs logprobs thinkingConfig mediaResolution"
    ).split()
)
DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
PART_FIELDS = frozenset({*DATA_FIELDS, "thought", "thoughtSignature", "videoMetadata"})
# Google's `Schema` (an OpenAPI 3.0 subset): what `parameters` accepts.
SCHEMA_FIELDS = frozenset(
    (
        "type format title description nullable enum maxItems minItems properties required "
        "minProperties maxProperties minLength maxLength pattern example anyOf "
        "propertyOrdering default items minimum maximum"
    ).split()
)
FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred.",
    503: "The model is overloaded. Please try again later.",
}
TOOL_ARGS = {"city": "Paris"}
RETRY_DELAY_S = 2
RETRY_INFO = {
    "@type": "type.googleapis.com/google.rpc.RetryInfo",
    "retryDelay": f"{RETRY_DELAY_S}s",
}


@dataclass
class GeminiBehaviour(Behaviour):
    block_prompt: bool = False  # promptFeedback.blockReason, no candidates
    finish_reason: str | None = None  # e.g. "SAFETY": the candidate stops with no text
    error_event_after: int | None = None  # streams: an error event after N events
    error_message: str | None = None  # that event's message (default: the 503 one)


class FakeGemini(FakeServer):
    name = "gemini"

    def __init__(self, api_key: str = "gemini-fake-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.reply = "Hello from the fake Gemini."
        self.prompt_tokens = 12
        self.candidates_tokens = 6
        self.thoughts_tokens = 0
        self.cached_tokens = 0
        self.dimensions = 4  # default embedding size

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1beta/models/{tail}", _dispatch)]

    def validate(self, request: web.Request, body: Any) -> list[str]:
        problems = request_problems(request, self.api_key)
        _, _, method = request.match_info.get("tail", "").rpartition(":")
        if not isinstance(body, dict):
            return [*problems, "body must be a JSON object"]
        if method in ("generateContent", "streamGenerateContent"):
            return problems + generate_problems(body)
        if method in ("embedContent", "batchEmbedContents"):
            return problems + embed_problems(body, method, f"models/{_model(request)}")
        return [*problems, f"unknown method {method!r}"]

    def error_body(self, status: int) -> Any:
        details = [RETRY_INFO] if status == 429 else None
        return google_error(status, MESSAGES.get(status, f"fake error {status}"), details)

    def invalid_body(self, message: str) -> Any:
        return google_error(400, message)

    def usage(self, candidates_tokens: int) -> dict[str, Any]:
        usage = {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": self.prompt_tokens + candidates_tokens + self.thoughts_tokens,
        }
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        return usage


def google_error(status: int, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _model(request: web.Request) -> str:
    return request.match_info.get("tail", "").rpartition(":")[0]


# --- validation ------------------------------------------------------------------------


def request_problems(request: web.Request, api_key: str) -> list[str]:
    headers = request.headers
    problems = [f"forbidden header {name}" for name in FORBIDDEN_HEADERS if name in headers]
    if headers.get("x-goog-api-key") != api_key:
        problems.append("API key not valid. Please pass a valid API key.")
    if "key" in request.query:
        problems.append("the API key must not travel in the URL (?key=)")
    method = request.match_info.get("tail", "").rpartition(":")[2]
    if method == "streamGenerateContent" and request.query.get("alt") != "sse":
        problems.append("streamGenerateContent without alt=sse (the gateway expects SSE)")
    if method != "streamGenerateContent" and "alt" in request.query:
        problems.append(f"unexpected alt= on {method}")
    if not str(headers.get("content-type", "")).startswith("application/json"):
        problems.append("content-type must be application/json")
    return problems


def _unknown(data: dict[str, Any], allowed: frozenset[str], where: str) -> list[str]:
    return [
        f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
        for key in data
        if key not in allowed
    ]


def generate_problems(body: dict[str, Any]) -> list[str]:
    problems = _unknown(body, TOP_LEVEL, "")
    problems += contents_problems(body.get("contents"))
    system = body.get("systemInstruction")
    if system is not None:
        problems += _system_problems(system)
    problems += config_problems(body.get("generationConfig"))
    names = _declared_names(body.get("tools"))
    problems += tools_problems(body.get("tools")) + _tool_config_problems(body, names)
    return problems


def _system_problems(system: Any) -> list[str]:
    if not isinstance(system, dict) or set(system) - {"parts", "role"}:
        return ["systemInstruction: must be a Content with parts"]
    parts = system.get("parts")
    if not isinstance(parts, list) or not parts:
        return ["systemInstruction.parts: must not be empty"]
    ok = all(isinstance(p, dict) and set(p) == {"text"} and p["text"] for p in parts)
    return [] if ok else ["systemInstruction.parts: only non-empty text parts"]


def contents_problems(contents: Any) -> list[str]:
    if not isinstance(contents, list) or not contents:
        return ["* GenerateContentRequest.contents: contents is not specified"]
    problems: list[str] = []
    previous: dict[str, Any] | None = None
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict) or set(content) - {"role", "parts"}:
            problems.append(f"{where}: only role and parts are allowed")
            continue
        role = content.get("role")
        if role not in ("user", "model"):
            problems.append(f"{where}.role: Please use a valid role: user, model. Got {role!r}")
            continue
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            problems.append(f"{where}.parts: must not be empty")
            continue
        problems += [
            p for i, part in enumerate(parts) for p in _part_problems(part, role, where, i)
        ]
        problems += _response_problems(content, previous, where)
        previous = content
    return problems


def _part_problems(part: Any, role: str, where: str, index: int) -> list[str]:
    here = f"{where}.parts[{index}]"
    if not isinstance(part, dict):
        return [f"{here}: must be an object"]
    problems = _unknown(part, PART_FIELDS, here)
    present = [key for key in DATA_FIELDS if key in part]
    if len(present) != 1:
        return [*problems, f"{here}: exactly one data field is required, got {present}"]
    kind = present[0]
    value = part[kind]
    if kind == "text" and (not isinstance(value, str) or not value):
        problems.append(f"{here}: Unable to submit request because it has an empty text parameter")
    elif kind == "inlineData":
        problems += _inline_problems(value, here)
    elif kind == "fileData" and not (isinstance(value, dict) and value.get("fileUri")):
        problems.append(f"{here}.fileData.fileUri: required")
    elif kind == "functionCall":
        if role != "model":
            problems.append(f"{here}: functionCall is only valid in model turns")
        if not (
            isinstance(value, dict) and value.get("name") and isinstance(value.get("args"), dict)
        ):
            problems.append(f"{here}.functionCall: needs a name and args object")
    elif kind == "functionResponse":
        if role != "user":
            problems.append(f"{here}: functionResponse is only valid in user turns")
        if not (
            isinstance(value, dict)
            and value.get("name")
            and isinstance(value.get("response"), dict)
        ):
            problems.append(f"{here}.functionResponse: needs a name and a response object")
    return problems


def _inline_problems(value: Any, where: str) -> list[str]:
    if not isinstance(value, dict) or not value.get("mimeType") or not value.get("data"):
        return [f"{where}.inlineData: mimeType and data are required"]
    try:
        base64.b64decode(value["data"], validate=True)
    except (binascii.Error, ValueError):
        return [f"{where}.inlineData.data: Invalid value (bytes): not base64"]
    return []


def _calls(content: dict[str, Any]) -> list[str]:
    return [
        p["functionCall"]["name"]
        for p in content["parts"]
        if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)
    ]


def _response_problems(content: dict[str, Any], previous: Any, where: str) -> list[str]:
    answered = [
        p["functionResponse"].get("name")
        for p in content["parts"]
        if isinstance(p, dict) and isinstance(p.get("functionResponse"), dict)
    ]
    asked = (
        _calls(previous) if isinstance(previous, dict) and previous.get("role") == "model" else []
    )
    if not answered:
        return []
    if not asked:
        return [f"{where}: functionResponse parts must follow a functionCall turn"]
    if sorted(answered) != sorted(asked):
        return [
            f"{where}: Please ensure that the number of function response parts is equal to "
            "the number of function call parts of the function call turn."
        ]
    return []


def config_problems(config: Any) -> list[str]:
    if config is None:
        return []
    if not isinstance(config, dict):
        return ["generationConfig: must be an object"]
    problems = _unknown(config, GENERATION_CONFIG, "generation_config")
    for name, low, high in (("temperature", 0, 2), ("topP", 0, 1)):
        value = config.get(name)
        if value is not None and not (isinstance(value, int | float) and low <= value <= high):
            problems.append(f"generationConfig.{name}: out of range")
    for name in ("maxOutputTokens", "candidateCount"):
        value = config.get(name)
        if value is not None and not (isinstance(value, int) and value >= 1):
            problems.append(f"generationConfig.{name}: must be a positive integer")
    stop = config.get("stopSequences")
    if stop is not None and not (isinstance(stop, list) and 0 < len(stop) <= 5):
        problems.append("generationConfig.stopSequences: 1 to 5 strings")
    if "responseSchema" in config and "responseJsonSchema" in config:
        problems.append("responseSchema and responseJsonSchema are mutually exclusive")
    if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
        problems.append("responseJsonSchema requires responseMimeType application/json")
    return problems


def _declared_names(tools: Any) -> set[str]:
    names = set()
    for tool in tools if isinstance(tools, list) else ():
        for declaration in (tool or {}).get("functionDeclarations") or ():
            names.add((declaration or {}).get("name"))
    return names


def tools_problems(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list) or not tools:
        return ["tools: must be a non-empty list"]
    problems = []
    for index, tool in enumerate(tools):
        allowed = frozenset({"functionDeclarations", "googleSearch", "codeExecution", "urlContext"})
        if not isinstance(tool, dict):
            problems.append(f"tools[{index}]: must be an object")
            continue
        problems += _unknown(tool, allowed, f"tools[{index}]")
        for n, declaration in enumerate(tool.get("functionDeclarations") or ()):
            problems += _declaration_problems(
                declaration, f"tools[{index}].function_declarations[{n}]"
            )
    return problems


def _declaration_problems(declaration: Any, where: str) -> list[str]:
    allowed = frozenset({"name", "description", "parameters", "parametersJsonSchema", "behavior"})
    if not isinstance(declaration, dict):
        return [f"{where}: must be an object"]
    problems = _unknown(declaration, allowed, where)
    if not FUNCTION_NAME.match(str(declaration.get("name") or "")):
        problems.append(f"{where}.name: Invalid function name")
    if "parameters" in declaration and "parametersJsonSchema" in declaration:
        problems.append(f"{where}: parameters and parametersJsonSchema are mutually exclusive")
    if "parameters" in declaration:
        problems += schema_problems(declaration["parameters"], f"{where}.parameters")
    schema = declaration.get("parametersJsonSchema")
    if schema is not None and not (isinstance(schema, dict) and schema.get("type") == "object"):
        problems.append(f"{where}.parametersJsonSchema: must describe an object")
    return problems


def schema_problems(schema: Any, where: str) -> list[str]:
    if not isinstance(schema, dict):
        return [f"{where}: must be an object"]
    problems = _unknown(schema, SCHEMA_FIELDS, where)
    for name, child in (schema.get("properties") or {}).items():
        problems += schema_problems(child, f"{where}.properties[{name}]")
    if isinstance(schema.get("items"), dict):
        problems += schema_problems(schema["items"], f"{where}.items")
    return problems


def _tool_config_problems(body: dict[str, Any], names: set[str]) -> list[str]:
    config = body.get("toolConfig")
    if config is None:
        return []
    calling = config.get("functionCallingConfig") if isinstance(config, dict) else None
    if not isinstance(calling, dict) or set(calling) - {"mode", "allowedFunctionNames"}:
        return ["toolConfig.functionCallingConfig: invalid"]
    mode = calling.get("mode")
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        return [f"toolConfig.functionCallingConfig.mode: invalid {mode!r}"]
    allowed = calling.get("allowedFunctionNames")
    if allowed is not None and mode not in ("ANY", "VALIDATED"):
        return ["allowedFunctionNames should only be set when the Mode is ANY"]
    if allowed is not None and not set(allowed) <= names:
        return [f"allowedFunctionNames: unknown functions {sorted(set(allowed) - names)}"]
    return []


def embed_problems(body: dict[str, Any], method: str, path_model: str) -> list[str]:
    if method == "batchEmbedContents":
        if (
            set(body) != {"requests"}
            or not isinstance(body["requests"], list)
            or not body["requests"]
        ):
            return ["batchEmbedContents: requests is required (and nothing else)"]
        return [
            p
            for i, request in enumerate(body["requests"])
            for p in _embed_request_problems(request, f"requests[{i}]", path_model, True)
        ]
    return _embed_request_problems(body, "", path_model, False)


def _embed_request_problems(request: Any, where: str, path_model: str, batch: bool) -> list[str]:
    allowed = frozenset({"model", "content", "taskType", "title", "outputDimensionality"})
    if not isinstance(request, dict):
        return [f"{where}: must be an object"]
    problems = _unknown(request, allowed, where)
    model = request.get("model")
    if (batch or model is not None) and model != path_model:
        problems.append(f"{where}.model: {model!r} must match the model in the URL ({path_model})")
    content = request.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        return [*problems, f"{where}.content.parts: required"]
    if not all(isinstance(p, dict) and set(p) == {"text"} and p["text"] for p in parts):
        problems.append(f"{where}.content.parts: only non-empty text parts are embedded")
    dims = request.get("outputDimensionality")
    if dims is not None and not (isinstance(dims, int) and dims >= 1):
        problems.append(f"{where}.outputDimensionality: must be a positive integer")
    return problems


# --- answers ---------------------------------------------------------------------------


def _wants_tool(body: dict[str, Any]) -> bool:
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    last = body["contents"][-1]
    answered = any("functionResponse" in part for part in last["parts"])
    return bool(_declared_names(body.get("tools"))) and mode != "NONE" and not answered


def _tool_name(body: dict[str, Any]) -> str:
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames")
    if allowed:
        return str(allowed[0])
    return str(body["tools"][0]["functionDeclarations"][0]["name"])


def _words(fake: FakeGemini, body: dict[str, Any], b: Behaviour) -> tuple[list[str], str]:
    words = (b.content or fake.reply).split(" ")
    limit = (body.get("generationConfig") or {}).get("maxOutputTokens")
    if limit is not None and len(words) > limit:
        return words[:limit], "MAX_TOKENS"
    return words, "STOP"


def _candidates(fake: FakeGemini, body: dict[str, Any], b: Behaviour) -> list[dict[str, Any]]:
    count = (body.get("generationConfig") or {}).get("candidateCount") or 1
    words, reason = _words(fake, body, b)
    parts: list[dict[str, Any]] = [{"text": " ".join(words)}]
    if _wants_tool(body):
        parts = [{"functionCall": {"name": _tool_name(body), "args": TOOL_ARGS}}]
        reason = "STOP"
    if isinstance(b, GeminiBehaviour) and b.finish_reason:
        return [{"finishReason": b.finish_reason, "index": i} for i in range(count)]
    return [
        {"content": {"parts": parts, "role": "model"}, "finishReason": reason, "index": i}
        for i in range(count)
    ]


def _response(fake: FakeGemini, body: dict[str, Any], b: Behaviour) -> dict[str, Any]:
    out: dict[str, Any] = {"modelVersion": "gemini-2.5-flash", "responseId": "fakeResp01"}
    if isinstance(b, GeminiBehaviour) and b.block_prompt:
        out["promptFeedback"] = {"blockReason": "SAFETY"}
        out["usageMetadata"] = fake.usage(0)
        return out
    candidates = _candidates(fake, body, b)
    out["candidates"] = candidates
    words, reason = _words(fake, body, b)
    out["usageMetadata"] = fake.usage(
        len(words) if reason == "MAX_TOKENS" else fake.candidates_tokens
    )
    return out


async def _dispatch(
    request: web.Request, fake: FakeServer, b: Behaviour, body: Any
) -> web.StreamResponse:
    assert isinstance(fake, FakeGemini)
    method = request.match_info["tail"].rpartition(":")[2]
    if method == "embedContent":
        return web.json_response({"embedding": {"values": _vector(fake, body, 0)}})
    if method == "batchEmbedContents":
        vectors = [{"values": _vector(fake, r, i)} for i, r in enumerate(body["requests"])]
        return web.json_response({"embeddings": vectors})
    if method == "generateContent":
        return web.json_response(_response(fake, body, b))
    return await write_sse(request, _stream_events(fake, body, b), b)


def _vector(fake: FakeGemini, request: dict[str, Any], index: int) -> list[float]:
    size = request.get("outputDimensionality") or fake.dimensions
    return [round(0.1 * (index + 1) + 0.01 * k, 4) for k in range(size)]


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\r\n\r\n".encode()  # Google separates events with CRLF


def _stream_events(fake: FakeGemini, body: dict[str, Any], b: Behaviour) -> list[bytes]:
    final = _response(fake, body, b)
    envelope = {"modelVersion": final["modelVersion"], "responseId": final["responseId"]}
    partial_usage = {"promptTokenCount": fake.prompt_tokens, "totalTokenCount": fake.prompt_tokens}
    events = []
    candidates = final.get("candidates") or []
    if candidates and "content" in candidates[0]:
        first = candidates[0]["content"]["parts"][0]
        pieces = _pieces(first["text"]) if "text" in first else [None]
        for piece in pieces[:-1]:  # every candidate gets the same words, one per event
            parts = [{"text": piece}]
            events.append(
                {
                    **envelope,
                    "candidates": [
                        {"content": {"parts": parts, "role": "model"}, "index": c["index"]}
                        for c in candidates
                    ],
                    "usageMetadata": partial_usage,
                }
            )
        if pieces[-1] is not None:
            for c in candidates:
                c["content"]["parts"] = [{"text": pieces[-1]}]
    events.append(final)
    encoded = [_event(e) for e in events]
    after = b.error_event_after if isinstance(b, GeminiBehaviour) else None
    if after is not None:
        assert isinstance(b, GeminiBehaviour)
        message = b.error_message or MESSAGES[503]
        encoded = [*encoded[:after], _event(google_error(503, message))]
    return encoded


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [word if not i else " " + word for i, word in enumerate(words)]
