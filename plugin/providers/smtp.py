"""SMTP provider: "send from my own mailbox" through any SMTP server (QQ, 163, Exmail, Postfix...).

Result statuses (``SendResult.status``) and what the caller should do with them:

* ``accepted`` — the server answered 2xx after the final ``.``; ``provider_message_id`` is the
  ``Message-ID`` header we generated for that recipient (stored to match bounces and replies).
* ``failed`` — a 4xx reply (greylisting, mailbox busy, rate limit) or a connection that could not
  be restored: *retry later*.  ``error`` starts with ``"temporary: "``.
* ``rejected`` — a 5xx reply for that recipient (no such user, policy): *never retry*.
* ``unknown`` — the connection dropped after the whole message, including the final ``.``, had
  been written but before the server's reply arrived.  The server may or may not have queued it,
  and SMTP has no idempotency key, so we do NOT resend (at most once beats a duplicate in
  someone's inbox).

Reconnects: one connection per provider is reused across batches.  When the server drops it
(``SMTPServerDisconnected``, reset, broken pipe) or answers 421 before the message was fully
written, nothing can have been delivered, so we reconnect and resend that recipient — once per
recipient; a second drop for the same recipient marks it ``failed``.

Speed: messages are assembled by hand (headers + QP/base64 bodies, CRLF line ends) rather than
with ``email.message.EmailMessage``, which costs ~100x more per mail (performance reference
§2.3).  Non-ASCII headers use RFC 2047 (``email.header.Header``); bodies are UTF-8.
Placeholder values are substituted as given (not HTML-escaped), exactly like SendCloud's ``sub``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import re
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from email.header import Header
from email.utils import formataddr, formatdate, make_msgid
from typing import Literal

from ..errors import AuthenticationFailed, InvalidInput, ProviderError
from ..i18n import _
from .base import AccountInfo, BatchMessage, Recipient, SendResult

PROVIDER_NAME = "smtp"
MAX_BATCH_SIZE = 100
DEFAULT_RATE = 6.0
CRLF = b"\r\n"
#: RFC 5322: at most 998 characters per line (plus CRLF) in an unencoded body.
_MAX_7BIT_LINE = 998

Security = Literal["ssl", "starttls", "none"]

#: Headers we write ourselves; ``batch.headers`` may not override them.
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "reply-to",
        "dkim-signature",
    }
)
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 5322 ftext)
_PLACEHOLDER = re.compile(r"%([A-Za-z0-9_.\-]+)%")
_ASCII_BYTES = bytes(range(128))
_DKIM_HEADERS = [b"From", b"To", b"Subject", b"Date", b"Message-ID"]
#: A broken or silent connection (resets, broken pipes, timeouts, TLS errors are all OSError).
_DROPS = (smtplib.SMTPServerDisconnected, OSError)


@dataclasses.dataclass(frozen=True)
class SmtpSettings:
    """One SMTP account.  The password arrives decrypted (``plugin.crypto`` holds it at rest)."""

    host: str
    port: int
    security: Security = "starttls"
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    from_address: str = ""
    timeout: float = 15.0
    #: Messages per second for this account (many mailbox providers cut off faster senders).
    #: 0 means no pacing.
    rate_per_second: float = DEFAULT_RATE
    local_hostname: str | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key: bytes | None = dataclasses.field(default=None, repr=False)
    #: Verify the server certificate (against the system store, or ``tls_ca_file`` if given).
    tls_verify: bool = True
    tls_ca_file: str | None = None

    @property
    def dkim_enabled(self) -> bool:
        return bool(self.dkim_selector and self.dkim_domain and self.dkim_private_key)


# --------------------------------------------------------------------------- connections


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    if not settings.tls_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=settings.tls_ca_file)


def _validate(settings: SmtpSettings) -> None:
    if not settings.host:
        raise InvalidInput(_("The SMTP host is required."), field="host")
    if not 0 < int(settings.port) < 65536:
        raise InvalidInput(_("The SMTP port must be 1-65535."), field="port")
    if settings.security not in ("ssl", "starttls", "none"):
        raise InvalidInput(_("Security must be ssl, starttls or none."), field="security")
    if settings.rate_per_second < 0:
        raise InvalidInput(_("The send rate cannot be negative."), field="rate_per_second")
    if settings.username and not settings.password:
        raise InvalidInput(_("A password is required with a user name."), field="password")
    if not (settings.username.isascii() and settings.password.isascii()):
        # smtplib encodes AUTH credentials as ASCII; mailbox "authorization codes" always are.
        raise InvalidInput(_("The user name and password must be ASCII characters."), field="password")
    if settings.dkim_private_key is not None and settings.dkim_selector and settings.dkim_domain:
        _check_dkim_key(settings.dkim_private_key)


def _check_dkim_key(pem: bytes) -> None:
    """Refuse an unusable key when the account is configured, not on the first mail."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(
            _("The DKIM private key is not an unencrypted PEM private key."), field="dkim_private_key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 1024:
        raise InvalidInput(
            _("The DKIM key must be an RSA key of 1024 bits or more."), field="dkim_private_key"
        )


