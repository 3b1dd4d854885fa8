"""Replay: a stored chat.completion becomes a stream the openai SDK accumulates back into
the same message and usage; a finished stream assembles into that chat.completion."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.cache.replay import assemble, to_sse

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
ENVELOPE = {
    "id": "chatcmpl-1",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_1",
}
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
LOGPROBS = {
    "content": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},
        {"token": "!", "logprob": -0.2, "bytes": [33], "top_logprobs": []},
    ],
    "refusal": None,
}


def completion(*choices: dict[str, Any], usage: dict[str, Any] | None = USAGE) -> dict[str, Any]:
    out: dict[str, Any] = {**ENVELOPE, "object": "chat.completion", "choices": list(choices)}
    if usage is not None:
        out["usage"] = usage
    return out


def choice(
    index: int = 0,
    content: str | None = "Hello there.",
    finish: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
    refusal: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


CASES = {
    "text": completion(choice()),
    "tool_calls": completion(
        choice(content=None, finish="tool_calls", tool_calls=[TOOL_CALL, {**TOOL_CALL, "id": "c2"}])
    ),
    "two_choices": completion(choice(0, "first"), choice(1, "second", finish="length")),
    "logprobs": completion(choice(content="Hi!", logprobs=LOGPROBS)),
    "refusal": completion(choice(content=None, refusal="I can't help with that.")),
    "no_usage": completion(choice(), usage=None),
}


def sse_chunks(data: bytes) -> list[dict[str, Any]]:
    """Parse the SSE bytes; asserts they end with exactly one [DONE]."""
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    payloads = [e.removeprefix("data: ") for e in events]
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def sdk_accumulate(chunks: list[dict[str, Any]]) -> ChatCompletion:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return ChatCompletion.model_validate(state.current_completion_snapshot.model_dump())


def calls(tool_calls: list[Any] | None) -> list[tuple[str, str, str]]:
    return [(c.id, c.function.name, c.function.arguments) for c in tool_calls or ()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_sdk_accumulates_the_replay_into_the_stored_answer(name: str) -> None:
    stored = CASES[name]
    chunks = sse_chunks(to_sse(stored, include_usage=True))
    final = sdk_accumulate(chunks)
    expected = ChatCompletion.model_validate(stored)
    assert len(final.choices) == len(expected.choices)
    for got, want in zip(final.choices, expected.choices, strict=True):
        assert got.message.content == want.message.content
        assert got.message.refusal == want.message.refusal
        assert calls(got.message.tool_calls) == calls(want.message.tool_calls)
        assert got.finish_reason == want.finish_reason
        assert got.logprobs == want.logprobs
    assert final.usage == expected.usage
    assert final.id == stored["id"] and final.model == stored["model"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_stream_round_trip_assembles_the_same_completion(name: str) -> None:
    stored = CASES[name]
    assert assemble(sse_chunks(to_sse(stored, include_usage=True))) == stored


def test_usage_chunk_only_when_asked() -> None:
    stored = completion(choice())
    without = sse_chunks(to_sse(stored, include_usage=False))
    assert all("usage" not in c and c["choices"] for c in without)
    with_usage = sse_chunks(to_sse(stored, include_usage=True))
    assert with_usage[-1] == {
        **ENVELOPE,
        "object": "chat.completion.chunk",
        "usage": USAGE,
        "choices": [],
    }
    assert all(c["usage"] is None for c in with_usage[:-1])


def test_replay_chunk_order_per_choice() -> None:
    chunks = sse_chunks(to_sse(CASES["tool_calls"], include_usage=False))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert [call["index"] for call in deltas[1]["tool_calls"]] == [0, 1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def upstream_stream(text_parts: list[str], finish: str | None = "stop") -> list[dict[str, Any]]:
    """Chunks as an OpenAI stream sends them (role, content pieces, finish, usage)."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            **ENVELOPE,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": part}) for part in text_parts]
    if finish is not None:
        chunks.append(chunk({}, finish))
        chunks.append(
            {**ENVELOPE, "object": "chat.completion.chunk", "choices": [], "usage": USAGE}
        )
    return chunks


def test_assemble_joins_content_and_keeps_usage() -> None:
    assembled = assemble(upstream_stream(["Hel", "lo ", "there."]))
    assert assembled == completion(choice(content="Hello there."))


def test_assemble_tool_call_deltas() -> None:
    base = upstream_stream([], finish=None)
    call_start = {"index": 0, "id": "call_1", "type": "function"}
    pieces = [
        {**call_start, "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": '}},
        {"index": 0, "function": {"arguments": '"Paris"}'}},
    ]
    for piece in pieces:
        base.append({**base[0], "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
    base.append({**base[0], "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    assembled = assemble(base)
    assert assembled is not None
    assert assembled["choices"][0]["message"] == {
        "role": "assistant",
        "content": "",  # what the stream said (OpenAI itself sends null here)
        "refusal": None,
        "tool_calls": [TOOL_CALL],
    }


@pytest.mark.parametrize(
    "chunks",
    [[], upstream_stream(["partial"], finish=None), upstream_stream([])[:1]],
    ids=["empty", "no_finish", "role_only"],
)
def test_incomplete_streams_are_not_assembled(chunks: list[dict[str, Any]]) -> None:
    assert assemble(chunks) is None
