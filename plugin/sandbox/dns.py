"""A tiny authoritative DNS server on loopback whose zone tests and the demo control.

Why a real server instead of a fake resolver: the DNS checks must be exercised exactly as they run
in production — dnspython sending real queries over UDP and TCP, real NXDOMAIN/SERVFAIL replies,
real timeouts — so the only thing that differs is which server answers.

``DnsResponder`` answers from an in-memory zone that can change while it runs (thread-safe):

* unknown names → NXDOMAIN; a known name without records of the asked type → NOERROR with an
  empty answer (NODATA), as real DNS does.  A name is also "known" when a longer name below it
  exists (``_domainkey.example.com`` exists once ``mail._domainkey.example.com`` does).
* ``fail(name, "SERVFAIL" | "REFUSED" | "NXDOMAIN")`` answers that rcode for the name;
  ``hang(name)`` never answers, so clients run into their timeout.
* names are case-insensitive and may be given with or without the trailing dot.
* TXT values longer than 255 bytes are split into several character-strings, like real zones
  publish long DKIM keys, so clients must join them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from dnslib import AAAA, CNAME, MX, NS, QTYPE, RCODE, RR, TXT, A, DNSError
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, TCPServer, UDPServer

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TTL = 60
#: Longest character-string inside one TXT record (RFC 1035 §3.3).
TXT_CHUNK = 255
#: How long a TCP connection to a hanging name is held open before the server lets it go.
HANG_SECONDS = 60.0
SUPPORTED_TYPES = ("A", "AAAA", "TXT", "MX", "CNAME", "NS")
FAIL_RCODES = ("SERVFAIL", "REFUSED", "NXDOMAIN")
_MAX_CNAME_CHAIN = 8
_PORT_ATTEMPTS = 50


class _RecordLike(Protocol):
    type: str
    host: str
    value: str
    priority: int | None


def normalize_name(name: str) -> str:
    """``Mail._DomainKey.Example.COM.`` → ``mail._domainkey.example.com`` (the zone's key form)."""
    return name.strip().rstrip(".").lower()


def _split_txt(value: str) -> list[bytes]:
    """A TXT value as the character-strings a real zone would publish (≤ 255 bytes each)."""
    raw = value.encode("utf-8")
    if not raw:
        return [b""]
    return [raw[i : i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)]


def _rdata(rtype: str, value: str) -> Any:
    """Parse one zone value into dnslib rdata; raises ValueError with the offending value."""
    try:
        if rtype == "TXT":
            return TXT(_split_txt(value))
        if rtype == "MX":
            parts = value.split()
            if len(parts) == 1:
                return MX(parts[0].rstrip(".") + ".", 10)
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError("expected 'PRIORITY HOST', e.g. '10 mx.example.com.'")
            return MX(parts[1].rstrip(".") + ".", int(parts[0]))
        if rtype == "CNAME":
            return CNAME(value.strip().rstrip(".") + ".")
        if rtype == "NS":
            return NS(value.strip().rstrip(".") + ".")
        if rtype == "A":
            socket.inet_pton(socket.AF_INET, value.strip())
            return A(value.strip())
        if rtype == "AAAA":
            socket.inet_pton(socket.AF_INET6, value.strip())
            return AAAA(value.strip())
    except (OSError, ValueError, DNSError) as exc:
        raise ValueError(f"invalid {rtype} value {value!r}: {exc}") from exc
    raise ValueError(f"unsupported record type {rtype!r}; use one of {', '.join(SUPPORTED_TYPES)}")


class _Hang(DNSError):
    """Raised inside the handler so dnslib sends nothing back (it swallows DNSError)."""


class _QuietLogger(DNSLogger):
    """dnslib prints every query to stdout by default; send it to DEBUG logging instead."""

    def __init__(self) -> None:
        super().__init__(log="request,reply,error", prefix=False, logf=lambda text: log.debug("%s", text))


class DnsResponder(BaseResolver):
    """Authoritative answers for an in-memory zone, on UDP and TCP of the same loopback port.

    ``port=0`` picks a port that is free for both protocols.  Use as a context manager or call
    ``start()`` / ``stop()``; the zone can be edited at any time with ``set`` / ``remove`` /
    ``clear`` / ``fail`` / ``hang``.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *, ttl: int = DEFAULT_TTL) -> None:
        self.host = host
        self.port = port
        self.ttl = ttl
        self._lock = threading.RLock()
        self._zone: dict[str, dict[str, list[Any]]] = {}
        self._values: dict[str, dict[str, list[str]]] = {}
        self._failures: dict[str, str] = {}
        self._hanging: set[str] = set()
        self._released = threading.Event()
        self._servers: list[UDPServer | TCPServer] = []
        self._threads: list[threading.Thread] = []
        self.queries: int = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return bool(self._servers)

    @property
    def nameserver(self) -> tuple[str, int]:
        """``(host, port)`` for clients (the SendCloud simulator, ResolverConfig)."""
        return (self.host, self.port)

    def start(self) -> DnsResponder:
        if self._servers:
            return self
        self._released.clear()
        udp, tcp = self._bind()
        self.port = udp.server_address[1]
        for server in (udp, tcp):
            server.resolver = self
            server.logger = _QuietLogger()
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"dns-responder-{self.port}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        log.info("DNS responder listening on %s:%s (UDP+TCP)", self.host, self.port)
        return self

    def _bind(self) -> tuple[UDPServer, TCPServer]:
        """Bind UDP then TCP on the same port; with port 0 retry until a port is free for both."""
        attempts = _PORT_ATTEMPTS if self.port == 0 else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            udp = UDPServer((self.host, self.port), DNSHandler)
            port = udp.server_address[1]
            try:
                tcp = TCPServer((self.host, port), DNSHandler)
            except OSError as exc:
                udp.server_close()
                last_error = exc
                continue
            return udp, tcp
        raise OSError(f"cannot listen on {self.host}:{self.port} for both UDP and TCP: {last_error}")

    def stop(self) -> None:
        self._released.set()  # lets hanging TCP handlers return
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> DnsResponder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- zone editing

    def set(self, name: str, rtype: str, values: Sequence[str]) -> None:
        """Replace the ``rtype`` records of ``name`` (an empty list keeps the name, with no data).

        Values: TXT text (any length), MX ``"10 mx.example.com."``, CNAME/NS target, A/AAAA address.
        """
        if isinstance(values, str):
            raise TypeError("values must be a list of strings, not a single string")
        rtype = rtype.upper()
        if rtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported record type {rtype!r}; use one of {', '.join(SUPPORTED_TYPES)}")
        parsed = [_rdata(rtype, value) for value in values]
        key = normalize_name(name)
        with self._lock:
            self._zone.setdefault(key, {})[rtype] = parsed
            self._values.setdefault(key, {})[rtype] = list(values)

    def add(self, name: str, rtype: str, value: str) -> None:
        """Append one record to the existing ones of that name and type."""
        with self._lock:
            current = self.get(name, rtype)
            self.set(name, rtype, [*current, value])

    def get(self, name: str, rtype: str) -> list[str]:
        """The values as given to ``set`` (for pages that show the sandbox zone)."""
        with self._lock:
            return list(self._values.get(normalize_name(name), {}).get(rtype.upper(), []))

    def publish(self, records: Iterable[_RecordLike]) -> None:
        """Publish provider records (``providers.sendcloud.DnsRecord``) as a customer would.

        Records of the same host and type are collected, so two TXT records at the apex (ownership
        and SPF) both end up in the zone.
        """
        grouped: dict[tuple[str, str], list[str]] = {}
        for record in records:
            rtype = record.type.upper()
            value = record.value
            if rtype == "MX":
                value = f"{record.priority if record.priority is not None else 10} {value}"
            grouped.setdefault((normalize_name(record.host), rtype), []).append(value)
        for (host, rtype), values in grouped.items():
            existing = [v for v in self.get(host, rtype) if v not in values]
            self.set(host, rtype, [*existing, *values])

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove one type of records, or (``rtype=None``) the name with its fail/hang behaviour."""
        key = normalize_name(name)
        with self._lock:
            if rtype is None:
                self._zone.pop(key, None)
                self._values.pop(key, None)
                self._failures.pop(key, None)
                self._hanging.discard(key)
                return
            rtype = rtype.upper()
            self._zone.get(key, {}).pop(rtype, None)
            self._values.get(key, {}).pop(rtype, None)
            if key in self._zone and not self._zone[key]:
                del self._zone[key]
                self._values.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._zone.clear()
            self._values.clear()
            self._failures.clear()
            self._hanging.clear()

    def fail(self, name: str, rcode: str = "SERVFAIL") -> None:
        """Answer every query for ``name`` with ``rcode`` (SERVFAIL, REFUSED or NXDOMAIN)."""
        rcode = rcode.upper()
        if rcode not in FAIL_RCODES:
            raise ValueError(f"rcode must be one of {', '.join(FAIL_RCODES)}, not {rcode!r}")
        with self._lock:
            self._failures[normalize_name(name)] = rcode

    def hang(self, name: str) -> None:
        """Never answer queries for ``name`` (UDP: silence; TCP: the connection stays open)."""
        with self._lock:
            self._hanging.add(normalize_name(name))

    def heal(self, name: str) -> None:
        """Undo ``fail`` / ``hang`` for ``name``; its records stay."""
        key = normalize_name(name)
        with self._lock:
            self._failures.pop(key, None)
            self._hanging.discard(key)

    # ----------------------------------------------------------------- answering

    def _exists(self, key: str) -> bool:
        if key in self._zone:
            return True
        suffix = "." + key
        return any(name.endswith(suffix) for name in self._zone)

    def resolve(self, request: Any, handler: Any) -> Any:
        """dnslib entry point (runs on a server thread per query)."""
        qname = request.q.qname
        qtype = QTYPE.get(request.q.qtype)
        key = normalize_name(str(qname))
        reply = request.reply()
        answers: list[Any] | None = None
        with self._lock:
            self.queries += 1
            hanging = key in self._hanging
            failure = self._failures.get(key)
            if not hanging and failure is None:
                answers = self._answers(key, qname, qtype)
        if hanging:
            if getattr(handler, "protocol", "udp") == "tcp":
                self._released.wait(HANG_SECONDS)
            raise _Hang(f"hanging on {key}")
        if failure is not None:
            reply.header.rcode = getattr(RCODE, failure)
            return reply
        if answers is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in answers:
            reply.add_answer(rr)
        return reply

    def _answers(self, key: str, qname: Any, qtype: str) -> list[Any] | None:
        """RRs for the question, following CNAMEs inside the zone; ``None`` means NXDOMAIN."""
        if not self._exists(key):
            return None
        result: list[Any] = []
        owner = qname
        seen: set[str] = set()
        for _ in range(_MAX_CNAME_CHAIN):
            records = self._zone.get(key, {})
            if qtype == "ANY":
                for rtype, rdatas in records.items():
                    result.extend(self._rr(owner, rtype, r) for r in rdatas)
                return result
            if qtype in records:
                result.extend(self._rr(owner, qtype, r) for r in records[qtype])
                return result
            cnames = records.get("CNAME") or []
            if not cnames or key in seen:
                return result
            seen.add(key)
            result.append(self._rr(owner, "CNAME", cnames[0]))
            owner = cnames[0].label
            key = normalize_name(str(owner))
        return result

    def _rr(self, owner: Any, rtype: str, rdata: Any) -> Any:
        return RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=self.ttl)


__all__ = ["FAIL_RCODES", "SUPPORTED_TYPES", "DnsResponder", "normalize_name"]
