"""The SSRF guard against real local HTTP servers: private targets refused directly, after
redirects and after DNS rebinding; size and time limits; only http(s).

The "public" server is 127.0.0.1, made acceptable ONLY through the explicit ``allow=`` parameter;
a second server on 127.0.0.2 plays the internal service an attacker wants to reach.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from plugin.netguard import FetchFailed, UnsafeUrl, fetch, is_public

PUBLIC = "127.0.0.1/32"


class Server:
    """A tiny HTTP server whose routes are Python callables; it records every request."""

    def __init__(self, host: str) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.seen: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append((self.path, self.headers.get("Host")))
                route = owner.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def page(body: bytes, content_type: str = "text/html; charset=utf-8", status: int = 200):
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return route


def redirect(location: str, status: int = 302):
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


@pytest.fixture
def public():
    server = Server("127.0.0.1")
    yield server
    server.stop()


@pytest.fixture
def internal():
    server = Server("127.0.0.2")
    server.routes["/admin"] = page(b"<p>secret</p>")
    yield server
    server.stop()


def resolver_of(answers: dict[str, list[list[str]]], calls: list[str] | None = None):
    """A resolver giving each host its answers in turn (the last one repeats)."""

    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return resolve


def get(url: str, **kw):
    options = {"max_bytes": 64 * 1024, "timeout": 3.0, "allow": [PUBLIC]}
    options.update(kw)
    return fetch(url, **options)


def test_public_page_is_fetched_by_name_over_the_checked_address(public):
    public.routes["/t.html"] = page("<p>你好</p>".encode("gb18030"), "text/html; charset=GBK")
    calls: list[str] = []
    result = get(
        f"http://news.example.com:{public.port}/t.html",
        resolver=resolver_of({"news.example.com": [["127.0.0.1"]]}, calls),
    )
    assert result.body.decode("gb18030") == "<p>你好</p>"
    assert result.charset == "gbk"
    assert result.content_type == "text/html"
    assert calls == ["news.example.com"]  # resolved once, then the socket went to that address
    assert public.seen == [("/t.html", f"news.example.com:{public.port}")]


def test_loopback_is_refused_without_an_explicit_allow(public):
    public.routes["/"] = page(b"hi")
    with pytest.raises(UnsafeUrl):
        fetch(public.url("/"), max_bytes=1000, timeout=2)
    with pytest.raises(UnsafeUrl):
        fetch(
            f"http://localhost:{public.port}/",
            max_bytes=1000,
            timeout=2,
            resolver=resolver_of({"localhost": [["127.0.0.1"]]}),
        )
    assert public.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{internal}/admin",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{internal}/admin",
        "http://[::ffff:127.0.0.2]:{internal}/admin",
        "http://0.0.0.0:{internal}/admin",
        "http://100.64.0.1/",
        "file:///etc/passwd",
        "gopher://127.0.0.2:{internal}/",
    ],
)
def test_redirects_to_private_targets_are_refused(public, internal, target):
    public.routes["/go"] = redirect(target.format(internal=internal.port))
    with pytest.raises(UnsafeUrl):
        get(public.url("/go"))
    assert public.seen == [("/go", f"127.0.0.1:{public.port}")]
    assert internal.seen == []


def test_redirect_to_a_name_resolving_to_a_private_address_is_refused(public, internal):
    public.routes["/go"] = redirect(f"http://intranet.example:{internal.port}/admin")
    with pytest.raises(UnsafeUrl):
        get(public.url("/go"), resolver=resolver_of({"intranet.example": [["127.0.0.2"]]}))
    assert internal.seen == []


def test_relative_redirect_on_a_public_host_is_followed(public):
    public.routes["/old"] = redirect("/new", 301)
    public.routes["/new"] = page(b"<p>moved</p>")
    result = get(public.url("/old"))
    assert result.body == b"<p>moved</p>"
    assert result.final_url == public.url("/new")


def test_dns_rebinding_between_connections_is_refused(public, internal):
    """The first answer is acceptable, the next one (for the redirect on the same host) private."""
    host = "rebind.example"
    calls: list[str] = []
    resolver = resolver_of({host: [["127.0.0.1"], ["127.0.0.2"]]}, calls)
    public.routes["/start"] = redirect(f"http://{host}:{public.port}/again")
    public.routes["/again"] = page(b"should not be served")
    with pytest.raises(UnsafeUrl):
        get(f"http://{host}:{public.port}/start", resolver=resolver)
    assert calls == [host, host]
    assert [path for path, _host in public.seen] == ["/start"]
    assert internal.seen == []


def test_an_answer_mixing_public_and_private_addresses_is_refused(public, internal):
    resolver = resolver_of({"mixed.example": [["127.0.0.1", "127.0.0.2"]]})
    with pytest.raises(UnsafeUrl):
        get(f"http://mixed.example:{public.port}/", resolver=resolver)
    assert public.seen == []
    assert internal.seen == []


def test_declared_size_over_the_limit_is_refused_before_reading(public):
    public.routes["/big"] = page(b"x" * 5000)
    with pytest.raises(FetchFailed, match="larger than"):
        get(public.url("/big"), max_bytes=4096)


def test_undeclared_size_over_the_limit_is_refused_while_reading(public):
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.end_headers()  # no Content-Length: the body ends when the connection closes
        for _ in range(100):
            h.wfile.write(b"y" * 1024)

    public.routes["/stream"] = endless
    with pytest.raises(FetchFailed, match="larger than"):
        get(public.url("/stream"), max_bytes=10 * 1024)


def test_a_trickling_body_is_cut_at_the_deadline(public):
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            h.wfile.write(b"z")
            h.wfile.flush()
            time.sleep(0.1)

    public.routes["/slow"] = trickle
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="did not arrive"):
        get(public.url("/slow"), timeout=1.0)
    assert time.monotonic() - started < 2.5


def test_a_server_that_never_answers_is_cut_at_the_deadline(public):
    public.routes["/hang"] = lambda h: time.sleep(5)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="did not arrive"):
        get(public.url("/hang"), timeout=0.8)
    assert time.monotonic() - started < 2.0


def test_too_many_redirects(public):
    for n in range(8):
        public.routes[f"/r{n}"] = redirect(f"/r{n + 1}")
    with pytest.raises(FetchFailed, match="Too many redirects"):
        get(public.url("/r0"), max_redirects=3)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "javascript:alert(1)", "http://user:pw@example.com/", "http:///nohost", "//x"],
)
def test_only_plain_http_and_https_urls(url):
    with pytest.raises(UnsafeUrl):
        fetch(url, max_bytes=100, timeout=1, resolver=lambda h, p: ["93.184.216.34"])


def test_binary_content_is_not_a_template(public):
    public.routes["/logo.png"] = page(b"\x89PNG....", "image/png")
    with pytest.raises(FetchFailed, match="image/png"):
        get(public.url("/logo.png"))


def test_http_errors_are_reported(public):
    with pytest.raises(FetchFailed, match="404"):
        get(public.url("/missing"))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - an address under test, nothing binds it
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:93.184.216.34", True),
        ("2002:7f00:1::", False),  # 6to4 carrying 127.0.0.1
    ],
)
def test_is_public(address, expected):
    assert is_public(ipaddress.ip_address(address)) is expected