def _error(message: str, *, retryable: bool, code: int | None = None) -> ProviderError:
    return ProviderError(message, provider=PROVIDER_NAME, status_code=code, retryable=retryable)


def _reply_text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)


def open_connection(settings: SmtpSettings) -> smtplib.SMTP:
    """Connect, secure and log in; every failure becomes a ``ProviderError`` with a clear message.

    Auth failures are ``AuthenticationFailed`` (permanent until the password changes); refused
    connections, timeouts and 4xx greetings are retryable; TLS problems are not (they are
    configuration: wrong port/security choice or an untrusted certificate).
    """
    _validate(settings)
    where = f"{settings.host}:{settings.port}"
    smtp: smtplib.SMTP | None = None
    try:
        if settings.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                local_hostname=settings.local_hostname,
                timeout=settings.timeout,
                context=_tls_context(settings),
            )
        else:
            smtp = smtplib.SMTP(
                settings.host, settings.port, local_hostname=settings.local_hostname, timeout=settings.timeout
            )
        smtp.ehlo()
        if settings.security == "starttls":
            if not smtp.has_extn("starttls"):
                raise _error(
                    _("%(where)s does not offer STARTTLS; choose SSL or check the port.", where=where),
                    retryable=False,
                )
            smtp.starttls(context=_tls_context(settings))
            smtp.ehlo()
        if settings.username:
            smtp.login(settings.username, settings.password)
        return smtp
    except ProviderError:
        _close_quietly(smtp)
        raise
    except smtplib.SMTPAuthenticationError as exc:
        _close_quietly(smtp)
        raise AuthenticationFailed(
            _(
                "%(where)s refused the user name or password: %(reply)s",
                where=where,
                reply=_reply_text(exc.smtp_error),
            ),
            provider=PROVIDER_NAME,
            status_code=exc.smtp_code,
        ) from None
    except smtplib.SMTPNotSupportedError:
        _close_quietly(smtp)
        raise _error(
            _("%(where)s does not offer AUTH on this connection; try SSL or STARTTLS.", where=where),
            retryable=False,
        ) from None
    except ssl.SSLCertVerificationError as exc:
        _close_quietly(smtp)
        raise _error(
            _(
                "The certificate of %(where)s is not trusted: %(reason)s",
                where=where,
                reason=exc.verify_message,
            ),
            retryable=False,
        ) from None
    except ssl.SSLError as exc:
        _close_quietly(smtp)
        raise _error(
            _(
                "TLS with %(where)s failed (%(reason)s); check that the port matches the security choice.",
                where=where,
                reason=exc.reason or type(exc).__name__,
            ),
            retryable=False,
        ) from None
    except smtplib.SMTPResponseException as exc:
        _close_quietly(smtp)
        raise _error(
            _(
                "%(where)s answered %(code)s: %(reply)s",
                where=where,
                code=exc.smtp_code,
                reply=_reply_text(exc.smtp_error),
            ),
            retryable=400 <= exc.smtp_code < 500,
            code=exc.smtp_code,
        ) from None
    except ConnectionRefusedError:
        _close_quietly(smtp)
        raise _error(_("%(where)s refused the connection.", where=where), retryable=True) from None
    except TimeoutError:
        _close_quietly(smtp)
        raise _error(
            _(
                "%(where)s did not answer within %(seconds)s s.",
                where=where,
                seconds=format(settings.timeout, "g"),
            ),
            retryable=True,
        ) from None
    except socket.gaierror:
        _close_quietly(smtp)
        raise _error(
            _("The host name %(host)s cannot be resolved.", host=settings.host), retryable=True
        ) from None
    except smtplib.SMTPServerDisconnected as exc:
        _close_quietly(smtp)
        if "timed out" in str(exc):  # smtplib turns a read timeout into a disconnect
            raise _error(
                _(
                    "%(where)s did not answer within %(seconds)s s.",
                    where=where,
                    seconds=format(settings.timeout, "g"),
                ),
                retryable=True,
            ) from None
        raise _error(
            _("%(where)s closed the connection: %(error)s", where=where, error=str(exc)), retryable=True
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        _close_quietly(smtp)
        raise _error(
            _("Cannot talk to %(where)s: %(error)s", where=where, error=str(exc) or type(exc).__name__),
            retryable=True,
        ) from None


def _close_quietly(smtp: smtplib.SMTP | None) -> None:
    if smtp is None:
        return
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    with contextlib.suppress(OSError):
        smtp.close()


def test_connection(settings: SmtpSettings) -> tuple[bool, str]:
    """Connect, secure, log in and NOOP: what the account form's "test connection" button runs."""
    try:
        smtp = open_connection(settings)
    except (ProviderError, InvalidInput) as exc:
        return False, str(exc.args[0]) if exc.args else str(exc)
    try:
        code, reply = smtp.noop()
        if code != 250:
            return False, _(
                "The server answered NOOP with %(code)s: %(reply)s", code=code, reply=_reply_text(reply)
            )
    except (smtplib.SMTPException, OSError) as exc:
        return False, _("The connection broke after login: %(error)s", error=str(exc) or type(exc).__name__)
    finally:
        _close_quietly(smtp)
    return True, _("Connected to %(host)s:%(port)s and logged in.", host=settings.host, port=settings.port)


# Not a pytest test even though the name starts with "test_".
test_connection.__test__ = False  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- message building


def _header_value(value: str) -> str:
    """ASCII as is; anything else RFC 2047 encoded (folded with CRLF)."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def _ascii_address(address: str, field: str) -> str:
    """An address usable without SMTPUTF8: IDN domains in punycode; non-ASCII local parts refused."""
    address = address.strip()
    if any(ch in address for ch in "\r\n<>\t ,;") or address.count("@") != 1:
        raise InvalidInput(_("%(address)s is not a valid address.", address=address), field=field)
    local, domain = address.split("@")
    if not local or not domain:
        raise InvalidInput(_("%(address)s is not a valid address.", address=address), field=field)
    if not local.isascii():
        raise InvalidInput(
            _("%(address)s needs SMTPUTF8, which this sender does not use.", address=address), field=field
        )
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidInput(
                _("%(address)s has an invalid domain.", address=address), field=field
            ) from None
    return f"{local}@{domain}"


def _encode_body(text: str) -> tuple[str, bytes]:
    """(transfer encoding, CRLF-terminated encoded bytes) for a UTF-8 text part.

    ASCII bodies whose lines fit SMTP's 998 characters go as they are (``7bit``): quoted-printable
    encoding cost more than the rest of building the message (binascii walks every character).
    Other mostly-ASCII bodies (typical HTML) stay readable and small as quoted-printable;
    mostly-CJK bodies are a third smaller as base64.
    """
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    if body.isascii() and "\0" not in body and max(map(len, body.split("\n"))) <= _MAX_7BIT_LINE:
        encoded = body.replace("\n", "\r\n").encode("ascii")
        return "7bit", encoded if encoded.endswith(CRLF) else encoded + CRLF
    raw = body.encode("utf-8")
    # bytes.translate deleting the ASCII range counts the rest in C (a generator over the
    # bytes cost ~0.3 ms per 4 KB part, a third of building the whole message).
    non_ascii = len(raw.translate(None, _ASCII_BYTES)) if not text.isascii() else 0
    if non_ascii * 6 > len(raw):
        encoded = base64.encodebytes(raw).replace(b"\n", CRLF)
        return "base64", encoded
    encoded = binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False).replace(b"\n", CRLF)
    if not encoded.endswith(CRLF):
        encoded += CRLF
    return "quoted-printable", encoded


def _part(subtype: str, text: str) -> bytes:
    cte, body = _encode_body(text)
    head = f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    return head.encode("ascii") + body


def _substitute(template: str, values: Mapping[str, str], names: frozenset[str]) -> str:
    """Replace ``%name%`` for every name any recipient of the batch has (missing → "")."""
    if "%" not in template or not names:
        return template

    def repl(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in names:
            return match.group(0)
        return str(values.get(key, ""))

    return _PLACEHOLDER.sub(repl, template)


def _header_values(fixed: bytes, values: Mapping[str, str], names: frozenset[str]) -> bytes:
    """Per-recipient ``%name%`` values in extra headers (``List-Unsubscribe`` carries a token).

    Only ASCII values without line breaks are put into a header (no header injection from
    contact data); anything else becomes empty.
    """
    if b"%" not in fixed:
        return fixed
    safe = {k: v for k, v in values.items() if v.isascii() and "\r" not in v and "\n" not in v}
    return _substitute(fixed.decode("ascii"), safe, names).encode("ascii")


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """The parts of a batch's message that are the same for every recipient."""

    envelope_from: str
    from_domain: str
    fixed_headers: bytes
    names: frozenset[str]


def _prepare(batch: BatchMessage, settings: SmtpSettings) -> _Prepared:
    from_address = _ascii_address(batch.from_address or settings.from_address, "from_address")
    envelope_from = (
        _ascii_address(settings.from_address, "from_address") if settings.from_address else from_address
    )
    lines = [f"From: {formataddr((batch.from_name, from_address), charset='utf-8')}"]
    if batch.reply_to:
        lines.append(f"Reply-To: {_ascii_address(batch.reply_to, 'reply_to')}")
    for name, value in batch.headers.items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
            raise InvalidInput(_("The header name %(name)s cannot be used.", name=name), field="headers")
        if "\r" in value or "\n" in value:
            raise InvalidInput(_("The header %(name)s contains a line break.", name=name), field="headers")
        lines.append(f"{name}: {_header_value(value)}")
    lines.append("MIME-Version: 1.0")
    fixed = ("\r\n".join(lines) + "\r\n").encode("ascii")
    names = frozenset(name for r in batch.recipients for name in r.variables)
    return _Prepared(envelope_from, from_address.rpartition("@")[2], fixed, names)


def build_message(
    batch: BatchMessage, recipient: Recipient, prepared: _Prepared, *, to_address: str, message_id: str
) -> bytes:
    """The full RFC 5322 message (CRLF line ends, 7-bit clean) for one recipient."""
    values = recipient.variables
    subject = _substitute(batch.subject, values, prepared.names)
    html = _substitute(batch.html, values, prepared.names)
    head = (
        f"To: {to_address}\r\n"
        f"Subject: {_header_value(subject)}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Message-ID: {message_id}\r\n"
    ).encode("ascii") + _header_values(prepared.fixed_headers, values, prepared.names)
    if batch.text:
        text = _substitute(batch.text, values, prepared.names)
        boundary = f"=_mkt_{uuid.uuid4().hex}"
        mark = f"--{boundary}\r\n".encode("ascii")
        return b"".join(
            (
                head,
                f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode("ascii"),
                mark,
                _part("plain", text),
                mark,
                _part("html", html),
                f"--{boundary}--\r\n".encode("ascii"),
            )
        )
    return head + _part("html", html)


def dkim_sign(message: bytes, settings: SmtpSettings) -> bytes:
    """Prepend a DKIM-Signature (relaxed/relaxed survives re-folding by relays)."""
    import dkim

    assert settings.dkim_selector
    assert settings.dkim_domain
    assert settings.dkim_private_key
    signature = dkim.sign(
        message,
        settings.dkim_selector.encode("ascii"),
        settings.dkim_domain.encode("ascii"),
        settings.dkim_private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=_DKIM_HEADERS,
    )
    return signature + message


# --------------------------------------------------------------------------- pacing


class TokenBucket:
    """At most ``rate`` sends per second, no bursts (capacity 1): SMTP hosts punish bursts."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


# --------------------------------------------------------------------------- the provider


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One recipient's message, addressed and built, ready for ``SmtpProvider.begin``."""

    email: str
    envelope_from: str
    to_address: str
    message_id: str
    data: bytes


class _Dropped(Exception):
    """The connection went away before the message was fully written: safe to resend."""


class _HookFailed(Exception):
    """The caller's ``before_message`` failed (its error inside): kept apart from the socket
    errors of ``_DROPS`` so a database error is never mistaken for a dropped SMTP connection."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _run_hook(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception as exc:
        raise _HookFailed(exc) from exc


class SmtpProvider:
    """``providers.base.Provider`` for one SMTP account; one reused connection, paced sends."""

    name = PROVIDER_NAME
    max_batch_size = MAX_BATCH_SIZE

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _validate(settings)
        self.settings = settings
        self._bucket = TokenBucket(settings.rate_per_second, clock=clock, sleep=sleep)
        self._smtp: smtplib.SMTP | None = None
        #: Connections opened so far (tests and diagnostics).
        self.connections_opened = 0

    def __repr__(self) -> str:
        return f"<SmtpProvider {self.settings.username or '-'} at {self.settings.host}:{self.settings.port}>"

    # -- connection

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = open_connection(self.settings)
            self.connections_opened += 1
        return self._smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        _close_quietly(smtp)

    # -- sending

    def send_one(self, batch: BatchMessage) -> SendResult:
        if len(batch.recipients) != 1:
            raise InvalidInput(
                _("A trigger mail has exactly one recipient, got %(n)s.", n=len(batch.recipients)),
                field="recipients",
            )
        return self.send_batch(batch)[0]

    def send_batch(self, batch: BatchMessage) -> list[SendResult]:
        """Send each recipient its own rendered message over the shared connection.

        Raises ``ProviderError`` only when the connection cannot be opened before any recipient
        was tried (then nothing was sent); later connection failures become ``failed`` results
        for the remaining recipients so the accepted ones are never lost.
        """
        recipients: Sequence[Recipient] = list(batch.recipients)
        if not recipients:
            raise InvalidInput(_("A batch needs at least one recipient."), field="recipients")
        if len(recipients) > MAX_BATCH_SIZE:
            raise InvalidInput(
                _("At most %(max)s recipients per batch, got %(n)s.", max=MAX_BATCH_SIZE, n=len(recipients)),
                field="recipients",
            )
        prepared = _prepare(batch, self.settings)
        results: list[SendResult] = []
        for index, recipient in enumerate(recipients):
            try:
                results.append(self._send_recipient(batch, recipient, prepared))
            except ProviderError as exc:
                if index == 0:
                    raise
                error = f"temporary: {exc}"
                results.extend(SendResult(r.email, "failed", error=error) for r in recipients[index:])
                break
        return results

    def prepare(self, batch: BatchMessage) -> _Prepared:
        """The parts of ``batch``'s message shared by all its recipients (checked addresses and
        headers), for a caller that sends the recipients one by one with ``compose``, ``begin``
        and ``complete``.  Raises ``InvalidInput`` as ``send_batch`` would."""
        return _prepare(batch, self.settings)

    # -- one mail in three steps, for a caller that overlaps its own work with the server's

    def compose(
        self, batch: BatchMessage, recipient: Recipient, prepared: _Prepared
    ) -> Outgoing | SendResult:
        """``recipient``'s message, built (and DKIM-signed) for ``begin``; or its refusal when
        the address cannot be sent to.  Pure computation: a caller does it for the next mail
        while the server digests the previous one (between ``begin`` and ``complete``)."""
        try:
            to_address = _ascii_address(recipient.email, "recipients")
        except InvalidInput as exc:
            return SendResult(recipient.email, "rejected", error=str(exc))
        message_id = recipient.message_id or make_msgid(domain=prepared.from_domain)
        data = build_message(batch, recipient, prepared, to_address=to_address, message_id=message_id)
        if self.settings.dkim_enabled:
            data = dkim_sign(data, self.settings)
        return Outgoing(recipient.email, prepared.envelope_from, to_address, message_id, data)

    def begin(self, mail: Outgoing, *, before_message: Callable[[], None] | None = None) -> SendResult | None:
        """Write ``mail`` to the server: ``None`` once the whole message is written (its outcome
        is then ``complete``'s), or its result when the server refused it before that.

        A connection lost before the message was written is reopened once and the mail tried
        again (the server kept nothing).  ``before_message`` runs once the server has agreed to
        take the message (354) and before a byte of it is written: the runner confirms there
        that the previous mail's record is committed.  If it raises, the connection is dropped
        (the server discards a message it never received) and its exception propagates: this
        mail was not sent.  Raises ``ProviderError`` when no connection can be opened."""
        for attempt in (1, 2):
            smtp = self._connection()
            self._bucket.wait()
            try:
                refusal = self._write(smtp, mail, before_message)
            except _Dropped as exc:
                self._drop()
                if attempt == 2:
                    return SendResult(mail.email, "failed", mail.message_id, f"temporary: {exc}")
                continue
            if refusal is not None:
                return SendResult(mail.email, refusal[0], mail.message_id, refusal[1])
            return None
        raise AssertionError("unreachable")

    def complete(self, mail: Outgoing) -> SendResult:
        """The server's verdict on the message ``begin`` wrote.  A connection lost while
        waiting for it is ``unknown``: the message may have been delivered, so it is not resent."""
        smtp = self._smtp
        if smtp is None:
            return SendResult(mail.email, "unknown", mail.message_id, _lost_after_message())
        try:
            code, reply = smtp.getreply()
        except _DROPS:
            self._drop()
            return SendResult(mail.email, "unknown", mail.message_id, _lost_after_message())
        if code == 421:
            self._drop()
        if 200 <= code < 300:
            return SendResult(mail.email, "accepted", mail.message_id)
        status, error = _refusal(code, f"{code} {_reply_text(reply)}")
        return SendResult(mail.email, status, mail.message_id, error)

    def _send_recipient(self, batch: BatchMessage, recipient: Recipient, prepared: _Prepared) -> SendResult:
        mail = self.compose(batch, recipient, prepared)
        if isinstance(mail, SendResult):
            return mail
        return self.begin(mail) or self.complete(mail)

    def _write(
        self, smtp: smtplib.SMTP, mail: Outgoing, before_message: Callable[[], None] | None
    ) -> tuple[str, str] | None:
        """One SMTP transaction up to the written message, step by step so we know whether the
        final "." went out: ``None`` when it did, else the refusal (status, error).

        A drop or 421 before the whole message is written raises ``_Dropped`` (resend is safe).
        """
        stage = "MAIL FROM"
        try:
            code, reply = smtp.mail(mail.envelope_from)
            if code == 250:
                stage = "RCPT TO"
                code, reply = smtp.rcpt(mail.to_address)
            if code in (250, 251):
                stage = "DATA"
                smtp.putcmd("data")
                code, reply = smtp.getreply()
            if code == 354:
                if before_message is not None:
                    _run_hook(before_message)
                stage = "message"
                smtp.send(_dot_stuff(mail.data))
        except _HookFailed as failed:
            self._drop()  # the server never saw the message; it discards the open transaction
            raise failed.error from None
        except _DROPS as exc:
            raise _Dropped(_("connection lost at %(stage)s: %(error)s", stage=stage, error=exc)) from None
        if code == 421:
            raise _Dropped(_("server closing at %(stage)s: %(reply)s", stage=stage, reply=_reply_text(reply)))
        if stage != "message":
            self._reset(smtp)
            return _refusal(code, f"{stage} {code} {_reply_text(reply)}")
        return None

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a refused step so the next recipient starts clean; a failed RSET reconnects."""
        try:
            code, _reply = smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()
            return
        if code != 250:
            self._drop()

    def account_info(self) -> AccountInfo | None:
        return None


def _lost_after_message() -> str:
    return _("the connection dropped after the message was sent; it may have been delivered")


def _refusal(code: int, detail: str) -> tuple[str, str]:
    if 400 <= code < 500:
        return "failed", f"temporary: {detail}"
    return "rejected", detail


def _dot_stuff(data: bytes) -> bytes:
    """RFC 5321 transparency plus the end-of-data marker (the message already ends in CRLF)."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(CRLF):
        data += CRLF
    return data + b".\r\n"


__all__ = [
    "DEFAULT_RATE",
    "MAX_BATCH_SIZE",
    "SmtpProvider",
    "SmtpSettings",
    "TokenBucket",
    "build_message",
    "dkim_sign",
    "open_connection",
    "test_connection",
]
