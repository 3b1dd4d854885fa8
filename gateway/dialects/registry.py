"""Every dialect's parser by name: what `/v1/route/explain?dialect=` plans for."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import RequestLimits
from gateway.dialects.anthropic_messages import MESSAGES
from gateway.dialects.openai_chat import CHAT
from gateway.dialects.openai_completions import COMPLETIONS
from gateway.dialects.openai_responses import RESPONSES
from gateway.types import ChatRequest

Parse = Callable[[bytes, RequestLimits], ChatRequest]


def _responses(raw: bytes, limits: RequestLimits) -> ChatRequest:
    """A Responses body as its own input plans it (a `previous_response_id`'s earlier
    turns are not loaded: they add to the prompt, not to what is eligible)."""
    return RESPONSES.begin(raw, limits).parse(raw, limits)


PARSERS: dict[str, Parse] = {
    CHAT.name: CHAT.parse,
    COMPLETIONS.name: COMPLETIONS.parse,
    MESSAGES.name: MESSAGES.parse,
    RESPONSES.name: _responses,
}
