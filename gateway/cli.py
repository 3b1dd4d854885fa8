"""`gateway serve | check-config | healthcheck | explain | usage | requests | cooldowns | db`:
the console script. `--config` defaults to $GATEWAY_CONFIG, else config/gateway.yaml."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from gateway import jsonutil
from gateway.config import (
    ConfigError,
    GatewayConfig,
    env_config_path,
    load_config,
    multiproc_dir,
    set_worker_environment,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", type=Path, default=env_config_path())
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("path", type=Path)
    health = commands.add_parser(
        "healthcheck", help="exit 0 when the gateway of this config answers /healthz (Docker)"
    )
    health.add_argument("--config", type=Path, default=env_config_path())
    health.add_argument("--timeout-s", type=float, default=2.0)
    explain = commands.add_parser("explain", help="print the routing plan for a chat body")
    explain.add_argument("--config", type=Path, default=env_config_path())
    explain.add_argument("body", nargs="?", default="-", help="JSON file, or - for stdin")
    explain.add_argument(
        "--dialect",
        default="chat",
        choices=["chat", "completions", "messages", "responses"],
        help="the body's wire format",
    )
    usage = commands.add_parser("usage", help="spend per key, team, route and day (the ledger)")
    usage.add_argument("--config", type=Path, default=env_config_path())
    usage.add_argument("--day", help="one UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--since", help="first UTC day of a range")
    usage.add_argument("--until", help="last UTC day of a range (default: today)")
    usage.add_argument("--month", help="YYYY-MM, or current (month to date)")
    usage.add_argument("--by", choices=["key", "team", "route", "day"], help="totals per ...")
    usage.add_argument("--json", action="store_true", help="the admin endpoint's JSON")
    logged = commands.add_parser("requests", help="the request log (one request, or a search)")
    logged.add_argument("--config", type=Path, default=env_config_path())
    logged.add_argument("request_id", nargs="?", help="an x-request-id: every row with it")
    logged.add_argument("--key", help="a key id or name")
    logged.add_argument("--since", help="Unix seconds or ISO 8601 (UTC unless it says)")
    logged.add_argument("--until", help="Unix seconds or ISO 8601")
    logged.add_argument("--status", type=int, help="a status, or its class (4, 5)")
    logged.add_argument("--limit", type=int, default=100)
    logged.add_argument("--json", action="store_true", help="the admin endpoint's JSON")
    cooldowns = commands.add_parser(
        "cooldowns", help="deployments cooling down on the replicas sharing Redis; end them"
    )
    cooldowns.add_argument("--config", type=Path, default=env_config_path())
    clearing = cooldowns.add_mutually_exclusive_group()
    clearing.add_argument("--clear", metavar="DEPLOYMENT", help="end this deployment's cooldown")
    clearing.add_argument("--clear-all", action="store_true", help="end every cooldown")
    cooldowns.add_argument("--json", action="store_true", help="the admin endpoint's JSON")
    db = commands.add_parser("db", help="the SQL schema's migrations (database.url)")
    db_actions = db.add_subparsers(dest="db_action", required=True)
    db_upgrade = db_actions.add_parser("upgrade", help="migrate to a revision (default: head)")
    db_upgrade.add_argument("--revision", default="head")
    db_downgrade = db_actions.add_parser("downgrade", help="migrate back to a revision")
    db_downgrade.add_argument("--revision", required=True, help="a revision, or base")
    db_current = db_actions.add_parser("current", help="print the database's revision")
    for action in (db_upgrade, db_downgrade, db_current):
        action.add_argument("--config", type=Path, default=env_config_path())
    args = parser.parse_args(argv)
    handlers = {
        "serve": _serve,
        "check-config": _check_config,
        "healthcheck": _healthcheck,
        "explain": _explain,
        "usage": _usage,
        "cooldowns": _cooldowns,
        "db": _db,
        "requests": _requests,
    }
    return handlers[args.command](args)


def _load(path: Path) -> GatewayConfig | None:
    from gateway.validate_config import load_catalog, pricing_problems, reference_problems

    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            sys.stderr.write(f"{line}\n")
        return None
    problems = reference_problems(config) or pricing_problems(load_catalog(config))
    for line in problems:
        sys.stderr.write(f"{path}: {line}\n")
    return None if problems else config


def _serve(args: argparse.Namespace) -> int:

    from gateway.api import multiprocess_dir, protocol_setting, start_supervisor
    from gateway.telemetry import configure_logging

    config = _load(args.config)
    if config is None:
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers or config.server.workers
    configure_logging(config.server.log_level)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        # httptools with a bound on the head (431); uvicorn hands the bound over in its
        # h11 field, an int that survives the spawn of worker processes. uvicorn's stock
        # h11 protocol (bounded by the same field) if the installed uvicorn lacks what
        # the gateway's protocol needs.
        "http": protocol_setting(logging.getLogger("gateway").warning),
        "h11_max_incomplete_event_size": config.server.max_header_bytes,
        "ws": "none",  # no websocket endpoint: an upgrade request is served as plain HTTP
        "timeout_keep_alive": config.server.keep_alive_s,
        # On SIGTERM: requests in flight (streams too) get this long to finish. With
        # workers, the supervisor passes SIGTERM on and each worker drains with it.
        "timeout_graceful_shutdown": config.server.drain_timeout_s,
        "access_log": False,
        "log_level": "warning",
        "lifespan": "on",
        "server_header": False,
        # Nothing reads the client's address or scheme: uvicorn's X-Forwarded-* layer
        # would only add a wrapper to every request.
        "proxy_headers": False,
    }
    with multiprocess_dir(multiproc_dir(), workers) as metrics_dir:
        set_worker_environment(args.config.resolve(), metrics_dir)
        listener = start_supervisor(config.metrics, metrics_dir)  # only with `metrics.port`
        try:
            _run(config, options, workers)
        finally:
            if listener is not None:
                listener.stop()
    return 0


def _run(config: GatewayConfig, options: dict[str, Any], workers: int) -> None:
    """uvicorn.run's two cases, with "gateway ready" logged once the socket is bound
    (a failed bind logs uvicorn's error and exits non-zero instead)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from gateway.app import create_app

    log = logging.getLogger("gateway")
    url = f"http://{options['host']}:{options['port']}"
    if workers > 1:
        settings = uvicorn.Config(
            "gateway.app:create_app_from_env", factory=True, workers=workers, **options
        )
        sock = settings.bind_socket()
        log.info("gateway ready: listening on %s (%d workers)", url, workers)
        Multiprocess(settings, sockets=[sock]).run()
        return
    settings = uvicorn.Config(create_app(config), **options)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else None
                log.info("gateway ready: listening on http://%s:%s", options["host"], port)

    server = Server(settings)
    server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the start failed (uvicorn logged why)


def _check_config(args: argparse.Namespace) -> int:
    from gateway.validate_config import describe_config

    config = _load(args.path)
    if config is None:
        return 1
    _, summary = describe_config(config)
    for line in summary:
        sys.stdout.write(f"{line}\n")
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    """The container's HEALTHCHECK: /healthz on the port (and address) the config serves,
    so a config on another port needs no other healthcheck."""
    import urllib.error
    import urllib.request

    try:
        server = load_config(args.config).server
    except ConfigError as exc:
        for line in exc.errors:
            sys.stderr.write(f"{line}\n")
        return 1
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout_s) as response:  # noqa: S310
            healthy = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1
    return 0 if healthy else 1


