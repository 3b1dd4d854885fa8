"""Serving `/metrics`: the scrape body, the optional listener of its own, the multiprocess dir.

`metrics.port` puts `/metrics` on a listener of its own (e.g. reachable only from the
monitoring network) and takes it off the main port. The listener is a small stdlib
HTTP server in a daemon thread, so scrapes never queue behind traffic on the event
loop. With several workers it runs once, in the supervising process, over the merged
multiprocess files, so the port is bound once. The bearer-token rule is the same on
both.
"""

from __future__ import annotations

import hmac
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import jsonutil
from gateway.config import MetricsConfig
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
)
from gateway.keys import bearer_token
from gateway.telemetry import register_runtime_metrics, render_multiprocess

if TYPE_CHECKING:
    from gateway.services import Services

log = logging.getLogger("gateway")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def token_ok(token: str | None, authorization: str | None) -> bool:
    if not token:
        return True
    given = bearer_token(authorization) or ""
    return hmac.compare_digest(given.encode(), token.encode())


def scrape(services: Services) -> bytes:
    """The exposition text; cooldowns learnt from other replicas are folded in first."""
    _fold_in(services)
    return services.metrics.render()


def scrape_from_thread(services: Services) -> bytes:
    """`scrape` for the listener's thread: cooldowns and pending sums belong to the
    event loop, so they are folded in there, and the text rendered here."""

    def fold_in() -> None:
        _fold_in(services)
        services.metrics.flush()

    services.metrics.pending.call_on_loop(fold_in)
    return services.metrics.render_flushed()


def _fold_in(services: Services) -> None:
    stats = services.stats.items()
    services.metrics.refresh_cooldowns((d, s.cooldown_until) for d, s in stats)


class MetricsListener:
    """`GET /metrics` (and nothing else) on host:port, in a background thread."""

    def __init__(
        self, host: str, port: int, render: Callable[[], bytes], token: str | None
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(render, token))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-listener", daemon=True
        )

    def start(self) -> MetricsListener:
        self._thread.start()
        host, port = self._server.server_address[:2]
        log.info("metrics listener on %s:%s", host, port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_in_process(services: Services) -> MetricsListener | None:
    """The listener for a single process; with multiprocess metrics the supervisor runs it.

    Called by the app's lifespan on the serving event loop, so this is also where the
    runtime gauges are bound to that loop (whether /metrics is served here or there).
    """
    register_runtime_metrics(services.metrics.registry)
    config = services.config.metrics
    if config.port is None or not config.enabled or services.metrics.multiprocess:
        return None
    render = lambda: scrape_from_thread(services)  # noqa: E731
    listener = MetricsListener(config.host, config.port, render, config.token)
    return listener.start()


def start_supervisor(config: MetricsConfig, metrics_dir: str | None) -> MetricsListener | None:
    """The listener in `gateway serve`'s own process, over every worker's files."""
    if config.port is None or not config.enabled or metrics_dir is None:
        return None
    path = metrics_dir
    return MetricsListener(
        config.host, config.port, lambda: render_multiprocess(path), config.token
    ).start()


@contextmanager
def multiprocess_dir(configured: str | None, workers: int) -> Iterator[str | None]:
    """Where the workers write their metric files, fresh for this start.

    Files left by an earlier run would be summed into this run's counters (and a
    dead process's live gauges into the in-flight count), so an operator-chosen
    directory (PROMETHEUS_MULTIPROC_DIR) is emptied of them first. Without one, several
    workers get a private temporary directory, removed when the server stops.
    """
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield configured
    elif workers > 1:
        with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as tmp:
            yield tmp
    else:
        yield None


def _handler(render: Callable[[], bytes], token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "gateway"
        sys_version = ""

        def do_GET(self) -> None:  # the stdlib calls it by this name
            if self.path.split("?", 1)[0] != "/metrics":
                self._error(NotFoundError("Only /metrics is served on this port."))
            elif not token_ok(token, self.headers.get("authorization")):
                self._error(AuthenticationError("The metrics endpoint needs its bearer token."))
            else:
                self._scrape()

        def _scrape(self) -> None:
            try:
                body = render()
            except Exception as exc:  # a broken scrape must not kill the listener thread
                log.error("metrics render failed: %s", type(exc).__name__)
                self._error(GatewayError("Metrics are unavailable."))
                return
            self._send(200, CONTENT_TYPE, body)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """The stdlib's own errors (other methods, bad request lines) in OpenAI shape too."""
            self.close_connection = True
            body = jsonutil.dumps(InvalidRequestError(message or "Bad request.").to_openai_body())
            self._send(code, "application/json", body)

        def _error(self, error: GatewayError) -> None:
            body = jsonutil.dumps(error.to_openai_body())
            self._send(error.status, "application/json", body)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # the stdlib signature
            return  # no access line per scrape

    return Handler
