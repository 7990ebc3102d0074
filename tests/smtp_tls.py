"""A real aiosmtpd server with STARTTLS and AUTH that stores mail like the sandbox sink.

Used by the SMTP-account and trigger-mail tests.  The server certificate comes from the throwaway
CA of ``tests/test_smtp_provider.py`` (``certs`` fixture, re-exported here); stored accounts have
no per-account CA file, so the tests point OpenSSL's default trust store at that CA with
``SSL_CERT_FILE``, as an operator would for a private mail server.
"""

from __future__ import annotations

import pytest
from aiosmtpd.controller import Controller

from plugin.sandbox.smtp_sink import SmtpSink, _Handler
from tests.conftest import free_port
from tests.test_smtp_provider import PASSWORD, USER, authenticator, certs, server_tls_context

__all__ = ["PASSWORD", "USER", "GreylistOnce", "certs", "tls_sink"]


class GreylistOnce(_Handler):
    """Answers 451 to the first RCPT of each address, then accepts it (greylisting)."""

    def __init__(self, sink: SmtpSink) -> None:
        super().__init__(sink)
        self.seen: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address not in self.seen:
            self.seen.add(address)
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def tls_sink(certs, monkeypatch):
    """``tls_sink()`` starts a sink requiring STARTTLS then AUTH (USER/PASSWORD); returns it."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    running: list[Controller] = []

    def start(handler_class: type[_Handler] = _Handler) -> SmtpSink:
        sink = SmtpSink(port=free_port())
        controller = Controller(
            handler_class(sink),
            hostname="127.0.0.1",
            port=sink.port,
            ready_timeout=10,
            tls_context=server_tls_context(certs),
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        )
        controller.start()
        running.append(controller)
        return sink

    yield start
    for controller in running:
        controller.stop()
