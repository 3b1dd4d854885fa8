"""One real request before any load: a benchmark of fast errors would look great."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit


def probe(url: str, body: str, api_key: str | None, *, stream: bool) -> str | None:
    """Sends `body` once; returns what is wrong with the answer, or None when it is sane."""
    parts = urlsplit(url)
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
    try:
        conn.request("POST", parts.path, body=body.replace("@UNIQUE@", "probe"), headers=headers)
        response = conn.getresponse()
        raw = response.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if response.status != 200:
        return f"{url}: HTTP {response.status}: {raw[:500]}"
    problem = _stream_problem(raw) if stream else _completion_problem(raw)
    return f"{url}: {problem}" if problem else None


def _completion_problem(raw: str) -> str | None:
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {raw[:500]}"
    return None if isinstance(content, str) and content else "empty completion"


def _stream_problem(raw: str) -> str | None:
    events = [e[len("data: ") :] for e in raw.split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream did not end with [DONE]: {raw[-500:]}"
    text = ""
    for event in events[:-1]:
        for choice in json.loads(event).get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
    return None if text else "stream carried no content"
