"""The SMTP provider against real aiosmtpd servers (STARTTLS, implicit TLS, AUTH, drops, 4xx/5xx).

Certificates and the DKIM key are generated per test session in a temporary directory; nothing
secret is stored in the repository.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import ipaddress
import itertools
import socket
import ssl
import threading
from collections import Counter
from email import policy
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from plugin.errors import AuthenticationFailed, InvalidInput, ProviderError
from plugin.providers.base import BatchMessage, Recipient
from plugin.providers.smtp import SmtpProvider, SmtpSettings, TokenBucket, test_connection
from tests.conftest import free_port

USER = "sender@example.com"
PASSWORD = "s3cret-pass"


# --------------------------------------------------------------------------- certificates


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""
    folder = tmp_path_factory.mktemp("smtp-certs")
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Test SMTP CA"))
        .issuer_name(_name("Test SMTP CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def server_tls_context(certs: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    return context


# --------------------------------------------------------------------------- the server


class Handler:
    """Records delivered mail; answers 451/550 for chosen recipients; can drop connections.

    ``drop_after``: on a connection that already delivered that many messages, the next MAIL
    FROM gets the connection closed instead of a reply (nothing can have been delivered).
    ``drop_after_data``: addresses whose message is stored but whose final reply never comes.
    """

    def __init__(
        self,
        *,
        temporary: set[str] | None = None,
        permanent: set[str] | None = None,
        drop_after: int | None = None,
        drop_after_data: set[str] | None = None,
    ) -> None:
        self.temporary = temporary or set()
        self.permanent = permanent or set()
        self.drop_after = drop_after
        self.drop_after_data = drop_after_data or set()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.per_connection: Counter = Counter()
        self.connections: set = set()
        self.lock = threading.Lock()
        self._numbers = itertools.count(1)

    def _connection(self, session) -> int:
        """This connection's own number.  Not ``id(session)``: the id of a dropped connection's
        session can be reused by the next one, which then looked as if it had already delivered
        ``drop_after`` messages and was dropped at once (a flaky failure under load)."""
        number = getattr(session, "test_connection_number", None)
        if number is None:
            number = session.test_connection_number = next(self._numbers)
        return number

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        connection = self._connection(session)
        self.connections.add(connection)
        if self.drop_after is not None and self.per_connection[connection] >= self.drop_after:
            server.transport.abort()
            return "421 going away"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.temporary:
            return "451 4.7.1 Greylisted, try again later"
        if address in self.permanent:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            self.per_connection[self._connection(session)] += 1
        if set(envelope.rcpt_tos) & self.drop_after_data:
            server.transport.abort()
        return "250 Message accepted"

    def delivered_to(self) -> Counter:
        return Counter(rcpt for _, rcpts, _ in self.messages for rcpt in rcpts)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    )
    # handled=False: let aiosmtpd answer 535 itself (the default means "I already replied").
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def start_server(certs):
    """Start an aiosmtpd server; ``mode`` is starttls (AUTH only after TLS), ssl or plain."""
    running: list[Controller] = []

    def start(handler: Handler, mode: str = "starttls", **smtp_kwargs) -> int:
        port = free_port()
        kwargs = dict(smtp_kwargs)
        if mode == "starttls":
            kwargs.update(
                tls_context=server_tls_context(certs),
                require_starttls=True,
                auth_required=True,
                auth_require_tls=True,
                authenticator=authenticator,
            )
        elif mode == "ssl":
            kwargs.update(
                ssl_context=server_tls_context(certs),
                server_hostname="localhost",
                auth_required=True,
                auth_require_tls=False,
                authenticator=authenticator,
            )
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        running.append(controller)
        return port

    yield start
    for controller in running:
        controller.stop()


def settings_for(port: int, certs, *, security: str = "starttls", **overrides) -> SmtpSettings:
    values = {
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "username": USER if security != "none" else "",
        "password": PASSWORD if security != "none" else "",
        "from_address": USER,
        "timeout": 5.0,
        "rate_per_second": 0,
        "tls_ca_file": str(certs["ca"]),
    }
    values.update(overrides)
    return SmtpSettings(**values)


def batch_for(emails: list[str], **overrides) -> BatchMessage:
    values = {
        "from_address": USER,
        "from_name": "市场部 Marketing",
        "subject": "你好 %name%，本周优惠",
        "html": "<p>亲爱的 %name%，编号 %code%</p>\n<p>.line starting with a dot</p>",
        "text": "亲爱的 %name%，编号 %code%\n.dot line",
        "recipients": [Recipient(e, {"name": f"用户{i}", "code": f"C{i}"}) for i, e in enumerate(emails)],
        "idempotency_key": "k1",
        "reply_to": "reply@example.com",
        "headers": {"List-Unsubscribe": "<https://example.com/u/1>", "X-Campaign": "活动 7"},
    }
    values.update(overrides)
    return BatchMessage(**values)


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=policy.default)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("exclude", ["LOGIN", "PLAIN"])
def test_starttls_auth_chinese_headers_variables_and_message_ids(start_server, certs, exclude):
    handler = Handler()
    port = start_server(handler, auth_exclude_mechanism=[exclude])
    emails = [f"r{i}@example.org" for i in range(3)]
    provider = SmtpProvider(settings_for(port, certs))
    try:
        results = provider.send_batch(batch_for(emails))
    finally:
        provider.close()

    assert [r.status for r in results] == ["accepted"] * 3
    assert [r.recipient for r in results] == emails
    ids = [r.provider_message_id for r in results]
    assert len(set(ids)) == 3
    assert all(i and i.startswith("<") and i.endswith("@example.com>") for i in ids)
    assert provider.connections_opened == 1
    assert len(handler.connections) == 1  # one connection for the whole batch

    assert len(handler.messages) == 3
    for i, (mail_from, rcpts, raw) in enumerate(handler.messages):
        assert mail_from == USER
        assert rcpts == [emails[i]]
        assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
        assert raw.isascii()
        msg = parse(raw)
        assert msg["Subject"] == f"你好 用户{i}，本周优惠"
        assert msg["From"].addresses[0].display_name == "市场部 Marketing"
        assert msg["From"].addresses[0].addr_spec == USER
        assert msg["To"] == emails[i]
        assert msg["Reply-To"] == "reply@example.com"
        assert msg["Message-ID"] == ids[i]
        assert msg["List-Unsubscribe"] == "<https://example.com/u/1>"
        assert msg["X-Campaign"] == "活动 7"
        assert msg["Date"] is not None
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert text.replace("\r\n", "\n") == f"亲爱的 用户{i}，编号 C{i}\n.dot line"
        assert f"亲爱的 用户{i}，编号 C{i}" in html
        assert "\n<p>.line starting with a dot</p>" in html.replace("\r\n", "\n")


def test_html_only_ascii_body_is_quoted_printable_and_unknown_placeholders_stay(start_server, certs):
    handler = Handler()
    port = start_server(handler)
    long_line = "x" * 3000
    batch = batch_for(
        ["a@example.org"],
        text=None,
        subject="Plain",
        html=f"<p>%name% 100%off %other% {long_line}</p>\n.\n.dot first\n",
    )
    with_provider = SmtpProvider(settings_for(port, certs))
    try:
        [result] = with_provider.send_batch(batch)
    finally:
        with_provider.close()
    assert result.status == "accepted"
    msg = parse(handler.messages[0][2])
    assert msg.get_content_type() == "text/html"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    body = msg.get_content().replace("\r\n", "\n")
    assert body == f"<p>用户0 100%off %other% {long_line}</p>\n.\n.dot first\n"


def test_wrong_password_is_authentication_failed(start_server, certs):
    port = start_server(Handler())
    provider = SmtpProvider(settings_for(port, certs, password="wrong"))
    with pytest.raises(AuthenticationFailed) as info:
        provider.send_batch(batch_for(["a@example.org"]))
    assert info.value.status_code == 535
    assert not info.value.retryable


def test_per_recipient_4xx_is_failed_and_5xx_is_rejected(start_server, certs):
    handler = Handler(temporary={"grey@example.org"}, permanent={"nobody@example.org"})
    port = start_server(handler)
    emails = ["a@example.org", "grey@example.org", "nobody@example.org", "b@example.org"]
    provider = SmtpProvider(settings_for(port, certs))
    try:
        results = provider.send_batch(batch_for(emails))
    finally:
        provider.close()
    by = {r.recipient: r for r in results}
    assert by["a@example.org"].status == "accepted"
    assert by["b@example.org"].status == "accepted"
    assert by["grey@example.org"].status == "failed"
    assert by["grey@example.org"].error.startswith("temporary: RCPT TO 451")
    assert by["nobody@example.org"].status == "rejected"
    assert "550" in by["nobody@example.org"].error
    assert handler.delivered_to() == Counter({"a@example.org": 1, "b@example.org": 1})
    assert len(handler.connections) == 1  # RSET kept the connection usable


def test_dropped_connection_reconnects_without_duplicates(start_server, certs):
    handler = Handler(drop_after=3)
    port = start_server(handler)
    emails = [f"r{i}@example.org" for i in range(10)]
    provider = SmtpProvider(settings_for(port, certs))
    try:
        results = provider.send_batch(batch_for(emails))
        # The connection is reused across batches as well (and re-opened when the server dropped it).
        more = provider.send_batch(batch_for(["late@example.org"]))
    finally:
        provider.close()
    assert [r.status for r in results] == ["accepted"] * 10
    assert more[0].status == "accepted"
    assert handler.delivered_to() == Counter(dict.fromkeys([*emails, "late@example.org"], 1))
    assert provider.connections_opened == 4  # 3 + 3 + 3 + (1 + late)
    assert len(handler.connections) == 4


def test_drop_after_the_final_dot_is_unknown_and_not_resent(start_server, certs):
    handler = Handler(drop_after_data={"lost@example.org"})
    port = start_server(handler)
    emails = ["a@example.org", "lost@example.org", "b@example.org"]
    provider = SmtpProvider(settings_for(port, certs))
    try:
        results = provider.send_batch(batch_for(emails))
    finally:
        provider.close()
    assert [r.status for r in results] == ["accepted", "unknown", "accepted"]
    assert results[1].provider_message_id  # kept, so a later bounce can still be matched
    assert handler.delivered_to() == Counter(dict.fromkeys(emails, 1))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_ssl(start_server, certs):
    handler = Handler()
    port = start_server(handler, mode="ssl")
    provider = SmtpProvider(settings_for(port, certs, security="ssl"))
    try:
        results = provider.send_batch(batch_for(["a@example.org", "b@example.org"]))
    finally:
        provider.close()
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert len(handler.messages) == 2


def test_connection_refused_is_retryable_provider_error(certs):
    provider = SmtpProvider(settings_for(free_port(), certs))
    with pytest.raises(ProviderError) as info:
        provider.send_batch(batch_for(["a@example.org"]))
    assert info.value.retryable
    assert "refused" in str(info.value)


def test_pacing_six_per_second_with_a_fake_clock(start_server, certs):
    handler = Handler()
    port = start_server(handler, mode="plain")
    clock = {"now": 100.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    provider = SmtpProvider(
        settings_for(port, certs, security="none", rate_per_second=6.0),
        clock=lambda: clock["now"],
        sleep=sleep,
    )
    try:
        results = provider.send_batch(batch_for([f"r{i}@example.org" for i in range(12)]))
    finally:
        provider.close()
    assert all(r.status == "accepted" for r in results)
    assert clock["now"] - 100.0 == pytest.approx(11 / 6)  # first mail at once, then one per 1/6 s
    assert len(slept) == 11


def test_token_bucket_does_not_sleep_when_the_sender_is_slower_than_the_rate():
    now = [0.0]
    slept: list[float] = []
    bucket = TokenBucket(2.0, clock=lambda: now[0], sleep=slept.append)
    bucket.wait()
    now[0] += 1.0
    bucket.wait()
    now[0] += 0.1
    bucket.wait()
    assert slept == [pytest.approx(0.4)]


def _dkim_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(der)


def test_dkim_signature_verifies(start_server, certs):
    handler = Handler()
    port = start_server(handler)
    pem, public = _dkim_key()
    provider = SmtpProvider(
        settings_for(port, certs, dkim_selector="mkt", dkim_domain="example.com", dkim_private_key=pem)
    )
    try:
        results = provider.send_batch(batch_for(["a@example.org", "b@example.org"]))
    finally:
        provider.close()
    assert [r.status for r in results] == ["accepted", "accepted"]
    queried: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        queried.append(name)
        return b"v=DKIM1; k=rsa; p=" + public if name == b"mkt._domainkey.example.com." else b""

    for _, _, raw in handler.messages:
        msg = parse(raw)
        signature = msg["DKIM-Signature"]
        assert "d=example.com" in signature
        assert "s=mkt" in signature
        assert dkim.verify(raw, dnsfunc=dnsfunc)
    assert queried
    # A changed body no longer verifies (the subject is encoded, so change the To header instead).
    raw = handler.messages[0][2].replace(b"To: a@example.org", b"To: evil@example.org", 1)
    assert not dkim.verify(raw, dnsfunc=dnsfunc)


def test_bad_dkim_key_is_refused_up_front(certs):
    with pytest.raises(InvalidInput) as info:
        SmtpProvider(
            settings_for(1025, certs, dkim_selector="s", dkim_domain="example.com", dkim_private_key=b"nope")
        )
    assert info.value.field == "dkim_private_key"


def test_header_injection_and_reserved_headers_are_refused(start_server, certs):
    port = start_server(Handler())
    provider = SmtpProvider(settings_for(port, certs))
    try:
        with pytest.raises(InvalidInput):
            provider.send_batch(batch_for(["a@example.org"], headers={"X-A": "ok\r\nBcc: x@example.org"}))
        with pytest.raises(InvalidInput):
            provider.send_batch(batch_for(["a@example.org"], headers={"Subject": "other"}))
        results = provider.send_batch(batch_for(["bad\r\naddr@example.org", "a@example.org"]))
    finally:
        provider.close()
    assert [r.status for r in results] == ["rejected", "accepted"]


# --------------------------------------------------------------------------- test_connection


def test_test_connection_ok(start_server, certs):
    port = start_server(Handler())
    ok, message = test_connection(settings_for(port, certs))
    assert ok, message
    assert "logged in" in message


def test_test_connection_auth_failure(start_server, certs):
    port = start_server(Handler())
    ok, message = test_connection(settings_for(port, certs, password="wrong"))
    assert not ok
    assert "user name or password" in message


def test_test_connection_refused(certs):
    ok, message = test_connection(settings_for(free_port(), certs))
    assert not ok
    assert "refused the connection" in message


def test_test_connection_untrusted_certificate(start_server, certs):
    port = start_server(Handler())
    ok, message = test_connection(settings_for(port, certs, tls_ca_file=None))
    assert not ok
    assert "not trusted" in message


def test_test_connection_ssl_against_a_plain_port(start_server, certs):
    port = start_server(Handler(), mode="plain")
    ok, message = test_connection(settings_for(port, certs, security="ssl"))
    assert not ok
    assert "TLS" in message


def test_test_connection_timeout(certs):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)  # accepts into the backlog but never sends a greeting
    try:
        ok, message = test_connection(settings_for(listener.getsockname()[1], certs, timeout=0.5))
    finally:
        listener.close()
    assert not ok
    assert "did not answer within 0.5 s" in message


def test_three_steps_build_the_next_mail_while_the_server_digests_and_a_failed_hook_sends_nothing(
    start_server, certs
):
    """compose / begin / complete: ``begin`` leaves the final reply to ``complete`` (the runner
    builds the next mail in between); a ``before_message`` that fails stops that mail before a
    byte of it is written, and the next mail goes out on a fresh connection."""
    handler = Handler(permanent={"nobody@example.org"})
    port = start_server(handler)
    provider = SmtpProvider(settings_for(port, certs))
    batch = batch_for(["a@example.org", "nobody@example.org", "b@example.org", "c@example.org"])
    shared = provider.prepare(batch)
    a, nobody, b, c = (provider.compose(batch, r, shared) for r in batch.recipients)
    calls: list[str] = []
    try:
        assert provider.begin(a, before_message=lambda: calls.append("a")) is None
        assert provider.complete(a).status == "accepted"
        refused = provider.begin(nobody, before_message=lambda: calls.append("nobody"))
        assert refused is not None
        assert refused.status == "rejected"
        assert "550" in refused.error

        def failing() -> None:
            raise RuntimeError("the previous record failed")

        with pytest.raises(RuntimeError, match="previous record"):
            provider.begin(b, before_message=failing)
        assert provider.begin(c) is None
        assert provider.complete(c).status == "accepted"
    finally:
        provider.close()
    assert calls == ["a"]  # the hook runs only once the server agreed to take a message
    assert handler.delivered_to() == Counter({"a@example.org": 1, "c@example.org": 1})
    assert len(handler.connections) == 2  # the failed hook dropped the first connection


def test_compose_refuses_an_address_that_cannot_be_sent_to(start_server, certs):
    provider = SmtpProvider(settings_for(free_port(), certs))
    batch = batch_for(["a@example.org"])
    result = provider.compose(batch, Recipient("no-at-sign", {}), provider.prepare(batch))
    assert result.status == "rejected"
