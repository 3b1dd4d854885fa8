"""Outbound proxies: which one, if any, carries a request to an origin.

The environment's settings (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) are read once, at
start-up, by `gateway.config.environment_proxies`, and handed to the transport; a
provider's `proxy:` (on each `UpstreamRequest`) overrides them: a URL, or "none". The
choice is made once per origin and override, then cached: nothing per request but a
lookup.

Only http:// proxies (the config refuses others): an https:// upstream is reached
through a CONNECT tunnel, an http:// one by sending the request to the proxy in
absolute form. A proxy's credentials go out as `Proxy-Authorization: Basic`; nothing
here shows them (`Proxy`'s repr leaves them out).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from gateway.config import ProxySettings
from gateway.errors import UpstreamUnavailableError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_CHOICES = 4096  # origins come from config: a few per deployment
MAX_TUNNEL_HEAD_BYTES = 64 * 1024


class Proxy(NamedTuple):
    host: str
    port: int
    url: str  # as configured, credentials included: for httpx, never to show
    authorization: str | None  # the Proxy-Authorization value, from the URL's credentials

    def __repr__(self) -> str:  # str() too: never the credentials
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"Proxy(http://{shown}:{self.port})"


def parse_proxy(url: str) -> Proxy:
    """An http:// proxy URL, as `gateway.config.proxy_url` checked it."""
    parts = urlsplit(url)
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return Proxy(parts.hostname or "", parts.port or 80, url, authorization)


class NoProxy:
    """NO_PROXY as curl reads it: entries separated by commas (or spaces), each a host
    name (`example.com` and `.example.com` both match it and its subdomains), an IP
    address or CIDR range (`10.0.0.0/8`, `::1`, `[fd00::]/8`), optionally with a port
    (`internal:8080`, `[::1]:443`); `*` alone matches everything. Host names are not
    resolved: an IP entry matches upstreams written as IPs."""

    def __init__(self, spec: str) -> None:
        self.everything = False
        self._names: list[tuple[str, int | None]] = []
        self._networks: list[tuple[IPNetwork, int | None]] = []
        for entry in spec.replace(",", " ").lower().split():
            if entry == "*":
                self.everything = True
                continue
            host, port = _split_port(entry)
            try:
                self._networks.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                name = host.removeprefix("*").lstrip(".").rstrip(".")
                if name:
                    self._names.append((name, port))

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(
                (host == name or host.endswith("." + name)) and wanted in (None, port)
                for name, wanted in self._names
            )
        return any(address in net and wanted in (None, port) for net, wanted in self._networks)


def _split_port(entry: str) -> tuple[str, int | None]:
    """(host, port) of `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith("/"):  # [fd00::]/8
            host, rest = host + rest, ""
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


class ProxyChooser:
    """The proxy for each (scheme, host, port, override), decided once."""

    def __init__(self, settings: ProxySettings | None = None) -> None:
        settings = settings or ProxySettings()
        self._http = parse_proxy(settings.http) if settings.http else None
        self._https = parse_proxy(settings.https) if settings.https else None
        self._no_proxy = NoProxy(settings.no_proxy)
        self._chosen: dict[tuple[str, str, int, str | None], Proxy | None] = {}

    def choose(self, scheme: str, host: str, port: int, override: str | None) -> Proxy | None:
        """`override`: the provider's `proxy:` (None: the environment's; "none": none)."""
        key = (scheme, host, port, override)
        if key in self._chosen:
            return self._chosen[key]
        if override == "none":
            proxy = None
        elif override is not None:
            proxy = parse_proxy(override)
        else:
            proxy = self._https if scheme == "https" else self._http
            if proxy is not None and self._no_proxy.matches(host, port):
                proxy = None
        if len(self._chosen) >= MAX_CHOICES:
            self._chosen.clear()
        self._chosen[key] = proxy
        return proxy

    def choose_for_url(self, url: str, override: str | None) -> Proxy | None:
        """`choose` for a whole URL (for a transport without its own parse of it)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return self.choose(scheme, parts.hostname or "", port, override)


def proxy_refused(status: int) -> UpstreamUnavailableError:
    """The proxy answered `status` instead of carrying the request (407: our credentials
    were refused): as a refused connect, an upstream error no byte of an answer came for."""
    error = UpstreamUnavailableError(f"The proxy refused to reach the upstream (HTTP {status}).")
    error.during_connect = True
    return error


def connect_head(host: str, port: int, proxy: Proxy) -> bytes:
    """The CONNECT request that opens a tunnel to host:port."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"host: {authority}"]
    if proxy.authorization:
        lines.append(f"proxy-authorization: {proxy.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TunnelAnswer(asyncio.Protocol):
    """The proxy's answer to CONNECT: `done` once its head came (a 2xx: the tunnel is
    open), or with the failure (another status, a malformed head, a closed connection)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_TUNNEL_HEAD_BYTES:
                self._settle(ConnectionResetError("over-long CONNECT answer"))
            return
        status_line = self._head.split(b"\r\n", 1)[0].split(b" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if not status_line[0].startswith(b"HTTP/") or not 100 <= status < 600:
            self._settle(ConnectionResetError("malformed CONNECT answer"))
        elif not 200 <= status < 300:
            self._settle(proxy_refused(status))
        elif end + 4 != len(self._head):  # the origin spoke before TLS began
            self._settle(ConnectionResetError("bytes after the CONNECT answer"))
        else:
            self._settle(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(ConnectionResetError("the proxy closed the connection"))

    def _settle(self, error: BaseException | None) -> None:
        if self.done.done():  # answered, or cancelled (the connect timed out)
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)
