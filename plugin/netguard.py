"""Fetch a user-given URL without letting it reach inside the network (SSRF guard).

"Import a template from a URL" makes the server open a connection a user chose.  Without care that
reaches the cloud metadata service (169.254.169.254), the database, Redis or an admin page on
localhost.  The rules here:

* only ``http``/``https``, no credentials in the URL;
* the host is resolved ONCE per connection, every address is checked (private, loopback,
  link-local, shared, reserved, multicast and unspecified addresses are refused, IPv4 inside IPv6
  too), and the socket connects to that checked address; the name is never resolved again by
  someone else, so a DNS answer that changes between check and use (DNS rebinding) cannot
  redirect the connection.  TLS still verifies the certificate against the host name;
* redirects are followed by hand, each hop checked the same way, at most ``max_redirects``;
* the body is limited in size (``Content-Length`` checked first, then while reading) and the whole
  fetch in time (a watchdog closes the socket at the deadline, so a server that trickles a byte
  at a time is cut off too); no compression is asked for, so no decompression bomb.

Tests serve from loopback: they pass ``allow=`` (networks treated as public) and ``resolver=``
explicitly.  Nothing is allowed by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from email.message import Message
from urllib.parse import urljoin, urlsplit

from .errors import InvalidInput
from .i18n import _

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "crm-marketing-plugin/0.1 (template import)"
ACCEPTED_TYPES = ("text/", "application/xhtml+xml", "application/xml")
_CHUNK = 64 * 1024


class UnsafeUrl(InvalidInput):
    """The URL or one of its redirects points somewhere the server must not go."""


class FetchFailed(InvalidInput):
    """The URL is allowed but could not be fetched within the limits."""


@dataclasses.dataclass(frozen=True, slots=True)
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str
    charset: str | None
    body: bytes


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (also for IPv4 carried in IPv6)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return is_public(embedded)
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)


def _allowed(ip: IPAddress, allow: tuple[IPNetwork, ...]) -> bool:
    return is_public(ip) or any(ip.version == net.version and ip in net for net in allow)


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str


def _parse(url: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UnsafeUrl(_("This is not a valid web address."), field="url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl(_("Only http:// and https:// addresses can be imported."), field="url")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl(_("Addresses with a user name or password are not accepted."), field="url")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl(_("The address has no host name."), field="url")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UnsafeUrl(_("The host name is not valid."), field="url") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _addresses(target: _Target, resolver: Resolver, allow: tuple[IPNetwork, ...]) -> list[str]:
    """The checked addresses to connect to: all must be public, or none is used."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        candidates = [str(literal)]
    else:
        try:
            candidates = resolver(target.host, target.port)
        except (OSError, UnicodeError):
            raise FetchFailed(
                _("The host name %(host)s could not be resolved.", host=target.host), field="url"
            ) from None
    if not candidates:
        raise FetchFailed(_("The host name %(host)s could not be resolved.", host=target.host), field="url")
    checked = []
    for raw in candidates:
        try:
            ip = ipaddress.ip_address(str(raw).split("%", 1)[0])
        except ValueError:
            raise UnsafeUrl(_("The host name resolved to an invalid address."), field="url") from None
        if not _allowed(ip, allow):
            raise UnsafeUrl(
                _(
                    "%(host)s points to a private or reserved address; only public web "
                    "addresses can be imported.",
                    host=target.host,
                ),
                field="url",
            )
        checked.append(str(ip))
    return checked


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a host name, over a socket opened to an address we already checked."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.pinned_ip = ip
        self.tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.pinned_ip, self.port), self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.host)


