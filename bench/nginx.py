"""The fast fake upstream: nginx answering with a fixed chat completion or SSE stream.

nginx serves the baseline: it answers in tens of microseconds, so whatever the
gateway adds is what the benchmark shows. The config is generated into a temp dir
with every path (pid, logs, temp dirs) inside it, so it runs without root.
`return 200 '<body>'` is used because nginx answers 405 to a POST for a static file.
"""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ProcessGroup, free_port, wait_for_port

CHAT_PATH = "/v1/chat/completions"
STREAM_PREFIX = "/sse"  # base_url http://host:port/sse/v1 answers with SSE
STREAM_CHUNKS = 8
REPLY_WORDS = ("Hello", "!", " This", " is", " a", " fixed", " benchmark", " reply.")
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
_CREATED = 1_700_000_000


def chat_completion(model: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(REPLY_WORDS), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def _chunk(model: str, delta: dict[str, object], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def sse_body(model: str) -> str:
    """Role preamble, one chunk per word, the finish chunk, the usage chunk, [DONE]."""
    chunks = [_chunk(model, {"role": "assistant", "content": ""}, None)]
    chunks += [_chunk(model, {"content": word}, None) for word in REPLY_WORDS]
    chunks.append(_chunk(model, {}, "stop"))
    usage_chunk = {**_chunk(model, {}, None), "choices": [], "usage": USAGE}
    chunks.append(usage_chunk)
    events = [f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in chunks]
    return "".join(events) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    """A single-quoted nginx string: quotes, backslashes and newlines escaped."""
    if "$" in text:
        raise ValueError("nginx would expand '$' in a return body")
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def nginx_config(workdir: Path, port: int, model: str) -> str:
    d = workdir
    chat = _nginx_string(json.dumps(chat_completion(model), separators=(",", ":")))
    stream = _nginx_string(sse_body(model))
    return f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {CHAT_PATH} {{
            default_type application/json;
            return 200 {chat};
        }}
        location = {STREAM_PREFIX}{CHAT_PATH} {{
            default_type text/event-stream;
            return 200 {stream};
        }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a fake upstream listens; `base_url` is what a provider config points at."""

    port: int
    stream_prefix: str = STREAM_PREFIX

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def stream_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.stream_prefix}/v1"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def start_nginx(
    group: ProcessGroup, workdir: Path, model: str, port: int | None = None
) -> Upstream:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not found (Debian: apt-get install nginx-light)")
    port = port or free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port, model))
    log = workdir / "nginx-error.log"
    cmd = [binary, "-c", str(conf), "-p", str(workdir), "-e", str(log)]
    # SIGQUIT would wait for keep-alive connections; SIGTERM is nginx's fast shutdown.
    proc = group.start("nginx", cmd, workdir / "nginx.out", stop_signal=signal.SIGTERM)
    wait_for_port(port, proc, 10, "nginx")
    return Upstream(port)
