"""``providers.inflight``: requests sent now and answered later, against a real HTTP server on
loopback (keep-alive, answers in any order, a server that closes idle connections, hangs up
mid-request or never answers)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from plugin.providers import inflight
from tests.test_smtp_provider import certs, server_tls_context

__all__ = ["certs"]  # the throwaway CA fixture, used here for HTTPS


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *_args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: _Server = self.server  # type: ignore[assignment]
        server.seen.append((self.path, body, self.client_address[1]))
        command = body.decode()
        if command.startswith("sleep:"):
            time.sleep(float(command.split(":")[1]))
        if command == "hang-up":
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        answer = b"echo " + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        if command == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)
        if command == "silent-close":  # keep-alive as far as the client knows
            self.wfile.flush()
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, bytes, int]] = []


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _lanes(server, read_timeout: float = 5.0) -> inflight.Lanes:
    host, port = server.server_address
    return inflight.Lanes(f"http://{host}:{port}/api", connect_timeout=2.0, read_timeout=read_timeout)


def test_requests_in_flight_together_are_answered_in_any_order_on_their_own_connections(server):
    lanes = _lanes(server)
    slow = lanes.post("/api/a", b"sleep:0.3", {})
    fast = lanes.post("/api/b", b"fast", {})
    assert fast.answer() == (200, b"echo fast")  # answered while the slow one is still out
    assert slow.answer() == (200, b"echo sleep:0.3")
    assert {path for path, _, _ in server.seen} == {"/api/a", "/api/b"}
    assert len({port for _, _, port in server.seen}) == 2, "two requests at once: two connections"
    lanes.close()


def test_answered_connections_are_kept_alive_and_reused(server):
    lanes = _lanes(server)
    for i in range(5):
        assert lanes.post("/api/x", f"n{i}".encode(), {}).answer() == (200, f"echo n{i}".encode())
    assert len({port for _, _, port in server.seen}) == 1, "one keep-alive connection throughout"
    lanes.close()


def test_an_answer_that_says_close_is_not_reused(server):
    lanes = _lanes(server)
    assert lanes.post("/api/x", b"close", {}).answer() == (200, b"echo close")
    assert lanes.post("/api/x", b"after", {}).answer() == (200, b"echo after")
    assert len({port for _, _, port in server.seen}) == 2
    lanes.close()


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(server):
    lanes = _lanes(server)
    # answered as keep-alive, then the server closes the connection while it sits idle
    assert lanes.post("/api/x", b"silent-close", {}).answer() == (200, b"echo silent-close")
    time.sleep(0.1)
    assert lanes.post("/api/x", b"two", {}).answer() == (200, b"echo two")
    assert [body for _, body, _ in server.seen] == [b"silent-close", b"two"], "each sent once"
    assert len({port for _, _, port in server.seen}) == 2
    lanes.close()


def test_nothing_listening_is_not_sent():
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lanes = inflight.Lanes(f"http://127.0.0.1:{port}", connect_timeout=1.0, read_timeout=1.0)
    pending = lanes.post("/x", b"data", {})  # does not raise: the error comes with the answer
    with pytest.raises(inflight.NotSent):
        pending.answer()


def test_no_answer_in_time_leaves_the_outcome_unknown_and_the_connection_is_dropped(server):
    lanes = _lanes(server, read_timeout=0.2)
    with pytest.raises(inflight.OutcomeUnknown) as caught:
        lanes.post("/api/x", b"sleep:1", {}).answer()
    assert caught.value.timed_out
    assert lanes._idle == [], "a connection whose answer may still come is never reused"
    assert [body for _, body, _ in server.seen] == [b"sleep:1"], "the request did go out"


def test_a_hang_up_after_the_request_leaves_the_outcome_unknown(server):
    lanes = _lanes(server)
    with pytest.raises(inflight.OutcomeUnknown) as caught:
        lanes.post("/api/x", b"hang-up", {}).answer()
    assert not caught.value.timed_out
    assert lanes.post("/api/x", b"next", {}).answer() == (200, b"echo next")


def test_an_answer_is_read_once(server):
    lanes = _lanes(server)
    pending = lanes.post("/api/x", b"once", {})
    assert pending.answer()[1] == b"echo once"
    with pytest.raises(RuntimeError):
        pending.answer()
    lanes.close()


@pytest.fixture
def tls_server(certs):
    srv = _Server()
    srv.socket = server_tls_context(certs).wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_https_checks_the_server_certificate(tls_server, certs, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    port = tls_server.server_address[1]
    trusting = inflight.Lanes(
        f"https://localhost:{port}", connect_timeout=2.0, read_timeout=5.0, tls={"ca_certs": str(certs["ca"])}
    )
    assert trusting.post("/x", b"secret", {}).answer() == (200, b"echo secret")
    trusting.close()
    other_ca = inflight.Lanes(
        f"https://localhost:{port}",
        connect_timeout=2.0,
        read_timeout=5.0,
        tls={"cert_reqs": "CERT_REQUIRED"},  # the system's CAs, which never signed this one
    )
    with pytest.raises(inflight.NotSent):  # no trust, no connection: nothing went out
        other_ca.post("/x", b"never", {}).answer()
    assert [body for _, body, _ in tls_server.seen] == [b"secret"]


def test_closing_the_lanes_still_answers_what_is_in_flight_then_lets_go(server):
    lanes = _lanes(server)
    pending = lanes.post("/api/x", b"sleep:0.2", {})
    lanes.close()
    assert pending.answer() == (200, b"echo sleep:0.2")
    assert lanes._idle == []


def test_an_answer_whose_body_stalls_counts_as_timed_out():
    """Headers arrive, the body never does: a timeout (the outcome is unknown), not a break."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    release = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        release.wait(5)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    lanes = inflight.Lanes(f"http://127.0.0.1:{port}", connect_timeout=1.0, read_timeout=0.3)
    try:
        with pytest.raises(inflight.OutcomeUnknown) as caught:
            lanes.post("/x", b"data", {}).answer()
        assert caught.value.timed_out
    finally:
        release.set()
        listener.close()