def _explain(args: argparse.Namespace) -> int:
    from gateway.validate_config import explain_body

    config = _load(args.config)
    if config is None:
        return 2
    raw = sys.stdin.buffer.read() if args.body == "-" else Path(args.body).read_bytes()
    result, error = explain_body(config, raw, args.dialect)
    if error is not None:
        sys.stderr.write(f"{jsonutil.dumps(error).decode()}\n")
        return 1
    sys.stdout.write(f"{jsonutil.dumps(result).decode()}\n")
    return 0


def _usage(args: argparse.Namespace) -> int:
    from gateway.limits import run_usage

    config = _load(args.config)
    if config is None:
        return 2
    days = (args.day, args.since, args.until, args.month)
    return run_usage(config, days, args.by, args.json)


def _cooldowns(args: argparse.Namespace) -> int:
    from gateway.routing import run_cooldowns
    from gateway.validate_config import load_catalog

    config = _load(args.config)
    if config is None:
        return 2
    deployments = load_catalog(config).deployments
    return run_cooldowns(config, deployments, args.clear, args.clear_all, args.json)


def _db(args: argparse.Namespace) -> int:
    from gateway.records import run_db

    config = _load(args.config)
    if config is None:
        return 2
    return run_db(config.database, args.db_action, getattr(args, "revision", None))


def _requests(args: argparse.Namespace) -> int:
    from gateway.records import run_requests

    config = _load(args.config)
    if config is None:
        return 2
    search = {k: getattr(args, k) for k in ("key", "since", "until", "status", "limit")}
    return run_requests(config.database, args.request_id, search, args.json)


if __name__ == "__main__":
    sys.exit(main())
