"""Client-facing wire formats: parse a body into the internal request; encode answers,
stream pieces and errors; render a stored answer. One module per dialect; `base` says
what each provides (`Dialect`, `StreamEncoder`).

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.dialects.anthropic_messages import MESSAGES
from gateway.dialects.base import Dialect, NativeAnswers, StreamEncoder
from gateway.dialects.openai_chat import (
    CHAT,
    DONE_LINE,
    ChatEncoder,
    decode_object,
    encode_chunk,
    encode_error,
    parse_chat_request,
    parse_embedding_request,
)
from gateway.dialects.openai_completions import COMPLETIONS
from gateway.dialects.openai_responses import RESPONSES, ResponsesCall
from gateway.dialects.registry import PARSERS

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "MESSAGES",
    "PARSERS",
    "DONE_LINE",
    "RESPONSES",
    "ResponsesCall",
    "ChatEncoder",
    "Dialect",
    "NativeAnswers",
    "StreamEncoder",
    "decode_object",
    "encode_chunk",
    "encode_error",
    "parse_chat_request",
    "parse_embedding_request",
]
