"""HTTP POSTs sent now and answered later, over keep-alive connections of their own.

Why: the campaign runner keeps a few SendCloud batches in flight from ONE thread: while the
provider works on one request, the thread claims, builds and records the next batches.  With a
thread per request instead, the threads spend their time handing Python's interpreter lock to
each other (measured on the dispatch benchmark: a batch's engine CPU grew from 6.7 ms with one
thread to 7.8 ms with two and 9.1 ms with five), and each one still waits for the provider
in turn.  ``urllib3``'s pool sends a request and reads its answer in one call, so this module
holds its connections itself (``urllib3.connection``'s classes, the pool's own) and splits the
two halves: :meth:`Lanes.post` sends, :meth:`PendingPost.answer` reads.

Transport rule, as for the synchronous client: a connection that could not be opened, or a
reused idle connection the server had already closed (nothing of the request reached it), is
retried once on a new connection; once a request went out, a timeout or a broken connection
leaves the outcome unknown (:class:`OutcomeUnknown`) and the caller retries later with the same
idempotency key.
"""

from __future__ import annotations

import http.client
import threading
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, ReadTimeoutError
from urllib3.util import parse_url


class NotSent(Exception):
    """No connection could be opened: the server saw nothing of the request."""


class OutcomeUnknown(Exception):
    """The request went out, then the answer timed out (``timed_out``) or the connection broke."""

    def __init__(self, *, timed_out: bool) -> None:
        super().__init__("timed out" if timed_out else "connection broken")
        self.timed_out = timed_out


class PendingPost:
    """A sent request; :meth:`answer` waits for its status and body (once)."""

    __slots__ = ("_conn", "_error", "_lanes")

    def __init__(self, lanes: Lanes, conn: HTTPConnection | None, error: Exception | None) -> None:
        self._lanes = lanes
        self._conn = conn
        self._error = error

    def answer(self) -> tuple[int, bytes]:
        """``(status, body)``; raises :class:`NotSent` or :class:`OutcomeUnknown`."""
        if self._error is not None:
            raise self._error
        conn, self._conn = self._conn, None
        if conn is None:
            raise RuntimeError("this request's answer was already read")
        try:
            response = conn.getresponse()
            body = response.data
        except (TimeoutError, ReadTimeoutError):  # the latter: the body stalled after the headers
            conn.close()
            raise OutcomeUnknown(timed_out=True) from None
        except (OSError, http.client.HTTPException, HTTPError):
            conn.close()
            raise OutcomeUnknown(timed_out=False) from None
        if conn.sock is None:  # the answer said "close" (http.client let go of the socket)
            conn.close()
        else:
            self._lanes._give_back(conn)
        return response.status, body

    def abandon(self) -> None:
        """Drop the request without reading its answer (the connection cannot be reused)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Lanes:
    """Keep-alive connections to one origin, each carrying one request at a time."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        tls: dict[str, Any] | None = None,
    ) -> None:
        url = parse_url(base_url)
        self._https = url.scheme == "https"
        self._host = url.host or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._tls = dict(tls or {})
        self._idle: list[HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> PendingPost:
        """Send ``body`` to ``path`` now; never raises (errors come out of ``answer``)."""
        for attempt in (1, 2):
            reused, conn = self._take()
            try:
                if conn.sock is None:
                    conn.connect()
                conn.timeout = self._read_timeout
            except (OSError, HTTPError):
                conn.close()
                if attempt == 1:
                    continue
                return PendingPost(self, None, NotSent())
            try:
                conn.request("POST", path, body=body, headers=headers)
            except (OSError, http.client.HTTPException, HTTPError):
                conn.close()
                if reused and attempt == 1:  # closed by the server while idle: it saw nothing
                    continue
                return PendingPost(self, None, OutcomeUnknown(timed_out=False))
            return PendingPost(self, conn, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self) -> tuple[bool, HTTPConnection]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.is_connected:
                    return True, conn
                conn.close()
        cls = HTTPSConnection if self._https else HTTPConnection
        options = self._tls if self._https else {}
        return False, cls(self._host, self._port, timeout=self._connect_timeout, **options)

    def _give_back(self, conn: HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()  # answered after the lanes were closed (a provider dropped meanwhile)

    def close(self) -> None:
        """Close the idle connections; requests in flight still get their answers, and their
        connections are closed then."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


__all__ = ["Lanes", "NotSent", "OutcomeUnknown", "PendingPost"]
