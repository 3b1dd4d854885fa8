"""Client-facing wire formats: parse a body into the internal request; encode answers,
stream pieces and errors; render a stored answer.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.dialects.openai_chat import (
    DONE_LINE,
    decode_object,
    encode_chunk,
    encode_error,
    parse_chat_request,
    parse_embedding_request,
)

__all__ = [
    "DONE_LINE",
    "decode_object",
    "encode_chunk",
    "encode_error",
    "parse_chat_request",
    "parse_embedding_request",
]