class _Watchdog:
    """Closes a connection's socket at the deadline, whatever phase it is blocked in."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _too_slow(seconds: float) -> FetchFailed:
    return FetchFailed(
        _("The page did not arrive within %(seconds)s seconds.", seconds=format(seconds, "g")), field="url"
    )


def _too_large(limit: int) -> FetchFailed:
    return FetchFailed(
        _("The page is larger than the limit of %(kb)s KB.", kb=format(limit // 1024, ",")), field="url"
    )


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    resolver: Resolver | None = None,
    allow: Iterable[str | IPNetwork] = (),
    max_redirects: int = 5,
    tls_context: ssl.SSLContext | None = None,
) -> FetchResult:
    """GET ``url`` under the rules of this module; :class:`UnsafeUrl` or :class:`FetchFailed`.

    ``resolver`` and ``allow`` exist for tests that serve from loopback; production passes
    neither (system resolver, public addresses only).
    """
    resolve = resolver or system_resolver
    allowed = tuple(ipaddress.ip_network(net) if isinstance(net, str) else net for net in allow)
    context = tls_context or ssl.create_default_context()
    deadline = time.monotonic() + timeout
    current = url.strip()
    for _hop in range(max_redirects + 1):
        target = _parse(current)
        addresses = _addresses(target, resolve, allowed)
        status, headers, body = _get(target, addresses, deadline, timeout, max_bytes, context)
        if status in REDIRECTS:
            location = headers.get("Location")
            if not location:
                raise FetchFailed(_("The server redirected without saying where to."), field="url")
            current = urljoin(current, location.strip())
            continue
        if not 200 <= status < 300:
            raise FetchFailed(_("The server answered HTTP %(status)s.", status=status), field="url")
        content_type = headers.get_content_type() if headers.get("Content-Type") else "text/html"
        if not content_type.startswith(ACCEPTED_TYPES):
            raise FetchFailed(
                _("The address serves %(type)s, not a web page.", type=content_type), field="url"
            )
        return FetchResult(
            url=url,
            final_url=current,
            status=status,
            content_type=content_type,
            charset=headers.get_content_charset(),
            body=body,
        )
    raise FetchFailed(_("Too many redirects (more than %(n)s).", n=max_redirects), field="url")


def _get(
    target: _Target,
    addresses: list[str],
    deadline: float,
    timeout: float,
    max_bytes: int,
    context: ssl.SSLContext,
) -> tuple[int, Message, bytes]:
    """One request to the first checked address that accepts the connection."""
    last_error: Exception | None = None
    for ip in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _too_slow(timeout)
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = _PinnedHTTPS(target.host, target.port, ip, remaining, context)
        else:
            conn = _PinnedHTTP(target.host, target.port, ip, remaining)
        watchdog = _Watchdog(conn, remaining)
        try:
            conn.putrequest("GET", target.path, skip_accept_encoding=True)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Accept", "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1")
            conn.putheader("Accept-Encoding", "identity")
            conn.endheaders()
            response = conn.getresponse()
            headers = response.msg
            if response.status in REDIRECTS:
                return response.status, headers, b""
            length = headers.get("Content-Length")
            if length and length.strip().isdigit() and int(length) > max_bytes:
                raise _too_large(max_bytes)
            chunks: list[bytes] = []
            size = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _too_slow(timeout)
                if conn.sock is not None:
                    conn.sock.settimeout(remaining)
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
            if watchdog.fired:  # the shutdown looks like an early end of the body
                raise _too_slow(timeout)
            return response.status, headers, b"".join(chunks)
        except FetchFailed:
            raise
        except ssl.SSLCertVerificationError:
            raise FetchFailed(
                _("The certificate of %(host)s is not valid.", host=target.host), field="url"
            ) from None
        except TimeoutError:
            raise _too_slow(timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired:
                raise _too_slow(timeout) from None
            last_error = exc
            continue
        finally:
            watchdog.cancel()
            conn.close()
    raise FetchFailed(
        _("Could not connect to %(host)s (%(error)s).", host=target.host, error=type(last_error).__name__),
        field="url",
    )


__all__ = ["FetchFailed", "FetchResult", "UnsafeUrl", "fetch", "is_public", "system_resolver"]
