"""A local SMTP server that accepts every message and keeps it in memory.

The demo and the tests point the plugin's SMTP provider at it, so campaigns can be "sent" on a
machine without any mail account and a person can look at what would have gone out.  Nothing is
relayed.  Messages are parsed once on arrival (headers decoded, text and HTML parts decoded to
``str`` whatever charset and transfer encoding the sender used) so the pages never touch raw MIME.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import itertools
import socket
import threading
from collections import deque
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

from aiosmtpd.controller import Controller

DEFAULT_HOST = "127.0.0.1"
DEFAULT_CAPACITY = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class CapturedMessage:
    """One accepted message: the SMTP envelope plus the parsed headers and bodies."""

    id: int
    envelope_from: str
    envelope_to: tuple[str, ...]
    subject: str
    from_header: str
    to_header: str
    cc_header: str
    date: dt.datetime | None
    message_id: str
    headers: tuple[tuple[str, str], ...]
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    size: int
    received_at: dt.datetime
    raw: bytes

    def header(self, name: str) -> str | None:
        """First header of that name (case-insensitive), decoded."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def _safe_header(message: EmailMessage, name: str) -> str:
    """A decoded header, or its raw text if it is malformed (a sink must never refuse mail)."""
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):  # pragma: no cover - defective headers
        return ""
    return str(value) if value is not None else ""


def _part_text(part: EmailMessage | None) -> str | None:
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        # Unknown charset or broken encoding: decode what we can rather than drop the body.
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", errors="replace")
    # On the wire lines end in CRLF; pages and tests want plain newlines.
    return content.replace("\r\n", "\n")


def _date_of(message: EmailMessage) -> dt.datetime | None:
    raw = _safe_header(message, "Date")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None


def parse_message(
    raw: bytes,
    *,
    message_id: int,
    envelope_from: str,
    envelope_to: tuple[str, ...],
    received_at: dt.datetime | None = None,
) -> CapturedMessage:
    """Decode a raw RFC 5322 message into a :class:`CapturedMessage`."""
    message: EmailMessage = email.message_from_bytes(raw, policy=policy.default)  # type: ignore[assignment]
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    attachments = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True) or b""
        attachments.append(
            Attachment(
                filename=part.get_filename() or "",
                content_type=part.get_content_type(),
                size=len(payload),
            )
        )
    headers = []
    for key, value in message.items():  # every occurrence, in order (Received: repeats)
        try:
            headers.append((key, str(value)))
        except (ValueError, IndexError, TypeError):  # pragma: no cover - defective headers
            headers.append((key, ""))
    return CapturedMessage(
        id=message_id,
        envelope_from=envelope_from,
        envelope_to=envelope_to,
        subject=_safe_header(message, "Subject"),
        from_header=_safe_header(message, "From"),
        to_header=_safe_header(message, "To"),
        cc_header=_safe_header(message, "Cc"),
        date=_date_of(message),
        message_id=_safe_header(message, "Message-ID"),
        headers=tuple(headers),
        text=_part_text(text_part),  # type: ignore[arg-type]
        html=_part_text(html_part),  # type: ignore[arg-type]
        attachments=tuple(attachments),
        size=len(raw),
        received_at=received_at or dt.datetime.now(dt.UTC),
        raw=raw,
    )


class _Handler:
    """aiosmtpd handler: every RCPT is accepted, every DATA is stored."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        self.sink._store(raw, envelope.mail_from or "", tuple(envelope.rcpt_tos or ()))
        return "250 Message accepted for delivery"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (aiosmtpd cannot start on port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    """Fail fast with a clear message instead of aiosmtpd's start-up timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc


class SmtpSink:
    """The sink: ``start()``, send mail to ``host:port``, read ``messages()``, ``stop()``.

    ``port=0`` picks a free port.  The newest ``capacity`` messages are kept; older ones drop off
    so a long-running demo does not grow without bound.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.host = host
        self.port = port
        self.capacity = capacity
        self._messages: deque[CapturedMessage] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._controller: Controller | None = None

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> SmtpSink:
        if self._controller is not None:
            return self
        if self.port == 0:
            self.port = free_port(self.host)
        else:
            _check_port_free(self.host, self.port)
        controller = Controller(_Handler(self), hostname=self.host, port=self.port, ready_timeout=10)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- messages -----------------------------------------------------------------------------
    def _store(self, raw: bytes, envelope_from: str, envelope_to: tuple[str, ...]) -> CapturedMessage:
        with self._lock:
            message_id = next(self._ids)
        captured = parse_message(
            raw, message_id=message_id, envelope_from=envelope_from, envelope_to=envelope_to
        )
        with self._lock:
            self._messages.append(captured)
        return captured

    def messages(self) -> list[CapturedMessage]:
        """Captured messages, newest first."""
        with self._lock:
            return list(reversed(self._messages))

    def get(self, message_id: int) -> CapturedMessage | None:
        with self._lock:
            return next((m for m in self._messages if m.id == message_id), None)

    def clear(self) -> int:
        """Forget every captured message; returns how many there were."""
        with self._lock:
            count = len(self._messages)
            self._messages.clear()
            return count

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __bool__(self) -> bool:
        """A sink is truthy even when empty (``if sink:`` means "is there one", not "has mail")."""
        return True

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpSink {self.host}:{self.port} {state}, {len(self)} messages>"
