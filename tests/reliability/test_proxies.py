"""Outbound proxies through the real gateway and a real proxy (Debian's tinyproxy, on a
free port with a config of its own): HTTP_PROXY (absolute form), HTTPS_PROXY (a CONNECT
tunnel, TLS to a fake upstream with a private CA inside it), NO_PROXY, a provider's
`proxy:` (a URL, or `none`), proxy credentials (right, wrong, never logged) and a dead
proxy. Then the NO_PROXY matcher and the settings' parsing, as pure functions.

What proves a request went through the proxy: tinyproxy's log (a `Request` line per
request it takes: `POST http://...` or `CONNECT host:port`) and the `Via` header it adds
to what it forwards in absolute form.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web

from gateway.config import ConfigError, ProviderConfig, ProxySettings, environment_proxies
from gateway.config.common import redacted_url
from gateway.transport.proxy import NoProxy, ProxyChooser, parse_proxy
from tests.conftest import GATEWAY_KEY, OPENAI_KEY
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import free_port
from tests.gatewayproc import GatewayProcess

USER = "gw-proxy-user"
PASSWORD = "pw-CANARY-5e1b"  # the session's log check looks for -CANARY- too
WRONG_PASSWORD = "nope-CANARY-77aa"
ASK = [{"role": "user", "content": "Through the proxy, please."}]
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
NO_PROXIES = dict.fromkeys(PROXY_VARIABLES, "")  # empty is unset: none from the test's shell


# -- a real proxy ---------------------------------------------------------------------
class Tinyproxy:
    """tinyproxy in the foreground on 127.0.0.1, logging each request it takes."""

    def __init__(self, workdir: Path, connect_ports: list[int], basic_auth: bool) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "tinyproxy.log"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            "Timeout 30",
            "MaxClients 100",
            "LogLevel Connect",
            f'LogFile "{self.log_path}"',
            *(f"ConnectPort {port}" for port in connect_ports),
        ]
        if basic_auth:
            lines.append(f"BasicAuth {USER} {PASSWORD}")
        self.config_path = workdir / "tinyproxy.conf"
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, credentials: str | None = None) -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        self.proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tinyproxy did not start:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mark(self) -> int:
        return len(self.log_text())

    def requests(self, since: int, expected: int = 0) -> list[str]:
        """The request lines logged after `since` (waiting briefly for `expected`)."""
        deadline = time.monotonic() + 2
        while True:
            found = re.findall(r"Request \(file descriptor \d+\): (.*)", self.log_text()[since:])
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


# -- a TLS upstream with a private CA ---------------------------------------------------
class TLSFakeOpenAI(FakeOpenAI):
    """The fake OpenAI upstream over TLS, as `https://localhost:<port>`."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(api_key=OPENAI_KEY)
        self.tls = tls

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    async def _start(self) -> None:  # FakeServer._start, with TLS
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, self._wrap(handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for DNS:localhost, its key), with openssl."""
    ca_key, ca, key, csr, cert = (
        workdir / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    extensions = workdir / "ext.cnf"
    extensions.write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", ca_key]
        + ["-out", ca, "-subj", "/CN=Gateway test CA"]
        + ["-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr]
        + ["-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", "4242"]
        + ["-days", "2", "-out", cert, "-extfile", extensions],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certificates(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def fake_tls_openai(certificates: tuple[Path, Path, Path]) -> Iterator[TLSFakeOpenAI]:
    _, cert, key = certificates
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    fake = TLSFakeOpenAI(tls).start()
    yield fake
    fake.stop()


def _tinyproxy(
    factory: pytest.TempPathFactory, upstream: TLSFakeOpenAI, basic_auth: bool
) -> Iterator[Tinyproxy]:
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy is not installed (Debian package `tinyproxy`: scripts/test)")
    proxy = Tinyproxy(factory.mktemp("tinyproxy"), [upstream.port], basic_auth).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, fake_tls_openai: TLSFakeOpenAI
) -> Iterator[Tinyproxy]:
    yield from _tinyproxy(tmp_path_factory, fake_tls_openai, basic_auth=False)


@pytest.fixture(scope="module")
def auth_proxy(
    tmp_path_factory: pytest.TempPathFactory, fake_tls_openai: TLSFakeOpenAI
) -> Iterator[Tinyproxy]:
    yield from _tinyproxy(tmp_path_factory, fake_tls_openai, basic_auth=True)


Start = Callable[..., GatewayProcess]


@pytest.fixture
def gateway(
    start_gateway: Start, certificates: tuple[Path, Path, Path]
) -> Iterator[Callable[[dict[str, Any], dict[str, str]], GatewayProcess]]:
    """A gateway with `providers` (name -> settings; model name = provider name; the
    key "server": server settings) and `env` for proxies on top of none; it trusts the
    private CA. Stopped after the test."""
    started: list[GatewayProcess] = []

    def start(providers: dict[str, Any], env: dict[str, str]) -> GatewayProcess:
        providers = dict(providers)
        config = {
            "server": providers.pop("server", {}),
            "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY}]},
            "providers": {
                name: {"kind": "openai", "api_key": OPENAI_KEY, **settings}
                for name, settings in providers.items()
            },
            "models": [{"name": n, "provider": n, "model": "gpt-4o-mini"} for n in providers],
        }
        ca = str(certificates[0])
        gw = start_gateway(config, env={**NO_PROXIES, "SSL_CERT_FILE": ca, **env})
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def plain(fake: FakeOpenAI) -> dict[str, Any]:
    return {"base_url": f"{fake.base_url}/v1"}


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=20)


def chat(gw: GatewayProcess, model: str) -> str:
    answer = client(gw).chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def stream(gw: GatewayProcess, model: str) -> str:
    chunks = client(gw).chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def upstream_error(gw: GatewayProcess, model: str, streaming: bool = False) -> tuple[int, str]:
    """(status, body) of a call that must fail: an OpenAI-shaped upstream error."""
    with pytest.raises(openai.APIStatusError) as caught:
        if streaming:
            stream(gw, model)
        else:
            chat(gw, model)
    status, body = caught.value.status_code, caught.value.response.text
    assert status in (502, 503), (status, body)
    error = json.loads(body)["error"]
    assert isinstance(error["message"], str) and error["type"] and error["code"], body
    return status, body


def via(fake: FakeOpenAI) -> list[str]:
    """The Via header of each request the fake received ("" when there was none)."""
    return [{k.lower(): v for k, v in r.headers.items()}.get("via", "") for r in fake.received]


REPLY = "Hello from the fake OpenAI."


# -- through the real gateway ---------------------------------------------------------
def test_an_http_upstream_goes_through_http_proxy_in_absolute_form(
    gateway: Callable[..., GatewayProcess], proxy: Tinyproxy, fake_openai: FakeOpenAI
) -> None:
    gw = gateway({"up": plain(fake_openai)}, {"HTTP_PROXY": proxy.url()})
    mark = proxy.mark()
    assert chat(gw, "up") == REPLY
    assert stream(gw, "up").split() == REPLY.split()
    url = f"{fake_openai.base_url}/v1/chat/completions"
    assert proxy.requests(mark, 2) == [f"POST {url} HTTP/1.1"] * 2
    assert len(via(fake_openai)) == 2
    assert all("tinyproxy" in v for v in via(fake_openai)), via(fake_openai)


def test_an_https_upstream_goes_through_a_connect_tunnel_kept_alive(
    gateway: Callable[..., GatewayProcess], proxy: Tinyproxy, fake_tls_openai: TLSFakeOpenAI
) -> None:
    """TLS inside the tunnel checks the origin's name: the certificate is for localhost
    (the proxy is 127.0.0.1), issued by a CA only SSL_CERT_FILE names."""
    gw = gateway({"tls": plain(fake_tls_openai)}, {"https_proxy": proxy.url()})
    mark = proxy.mark()
    assert chat(gw, "tls") == REPLY
    assert stream(gw, "tls").split() == REPLY.split()
    assert chat(gw, "tls") == REPLY
    # One tunnel for the three calls: pooled per (proxy, origin) and kept alive.
    assert proxy.requests(mark, 1) == [f"CONNECT localhost:{fake_tls_openai.port} HTTP/1.1"]
    assert fake_tls_openai.calls == 3 and via(fake_tls_openai) == [""] * 3  # end to end


def test_no_proxy_bypasses_the_proxy_for_the_hosts_it_names(
    gateway: Callable[..., GatewayProcess],
    proxy: Tinyproxy,
    fake_openai: FakeOpenAI,
    fake_tls_openai: TLSFakeOpenAI,
) -> None:
    env = {
        "HTTP_PROXY": proxy.url(),
        "HTTPS_PROXY": proxy.url(),
        "NO_PROXY": f".example.com, 10.0.0.0/8, localhost:{fake_tls_openai.port}, 127.0.0.0/8",
    }
    gw = gateway({"up": plain(fake_openai), "tls": plain(fake_tls_openai)}, env)
    mark = proxy.mark()
    assert chat(gw, "up") == REPLY and chat(gw, "tls") == REPLY
    assert stream(gw, "up").split() == REPLY.split()
    time.sleep(0.2)
    assert proxy.requests(mark) == []
    assert via(fake_openai) == [""] * 2 and fake_tls_openai.calls == 1


def test_a_providers_proxy_setting_overrides_the_environment(
    gateway: Callable[..., GatewayProcess],
    proxy: Tinyproxy,
    fake_openai: FakeOpenAI,
    fake_tls_openai: TLSFakeOpenAI,
) -> None:
    """The environment names a proxy where nothing listens: `proxy: none` must go
    direct, and `proxy: <url>` through that proxy, for the calls to succeed."""
    dead = f"http://127.0.0.1:{free_port()}"
    providers = {
        "direct": {**plain(fake_openai), "proxy": "none"},
        "direct-tls": {**plain(fake_tls_openai), "proxy": "none"},
        "mine": {**plain(fake_openai), "proxy": proxy.url()},
        "mine-tls": {**plain(fake_tls_openai), "proxy": proxy.url()},
        "env": plain(fake_openai),
    }
    gw = gateway(providers, {"HTTP_PROXY": dead, "HTTPS_PROXY": dead})
    mark = proxy.mark()
    assert chat(gw, "direct") == REPLY and chat(gw, "direct-tls") == REPLY
    assert via(fake_openai) == [""]
    assert proxy.requests(mark) == []
    assert chat(gw, "mine") == REPLY and chat(gw, "mine-tls") == REPLY
    assert "tinyproxy" in via(fake_openai)[1]
    assert [line.split()[0] for line in proxy.requests(mark, 2)] == ["POST", "CONNECT"]
    upstream_error(gw, "env")  # the environment's dead proxy, for the others


def test_proxy_credentials_work_and_are_never_shown(
    gateway: Callable[..., GatewayProcess],
    auth_proxy: Tinyproxy,
    fake_openai: FakeOpenAI,
    fake_tls_openai: TLSFakeOpenAI,
) -> None:
    right = auth_proxy.url(f"{USER}:{PASSWORD}")
    wrong = auth_proxy.url(f"{USER}:{WRONG_PASSWORD}")
    providers = {
        "up": plain(fake_openai),
        "tls": plain(fake_tls_openai),
        "wrong": {**plain(fake_openai), "proxy": wrong},
        "wrong-tls": {**plain(fake_tls_openai), "proxy": wrong},
        "anonymous-tls": {**plain(fake_tls_openai), "proxy": auth_proxy.url()},
    }
    gw = gateway(providers, {"HTTP_PROXY": right, "HTTPS_PROXY": right})
    mark = auth_proxy.mark()
    assert chat(gw, "up") == REPLY and stream(gw, "up").split() == REPLY.split()
    assert chat(gw, "tls") == REPLY and stream(gw, "tls").split() == REPLY.split()
    assert len(auth_proxy.requests(mark, 3)) >= 3  # two in absolute form, one CONNECT
    calls = fake_openai.calls + fake_tls_openai.calls
    bodies = {
        (model, streaming): upstream_error(gw, model, streaming)[1]
        for model in ("wrong", "wrong-tls", "anonymous-tls")
        for streaming in (False, True)
    }
    assert fake_openai.calls + fake_tls_openai.calls == calls  # the proxy stopped them all
    log = gw.log_text()
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in log
        assert all(secret not in body for body in bodies.values())
    assert f"http://***@127.0.0.1:{auth_proxy.port}" in log  # the start-up line, redacted
    # tinyproxy refuses wrong credentials with a 401 and none with a 407: to a CONNECT,
    # either is the proxy's refusal. (In absolute form its 401 looks like the upstream's:
    # an upstream error all the same, 502 upstream_auth_failed.)
    refused = "The proxy refused to reach the upstream (HTTP "
    assert all(refused in bodies[("wrong-tls", s)] for s in (False, True)), bodies
    assert all(f"{refused}407)" in bodies[("anonymous-tls", s)] for s in (False, True)), bodies


def test_a_dead_proxy_is_a_quick_upstream_error_never_a_500(
    gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_tls_openai: TLSFakeOpenAI,
) -> None:
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    gw = gateway(
        {"up": plain(fake_openai), "tls": plain(fake_tls_openai)},
        {"HTTP_PROXY": dead, "HTTPS_PROXY": dead},
    )
    for model in ("up", "tls"):
        for streaming in (False, True):
            started = time.monotonic()
            _, body = upstream_error(gw, model, streaming)
            assert time.monotonic() - started < 3
            assert PASSWORD not in body
    assert fake_openai.calls == 0 and fake_tls_openai.calls == 0
    assert PASSWORD not in gw.log_text()


def test_the_httpx_transport_honours_the_same_settings(
    gateway: Callable[..., GatewayProcess],
    proxy: Tinyproxy,
    auth_proxy: Tinyproxy,
    fake_openai: FakeOpenAI,
    fake_tls_openai: TLSFakeOpenAI,
) -> None:
    wrong = auth_proxy.url(f"{USER}:{WRONG_PASSWORD}")
    providers: dict[str, Any] = {
        "up": plain(fake_openai),
        "tls": plain(fake_tls_openai),
        "direct": {**plain(fake_openai), "proxy": "none"},
        "wrong": {**plain(fake_openai), "proxy": wrong},
        "wrong-tls": {**plain(fake_tls_openai), "proxy": wrong},
        "server": {"upstream_transport": "httpx"},
    }
    env = {"HTTP_PROXY": proxy.url(), "HTTPS_PROXY": proxy.url(), "NO_PROXY": "example.com"}
    gw = gateway(providers, env)
    mark = proxy.mark()
    assert chat(gw, "up") == REPLY and stream(gw, "up").split() == REPLY.split()
    assert chat(gw, "tls") == REPLY
    requests = proxy.requests(mark, 3)
    assert f"CONNECT localhost:{fake_tls_openai.port} HTTP/1.1" in requests
    assert sum(line.startswith("POST http://") for line in requests) == 2
    assert all("tinyproxy" in v for v in via(fake_openai))
    assert chat(gw, "direct") == REPLY and via(fake_openai)[-1] == ""
    for model in ("wrong", "wrong-tls"):
        assert WRONG_PASSWORD not in upstream_error(gw, model)[1]
    assert WRONG_PASSWORD not in gw.log_text()


# -- the settings and the NO_PROXY matcher, as pure functions -------------------------
@pytest.mark.parametrize(
    ("spec", "host", "port", "bypass"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "API.Example.COM.", 443, True),  # case, a trailing dot
        ("example.com", "badexample.com", 443, False),
        ("example.com", "example.com.evil.net", 443, False),
        (".example.com", "example.com", 443, True),
        (".example.com", "a.b.example.com", 80, True),
        ("*.example.com", "a.example.com", 80, True),
        ("localhost", "localhost", 8080, True),
        ("internal:8080", "internal", 8080, True),
        ("internal:8080", "internal", 8081, False),
        ("*", "anything.at.all", 1, True),
        ("a.com, *", "b.com", 1, True),
        ("", "example.com", 443, False),
        ("a.com,,  b.com c.com", "c.com", 443, True),  # commas, spaces, empty entries
        ("10.0.0.0/8", "10.20.30.40", 80, True),
        ("10.0.0.0/8", "11.0.0.1", 80, False),
        ("10.0.0.0/8", "ten.example", 80, False),  # names are not resolved
        ("192.168.1.7", "192.168.1.7", 80, True),
        ("192.168.1.7", "192.168.1.8", 80, False),
        ("192.168.1.7:8000", "192.168.1.7", 8000, True),
        ("192.168.1.7:8000", "192.168.1.7", 80, False),
        ("10.0.0.0/8:443", "10.1.1.1", 443, True),
        ("::1", "::1", 443, True),
        ("::1", "::2", 443, False),
        ("[::1]", "::1", 443, True),
        ("[::1]:443", "::1", 443, True),
        ("[::1]:443", "::1", 80, False),
        ("fd00::/8", "fd12:3456::1", 443, True),
        ("[fd00::]/8", "fd12:3456::1", 443, True),
        ("fd00::/8", "fe80::1", 443, False),
        ("10.0.0.0/8", "::ffff:1.2.3.4", 443, False),  # another family: no match
        ("127.0.0.1", "localhost", 80, False),  # an address matches addresses only
    ],
)
def test_no_proxy_matches_hosts_domains_addresses_ranges_and_ports(
    spec: str, host: str, port: int, bypass: bool
) -> None:
    assert NoProxy(spec).matches(host, port) is bypass


def test_the_environment_is_read_in_either_case_the_lower_first_and_empty_is_unset() -> None:
    assert environment_proxies({}) == ProxySettings()
    env = {"HTTP_PROXY": "upper:1", "http_proxy": "lower:2", "HTTPS_PROXY": "h:3", "no_proxy": ""}
    assert environment_proxies(env) == ProxySettings("http://lower:2", "http://h:3", "")
    env = {"https_proxy": " ", "HTTPS_PROXY": "http://u:p@h:3", "NO_PROXY": "a.com"}
    assert environment_proxies(env) == ProxySettings(None, "http://u:p@h:3", "a.com")


def test_an_unusable_proxy_is_refused_at_start_up_without_its_credentials() -> None:
    for url in ("socks5://u:secret@h:1080", "https://u:secret@h", "http://u:secret@h:99999"):
        with pytest.raises(ConfigError) as caught:
            environment_proxies({"HTTPS_PROXY": url})
        assert caught.value.errors[0].startswith("HTTPS_PROXY: ")
        assert "secret" not in str(caught.value) and "***@h" in str(caught.value)
        with pytest.raises(pydantic.ValidationError) as invalid:
            ProviderConfig(kind="openai", proxy=url)
        assert "secret" not in json.dumps([e["msg"] for e in invalid.value.errors()])


def test_a_providers_proxy_is_a_url_none_or_absent() -> None:
    assert ProviderConfig(kind="openai").proxy is None
    assert ProviderConfig(kind="openai", proxy="").proxy is None  # ${PROXY:-} left empty
    assert ProviderConfig(kind="openai", proxy="None").proxy == "none"
    assert ProviderConfig(kind="openai", proxy="p:3128").proxy == "http://p:3128"


def test_credentials_are_redacted_and_sent_decoded() -> None:
    assert redacted_url("http://u:p@proxy:3128") == "http://***@proxy:3128"
    assert redacted_url("http://u:p/a?b@proxy:3128") == "http://***@proxy:3128"
    assert redacted_url("http://proxy:3128") == "http://proxy:3128"
    settings = ProxySettings("http://u:s3cret@p:1", "http://u:s3cret@p:1", ".corp")
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.describe()
    proxy = parse_proxy("http://us%40er:p%3Ass@[::1]:3128")
    assert (proxy.host, proxy.port) == ("::1", 3128)
    assert proxy.authorization == "Basic dXNAZXI6cDpzcw=="  # base64("us@er:p:ss")
    assert repr(proxy) == str(proxy) == "Proxy(http://[::1]:3128)"
    assert parse_proxy("http://p").port == 80 and parse_proxy("http://p").authorization is None


def test_the_chooser_applies_override_then_scheme_then_no_proxy() -> None:
    chooser = ProxyChooser(ProxySettings("http://hp:1", "http://sp:2", "internal"))
    assert chooser.choose("http", "api.com", 80, None) == parse_proxy("http://hp:1")
    assert chooser.choose("https", "api.com", 443, None) == parse_proxy("http://sp:2")
    assert chooser.choose("https", "x.internal", 443, None) is None
    assert chooser.choose("https", "api.com", 443, "none") is None
    mine = chooser.choose("https", "x.internal", 443, "http://mine:3")  # NO_PROXY is the env's
    assert mine == parse_proxy("http://mine:3")
    assert ProxyChooser().choose("https", "api.com", 443, None) is None
    assert chooser.choose_for_url("https://api.com/v1", None) == parse_proxy("http://sp:2")
