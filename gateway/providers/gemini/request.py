"""OpenAI chat messages -> Gemini `contents` and `systemInstruction` parts.

- system/developer messages -> `systemInstruction` parts (text only).
- user -> `user` turns; assistant -> `model` turns (text + `functionCall` parts, with a
  thought signature sent back from `tool_calls[].extra_content.google.thought_signature`);
  tool messages -> `functionResponse` parts in a user turn, named after the assistant
  tool call they answer (the API matches responses to calls by name).
- consecutive turns of one role are merged (the API wants alternation); blank text is
  left out (an empty text part is a 400).
- images: data: URLs -> `inlineData`, http(s) URLs -> `fileData` (mime type from the
  file suffix when known); `input_audio` (wav, mp3) and `file` parts with file_data ->
  `inlineData`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway import jsonutil
from gateway.errors import InvalidRequestError
from gateway.providers.base import tool_call_arguments
from gateway.providers.openai_side import (
    part_text,
    unsupported_by,
)
from gateway.types import JSONObject

MIME_BY_SUFFIX: Mapping[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".pdf": "application/pdf",
}


unsupported = unsupported_by("Gemini")


# --- turns --------------------------------------------------------------------------


def convert_messages(messages: list[JSONObject]) -> tuple[list[JSONObject], list[JSONObject]]:
    """(systemInstruction parts, contents) in Gemini's shape."""
    system: list[JSONObject] = []
    turns: list[JSONObject] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, for functionResponse
    for i, message in enumerate(messages):
        role, where = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            parts = _user_parts(message.get("content"), f"{where}.content")
        elif role == "assistant":
            role, parts = "model", _model_parts(message, where, call_names)
        elif role == "tool":
            role, parts = "user", [_function_response(message, where, call_names)]
        else:
            raise unsupported(f"Role {role!r} is legacy function calling; use tools.", where)
        _append_turn(turns, str(role), parts)
    if not turns:
        raise InvalidRequestError(
            "messages must include at least one user or assistant message.", param="messages"
        )
    return system, turns


def _append_turn(turns: list[JSONObject], role: str, parts: list[JSONObject]) -> None:
    if not parts:
        return  # the API rejects empty parts; the turn adds nothing
    if turns and turns[-1]["role"] == role:
        turns[-1]["parts"].extend(parts)
    else:
        turns.append({"role": role, "parts": parts})


def _text_parts(content: object, where: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []  # empty text is a 400
    parts = content if isinstance(content, list) else ()
    out = [_text_part(part, f"{where}[{index}]") for index, part in enumerate(parts)]
    return [part for part in out if part is not None]


def _text_part(part: JSONObject, where: str) -> JSONObject | None:
    text = part_text(part, where, unsupported)
    return {"text": text} if text is not None else None


def _user_parts(content: object, where: str) -> list[JSONObject]:
    if not isinstance(content, list):
        return _text_parts(content, where)
    parts = []
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        convert = _MEDIA_PARTS.get(str(part.get("type")), _text_part)
        converted = convert(part, here)
        if converted is not None:
            parts.append(converted)
    return parts


def _data_url(url: str, where: str) -> JSONObject:
    header, _, data = url.removeprefix("data:").partition(",")
    media_type, *params = header.split(";")
    if "base64" not in params or not data or not media_type:
        raise InvalidRequestError(f"{where} must be a base64 data: URL.", param=where)
    return {"inlineData": {"mimeType": media_type, "data": data}}


def _image(part: JSONObject, where: str) -> JSONObject:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    here = f"{where}.image_url.url"
    if isinstance(url, str) and url.startswith("data:"):
        return _data_url(url, here)
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        file_data = {"fileUri": url}
        suffix = url.split("?", 1)[0].rsplit("/", 1)[-1].rpartition(".")[2].lower()
        if f".{suffix}" in MIME_BY_SUFFIX:
            file_data["mimeType"] = MIME_BY_SUFFIX[f".{suffix}"]
        return {"fileData": file_data}
    raise InvalidRequestError(f"{here} must be a data: or http(s) URL.", param=here)


def _audio(part: JSONObject, where: str) -> JSONObject:
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    fmt = audio.get("format") if isinstance(audio, dict) else None
    if not isinstance(data, str) or not data or fmt not in ("wav", "mp3"):
        here = f"{where}.input_audio"
        raise InvalidRequestError(f"{here} needs base64 data and format wav or mp3.", param=here)
    return {"inlineData": {"mimeType": f"audio/{fmt}", "data": data}}


def _file(part: JSONObject, where: str) -> JSONObject:
    file = part.get("file")
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise unsupported("Only inline file_data (a base64 data: URL) is usable here.", where)
    return _data_url(data_url, f"{where}.file.file_data")


_MEDIA_PARTS: Mapping[str, Callable[[JSONObject, str], JSONObject | None]] = {
    "image_url": _image,
    "input_audio": _audio,
    "file": _file,
}


def _model_parts(message: JSONObject, where: str, call_names: dict[str, str]) -> list[JSONObject]:
    parts = _text_parts(message.get("content"), f"{where}.content")
    for index, call in enumerate(message.get("tool_calls") or ()):
        part, call_id, name = _function_call(call, f"{where}.tool_calls[{index}]")
        call_names[call_id] = name
        parts.append(part)
    return parts


def _function_call(call: object, where: str) -> tuple[JSONObject, str, str]:
    call, fn, arguments = tool_call_arguments(call, where)
    name = str(fn.get("name") or "")
    part: JSONObject = {"functionCall": {"name": name, "args": arguments}}
    signature = _thought_signature(call)
    if signature is not None:
        part["thoughtSignature"] = signature  # Gemini 3 wants it back exactly as sent
    return part, str(call["id"]), name


def _thought_signature(call: JSONObject) -> str | None:
    """Google's OpenAI-compatibility field: tool_calls[].extra_content.google.thought_signature."""
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _function_response(message: JSONObject, where: str, call_names: dict[str, str]) -> JSONObject:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise InvalidRequestError(
            f"{where}.tool_call_id must answer a tool call of an earlier assistant message.",
            param=f"{where}.tool_call_id",
        )
    content = message.get("content")
    text = (
        content
        if isinstance(content, str)
        else "".join(str(part.get("text", "")) for part in content or () if isinstance(part, dict))
    )
    try:
        parsed = jsonutil.loads(text) if text else None
    except jsonutil.JSONDecodeError:
        parsed = None
    # Google: the response is a JSON object; "output" holds a plain result.
    response = parsed if isinstance(parsed, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}
