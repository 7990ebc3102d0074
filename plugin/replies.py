"""Reply detection: read the reply-to mailbox, tie each reply to the campaign mail it answers.

Replies come from two places and take the same path (:func:`store_reply`):

* **IMAP** (:func:`poll`): the workspace's reply mailbox (:class:`~plugin.models.ReplyMailbox`)
  is read by UID.  ``uidvalidity``/``last_uid`` remember how far we got, so each poll fetches
  only new messages, in a bounded batch; a new UIDVALIDITY (mailbox recreated, server moved)
  starts over from the beginning, which is safe because a reply is stored once per Message-ID.
  The folder is opened read-only and bodies are fetched with ``BODY.PEEK``, so the people who
  read that mailbox still see the replies as unread.
* **SendCloud inbound routes** (:func:`handle_route`): the webhook's ``route`` event.

Matching (:func:`match`): ``In-Reply-To`` then ``References`` name the mail answered — our SMTP
Message-IDs ``<mkt.<campaign>.<recipient>@domain>`` or SendCloud's ids (the stored emailId is
``<messageId><index>$<address>``); failing that, the sender's address is looked up among the
recipients of the last ``match_window_days`` (the most recent send wins).  Auto-replies
(``Auto-Submitted``, ``X-Autoreply``, ``Precedence: bulk``, "Out of office"/"自动回复") and bounces
(``MAILER-DAEMON``, ``multipart/report``) are skipped: they are not people answering.  Mail that
matches nothing is left alone — the mailbox may be a person's inbox.

A stored reply records an ``Event`` of type ``reply`` (:func:`plugin.events.record` marks the
recipient replied and counts ``replied`` once per recipient), may tag the contact in the CRM at
once, and notifies the contact's owner: an ``Event`` of type ``reply_notification`` plus the
blinker signal :data:`reply_received`, which a host connects to for mail, chat or in-app notices::

    from plugin.replies import reply_received

    @reply_received.connect
    def tell_owner(sender, **reply):  # reply_id, workspace_id, campaign_id, contact_id, owner_id, ...
        ...

The signal is sent as soon as the reply is stored (before the caller commits); receivers get plain
values, never ORM objects, and must not commit the plugin's session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email
import email.errors
import email.header
import email.utils
import hashlib
import imaplib
import json
import logging
import re
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from email.message import Message
from typing import Any

from blinker import Namespace
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import events
from .errors import InvalidInput, NotFound
from .i18n import _
from .models import Campaign, CampaignRecipient, Reply, ReplyMailbox, utcnow

log = logging.getLogger(__name__)

_signals = Namespace()
#: Sent once per stored reply with ``reply_id, workspace_id, campaign_id, recipient_id,
#: contact_id, owner_id, from_email, subject, source``; the sender is the Flask app when there is one.
reply_received = _signals.signal("marketing-reply")

SECURITY_CHOICES = ("ssl", "starttls", "none")
#: Messages fetched per poll: a mailbox with years of mail catches up over several polls.
DEFAULT_BATCH = 50
#: Bytes of a message fetched (a reply with a large attachment is read up to here).
MAX_MESSAGE_BYTES = 1_048_576
MAX_TEXT_CHARS = 20_000
IMAP_TIMEOUT = 20.0
#: How often the scheduler polls a mailbox at most.
DEFAULT_POLL_MINUTES = 5
DEFAULT_WINDOW_DAYS = 14

_OUR_ID = re.compile(r"^mkt\.(\d{1,18})\.(\d{1,18})@", re.IGNORECASE)
_MSG_ID = re.compile(r"<([^<>\s]{1,500})>")
_AUTO_SUBJECT = re.compile(
    r"out of (the )?office|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|"
    r"自动回复|自動回覆|自動回復|休假|不在办公室",
    re.IGNORECASE,
)
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster")
#: Labels mail clients put on GB2312 text that is really GBK/GB18030 (a superset).
_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "gb_2312-80": "gb18030",
    "cp936": "gb18030",
    "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949",
    "unicode-1-1-utf-7": "utf-7",
}


# -- parsed mail ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InboundMail:
    """What reply detection needs of one inbound message, decoded."""

    message_id: str
    from_email: str
    subject: str
    text: str
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    date: dt.datetime | None = None
    #: ``auto_reply`` or ``bounce`` when the message is not a person answering.
    skip: str | None = None


@dataclasses.dataclass(frozen=True)
class Match:
    campaign_id: int
    recipient_id: int
    contact_id: int | None
    #: ``headers`` or ``address``
    how: str


@dataclasses.dataclass
class PollReport:
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    auto_replies: int = 0
    bounces: int = 0
    unmatched: int = 0
    unsubscribed: int = 0
    failed: int = 0
    last_uid: int = 0
    reset: bool = False
    skipped: bool = False
    error: str | None = None
    reply_ids: list[int] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _charset(name: str | None) -> str:
    name = (name or "").strip().strip('"').lower()
    if name == "unknown-8bit":
        return "utf-8"
    return _CHARSET_ALIASES.get(name, name or "utf-8")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; undeclared or wrong ones tried as UTF-8, then GB18030."""
    for candidate in (_charset(charset), "utf-8", "gb18030"):
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("utf-8", errors="replace")


def _raw_header_text(value: str) -> str:
    """Undo the parser's surrogate escapes of 8-bit header bytes (Chinese clients send raw GBK)."""
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        return _decode_bytes(value.encode("ascii", "surrogateescape"), None)
    return value


def decode_header(value: Any) -> str:
    """A header as text: RFC 2047 words decoded with GBK-tolerant charsets, folding removed."""
    if value is None:
        return ""
    try:
        if isinstance(value, email.header.Header):  # 8-bit bytes in a header (charset unknown-8bit)
            parts = email.header.decode_header(value)
        else:
            parts = email.header.decode_header(_raw_header_text(str(value)))
    except (ValueError, email.errors.HeaderParseError):
        return " ".join(str(value).split())
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(_decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return " ".join("".join(out).split())


def _message_ids(value: str) -> tuple[str, ...]:
    """Ids in an In-Reply-To/References header, without brackets, in header order."""
    found = _MSG_ID.findall(value or "")
    if not found and value and value.strip() and " " not in value.strip():
        found = [value.strip()]
    return tuple(dict.fromkeys(found))


def _address(value: str) -> str:
    _, addr = email.utils.parseaddr(value or "")
    return addr.strip().lower()[:320]


class _Headers:
    """Case-insensitive header access over a parsed message or a route event's header map."""

    def __init__(self, items: Iterable[tuple[str, Any]]) -> None:
        self._items: list[tuple[str, str]] = [(k.lower(), decode_header(v)) for k, v in items]

    def get(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self._items if k == name), "")

    def has(self, name: str) -> bool:
        name = name.lower()
        return any(k == name for k, _ in self._items)


def skip_reason(headers: _Headers, from_email: str, subject: str, content_type: str = "") -> str | None:
    """``bounce``, ``auto_reply`` or ``None`` for a message a person wrote."""
    local = from_email.partition("@")[0].lower()
    content_type = content_type.lower()
    if local in _BOUNCE_SENDERS or (
        content_type.startswith("multipart/report") and "delivery-status" in content_type
    ):
        return "bounce"
    if content_type.startswith("message/delivery-status"):
        return "bounce"
    auto = headers.get("Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return "auto_reply"
    if headers.has("X-Autoreply") or headers.has("X-Autorespond") or headers.has("X-Autoresponder"):
        return "auto_reply"
    if headers.get("Precedence").strip().lower() in ("bulk", "junk", "list", "auto_reply"):
        return "auto_reply"
    if content_type.startswith("multipart/report"):  # read receipts and other machine reports
        return "auto_reply"
    if _AUTO_SUBJECT.search(subject or ""):
        return "auto_reply"
    return None


# -- text of a reply -----------------------------------------------------------------------------

_QUOTE_MARKERS = re.compile(
    r"^\s*(?:"
    r"-{2,}\s*(?:original message|原始邮件|原始郵件|forwarded message|转发邮件)\s*-{2,}"
    r"|_{8,}\s*$"
    r"|on .{4,200}\bwrote:\s*$"
    r"|在\s*.{4,200}(?:写道|寫道)\s*[:：]?\s*$"
    r"|(?:from|发件人|寄件者)\s*[:：].{1,300}$"
    r")",
    re.IGNORECASE,
)


def trim_quoted(text: str) -> str:
    """The new part of a reply: cut at the first quoted-history marker and drop ``>`` lines.

    Only when something is left — a reply written below the quote keeps everything.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for line in lines:
        if _QUOTE_MARKERS.match(line):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line.rstrip())
    trimmed = "\n".join(kept).strip()
    return trimmed if trimmed else text.strip()


def _html_text(html: str) -> str:
    from .campaigns.rendering import html_to_text

    # Quoted history of web mail (Gmail, QQ, Outlook web) lives in <blockquote>s.
    html = re.sub(r"(?is)<blockquote\b.*?</blockquote>", "", html)
    return html_to_text(html)


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(part.get_payload() or "").encode("utf-8", "surrogateescape")
    return _decode_bytes(payload, part.get_content_charset())


def body_text(message: Message) -> str:
    """The plain part (or the HTML part as text) of a parsed message, history trimmed."""
    plain: str | None = None
    html: str | None = None
    for part in message.walk():
        if part.is_multipart():
            continue
        if (part.get_content_disposition() or "") == "attachment":
            continue
        kind = part.get_content_type()
        if kind == "text/plain" and plain is None:
            plain = _part_text(part)
        elif kind == "text/html" and html is None:
            html = _part_text(part)
    text = plain if plain and plain.strip() else (_html_text(html) if html else "")
    return trim_quoted(text)[:MAX_TEXT_CHARS]


def _date(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _fallback_id(*parts: Any) -> str:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8", "replace")).hexdigest()
    return f"no-id.{digest[:40]}@replies.invalid"


def parse_message(raw: bytes) -> InboundMail:
    """Parse one raw RFC 5322 message (as fetched over IMAP or given as a route's raw message)."""
    message = email.message_from_bytes(raw)
    headers = _Headers(message.items())
    from_email = _address(headers.get("From"))
    subject = headers.get("Subject")[:998]
    ids = _message_ids(headers.get("Message-ID"))
    message_id = ids[0] if ids else _fallback_id(raw)
    return InboundMail(
        message_id=message_id[:500],
        from_email=from_email,
        subject=subject,
        text=body_text(message),
        in_reply_to=_message_ids(headers.get("In-Reply-To")),
        references=_message_ids(headers.get("References")),
        date=_date(headers.get("Date")),
        skip=skip_reason(headers, from_email, subject, message.get("Content-Type", "") or ""),
    )


def _route_headers(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list):
        return [(str(p[0]), p[1]) for p in value if isinstance(p, list | tuple) and len(p) == 2]
    if isinstance(value, str) and value.strip():
        try:
            return _route_headers(json.loads(value))
        except ValueError:
            return []
    return []


def parse_route(fields: Mapping[str, Any]) -> InboundMail:
    """An inbound mail from SendCloud's ``route`` event fields (the raw message when given)."""

    def field(name: str) -> str:
        value = fields.get(name)
        if isinstance(value, list | tuple):
            value = value[0] if value else ""
        return "" if value is None else str(value)

    raw = field("raw_message")
    if raw.strip():
        return parse_message(raw.encode("utf-8", "surrogateescape"))
    headers = _Headers(_route_headers(fields.get("headers")))
    from_email = _address(field("from") or headers.get("From"))
    subject = decode_header(field("subject") or headers.get("Subject"))[:998]
    text = field("text")
    if not text.strip() and field("html").strip():
        text = _html_text(field("html"))
    ids = _message_ids(headers.get("Message-ID"))
    email_id = field("emailId")
    message_id = ids[0] if ids else (f"sc-route.{email_id}" if email_id else "")
    if not message_id:
        message_id = _fallback_id(from_email, subject, text, field("timestamp"))
    references = _message_ids(headers.get("References")) + _message_ids(field("reference"))
    return InboundMail(
        message_id=message_id[:500],
        from_email=from_email,
        subject=subject,
        text=trim_quoted(text)[:MAX_TEXT_CHARS],
        in_reply_to=_message_ids(headers.get("In-Reply-To")),
        references=tuple(dict.fromkeys(references)),
        date=_date(headers.get("Date")),
        skip=skip_reason(headers, from_email, subject, headers.get("Content-Type")),
    )


# -- matching ------------------------------------------------------------------------------------


def _by_our_id(session: Session, workspace_id: int, ref: str) -> Match | None:
    found = _OUR_ID.match(ref)
    if not found:
        return None
    campaign_id, recipient_id = int(found.group(1)), int(found.group(2))
    row = session.execute(
        select(CampaignRecipient.id, CampaignRecipient.campaign_id, CampaignRecipient.contact_id).where(
            CampaignRecipient.id == recipient_id,
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.workspace_id == workspace_id,
        )
    ).first()
    return Match(row.campaign_id, row.id, row.contact_id, "headers") if row is not None else None


def _workspace_campaigns(workspace_id: int, since: dt.datetime | None = None) -> Any:
    query = select(Campaign.id).where(Campaign.workspace_id == workspace_id)
    if since is not None:
        query = query.where((Campaign.completed_at.is_(None)) | (Campaign.completed_at >= since))
    return query.scalar_subquery()


def _provider_prefix(ref: str) -> str | None:
    """The SendCloud ``messageId`` a referenced id carries, when it can be told.

    A Message-ID built from the request's messageId (``<messageId>@host``), or the emailId
    ``<messageId><index>$<address>`` of another address: the sender's own emailId shares it.
    """
    prefix = ref.partition("$")[0].rstrip("0123456789") if "$" in ref else ref.rpartition("@")[0]
    return prefix if len(prefix) >= 8 else None


def _by_provider_id(
    session: Session, workspace_id: int, refs: Sequence[str], from_email: str
) -> Match | None:
    """SendCloud ids: a stored emailId itself, else its ``messageId`` part plus the sender."""
    exact = {
        row.provider_message_id: row
        for row in session.execute(
            select(
                CampaignRecipient.id,
                CampaignRecipient.campaign_id,
                CampaignRecipient.contact_id,
                CampaignRecipient.provider_message_id,
            ).where(
                CampaignRecipient.provider_message_id.in_([r[:255] for r in refs]),
                CampaignRecipient.workspace_id == workspace_id,
            )
        )
    }
    for ref in refs:
        row = exact.get(ref[:255])
        if row is not None:
            return Match(row.campaign_id, row.id, row.contact_id, "headers")
    prefixes = [p for p in (_provider_prefix(ref) for ref in refs) if p]
    if not from_email or not prefixes:
        return None
    # One index lookup per campaign ((campaign_id, email) is unique); prefixes are checked here.
    sent = session.execute(
        select(
            CampaignRecipient.id,
            CampaignRecipient.campaign_id,
            CampaignRecipient.contact_id,
            CampaignRecipient.provider_message_id,
        )
        .where(
            CampaignRecipient.campaign_id.in_(_workspace_campaigns(workspace_id)),
            CampaignRecipient.email == from_email,
            CampaignRecipient.provider_message_id.is_not(None),
        )
        .order_by(CampaignRecipient.id.desc())
    ).all()
    for prefix in prefixes:
        for candidate in sent:
            stored = candidate.provider_message_id or ""
            index, dollar, _ = stored[len(prefix) :].partition("$")
            if stored.startswith(prefix) and dollar and index.isdigit():
                return Match(candidate.campaign_id, candidate.id, candidate.contact_id, "headers")
    return None


def _by_address(
    session: Session, workspace_id: int, from_email: str, *, window_days: int, now: dt.datetime
) -> Match | None:
    if not from_email:
        return None
    since = now - dt.timedelta(days=max(0, window_days))
    row = session.execute(
        select(CampaignRecipient.id, CampaignRecipient.campaign_id, CampaignRecipient.contact_id)
        .where(
            CampaignRecipient.campaign_id.in_(_workspace_campaigns(workspace_id, since)),
            CampaignRecipient.email == from_email,
            CampaignRecipient.sent_at.is_not(None),
            CampaignRecipient.sent_at >= since,
            CampaignRecipient.sent_at <= now,
        )
        .order_by(CampaignRecipient.sent_at.desc(), CampaignRecipient.id.desc())
        .limit(1)
    ).first()
    return Match(row.campaign_id, row.id, row.contact_id, "address") if row is not None else None


def match(
    session: Session,
    workspace_id: int,
    mail: InboundMail,
    *,
    window_days: int = DEFAULT_WINDOW_DAYS,
    now: dt.datetime | None = None,
) -> Match | None:
    """The campaign recipient a reply answers: headers first (In-Reply-To, then References from
    the newest), the sender's address within the window otherwise."""
    now = now or utcnow()
    refs = list(mail.in_reply_to) + [r for r in reversed(mail.references) if r not in mail.in_reply_to]
    refs = refs[:50]
    for ref in refs:
        found = _by_our_id(session, workspace_id, ref)
        if found is not None:
            return found
    if refs:
        found = _by_provider_id(session, workspace_id, refs, mail.from_email)
        if found is not None:
            return found
    return _by_address(session, workspace_id, mail.from_email, window_days=window_days, now=now)


# -- storing -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplyOptions:
    """What to do with a reply (the mailbox settings; defaults for a workspace without one)."""

    tag_name: str = ""
    notify_owner: bool = True
    window_days: int = DEFAULT_WINDOW_DAYS

    @classmethod
    def of(cls, mailbox: ReplyMailbox | None) -> ReplyOptions:
        if mailbox is None:
            return cls()
        return cls(
            tag_name=(mailbox.tag_name or "").strip(),
            notify_owner=bool(mailbox.notify_owner),
            window_days=int(mailbox.match_window_days or DEFAULT_WINDOW_DAYS),
        )


def _key(prefix: str, workspace_id: int, message_id: str) -> str:
    digest = hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:48]
    return f"{prefix}:{workspace_id}:{digest}"


def _directory(directory: Any) -> Any:
    if directory is not None:
        return directory
    from .extension import get_state

    return get_state().directory


def _mailto_unsubscribe(session: Session, workspace_id: int, mail: InboundMail, now: dt.datetime) -> bool:
    """A mail from the ``List-Unsubscribe`` mailto (subject ``unsubscribe-<token>``): unsubscribe.

    Mail clients that only offer the mailto form send it to the reply-to mailbox; its token is
    the recipient's signed unsubscribe token, so nobody can unsubscribe someone else this way.
    """
    from . import tracking
    from .extension import get_state

    found = tracking._MAILTO_SUBJECT.search(mail.subject or "")
    if found is None:
        return False
    settings = get_state().settings
    ids = tracking.unsubscribe_from_subject(settings, mail.subject)
    if ids is None or ids[0] != workspace_id:
        return False
    tracking.unsubscribe(session, settings, found.group(1), via="mailto", now=now)
    return True


def store_reply(
    session: Session,
    workspace_id: int,
    mail: InboundMail,
    *,
    source: str,
    options: ReplyOptions | None = None,
    directory: Any = None,
    now: dt.datetime | None = None,
) -> tuple[str, Reply | None]:
    """Store a reply once and apply its effects.  Does not commit.

    Returns ``(outcome, reply)``: ``stored`` (with the new reply), ``duplicate`` (seen before),
    ``auto_reply``, ``bounce``, ``unmatched`` or ``unsubscribed`` (a ``List-Unsubscribe`` mailto).
    """
    options = options or ReplyOptions()
    now = now or utcnow()
    if _mailto_unsubscribe(session, workspace_id, mail, now):
        return "unsubscribed", None
    if mail.skip:
        return mail.skip, None
    found = match(session, workspace_id, mail, window_days=options.window_days, now=now)
    if found is None:
        return "unmatched", None
    received = mail.date if mail.date is not None and mail.date <= now else now
    values = {
        "workspace_id": workspace_id,
        "campaign_id": found.campaign_id,
        "recipient_id": found.recipient_id,
        "contact_id": found.contact_id,
        "from_email": mail.from_email,
        "subject": mail.subject[:998],
        "text": mail.text,
        "message_id": mail.message_id[:500],
        "in_reply_to": (mail.in_reply_to[0] if mail.in_reply_to else None),
        "source": source[:16],
        "matched_by": found.how,
        "received_at": received,
    }
    make_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    reply_id = session.execute(
        make_insert(Reply)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["workspace_id", "message_id"])
        .returning(Reply.id)
    ).scalar()
    if reply_id is None:
        return "duplicate", None
    reply = session.get(Reply, reply_id)
    events.record(
        session,
        workspace_id=workspace_id,
        type="reply",
        dedupe_key=_key("reply", workspace_id, mail.message_id),
        occurred_at=received,
        campaign_id=found.campaign_id,
        recipient_id=found.recipient_id,
        data={"reply_id": reply_id, "source": source, "matched_by": found.how},
    )
    owner_id = _after_store(session, workspace_id, reply, found, options, directory, now)
    _emit(reply, owner_id)
    return "stored", reply


def _after_store(
    session: Session,
    workspace_id: int,
    reply: Reply,
    found: Match,
    options: ReplyOptions,
    directory: Any,
    now: dt.datetime,
) -> str | None:
    """Tag the contact and notify its owner (each only when configured and a contact is known)."""
    if found.contact_id is None:
        return None
    directory = _directory(directory) if (options.tag_name or options.notify_owner) else None
    if options.tag_name and directory is not None:
        directory.add_tags(session, workspace_id, [found.contact_id], [options.tag_name])
    if not options.notify_owner or directory is None:
        return None
    owner_id = directory.owner_of(session, workspace_id, found.contact_id)
    if not owner_id:
        return None
    events.record(
        session,
        workspace_id=workspace_id,
        type="reply_notification",
        dedupe_key=_key("reply-notify", workspace_id, reply.message_id),
        occurred_at=now,
        campaign_id=found.campaign_id,
        recipient_id=found.recipient_id,
        data={"reply_id": reply.id, "owner_id": str(owner_id), "contact_id": found.contact_id},
    )
    log.info(
        "reply %s from contact %s (campaign %s): owner %s notified",
        reply.id,
        found.contact_id,
        found.campaign_id,
        owner_id,
    )
    return str(owner_id)


def _emit(reply: Reply, owner_id: str | None) -> None:
    from flask import current_app, has_app_context

    sender = current_app._get_current_object() if has_app_context() else None
    reply_received.send(
        sender,
        reply_id=reply.id,
        workspace_id=reply.workspace_id,
        campaign_id=reply.campaign_id,
        recipient_id=reply.recipient_id,
        contact_id=reply.contact_id,
        owner_id=owner_id,
        from_email=reply.from_email,
        subject=reply.subject,
        source=reply.source,
    )


def handle_route(
    session: Session,
    workspace_id: int,
    fields: Mapping[str, Any] | Any = None,
    *,
    settings: Any = None,
    directory: Any = None,
    now: dt.datetime | None = None,
) -> Reply | None:
    """A SendCloud ``route`` event (its form fields, or a parsed event with ``.raw``): the reply
    it is, stored and applied, or ``None`` (auto-reply, bounce, unmatched or already stored).

    Does not commit (the webhook commits with its event).  ``settings`` is accepted for the
    webhook's call and unused.
    """
    if fields is not None and not isinstance(fields, Mapping):
        fields = getattr(fields, "raw", None) or {}
    mailbox = get_mailbox(session, workspace_id)
    outcome, reply = store_reply(
        session,
        workspace_id,
        parse_route(fields or {}),
        source="route",
        options=ReplyOptions.of(mailbox),
        directory=directory,
        now=now,
    )
    log.info("route mail for workspace %s: %s", workspace_id, outcome)
    return reply


# -- the mailbox ---------------------------------------------------------------------------------


def get_mailbox(session: Session, workspace_id: int) -> ReplyMailbox | None:
    return session.scalar(select(ReplyMailbox).where(ReplyMailbox.workspace_id == workspace_id))


def save_mailbox(
    session: Session, workspace_id: int, data: Mapping[str, Any], *, secrets: Any
) -> ReplyMailbox:
    """Create or update the workspace's reply mailbox from loaded form data.  Does not commit.

    An empty password keeps the stored one.  Changing the server, user or folder starts reading
    from the beginning of the new folder (UIDs of another folder mean nothing here).
    """
    mailbox = get_mailbox(session, workspace_id)
    password = data.get("password") or None
    if mailbox is None:
        if not password:
            raise InvalidInput(_("Enter the mailbox password."), field="password")
        mailbox = ReplyMailbox(workspace_id=workspace_id, password_encrypted="", last_uid=0)
        session.add(mailbox)
    moved = (
        mailbox.imap_host != data["host"]
        or mailbox.username != data["username"]
        or (mailbox.folder or "INBOX") != data["folder"]
        or mailbox.imap_port != data["port"]
    )
    mailbox.imap_host = data["host"]
    mailbox.imap_port = data["port"]
    mailbox.security = data["security"]
    mailbox.username = data["username"]
    mailbox.folder = data["folder"]
    mailbox.tag_name = data.get("tag_name") or ""
    mailbox.notify_owner = bool(data.get("notify_owner"))
    mailbox.match_window_days = data["match_window_days"]
    mailbox.enabled = bool(data.get("enabled", True))
    if password:
        mailbox.password_encrypted = secrets.encrypt(password)
    if moved:
        mailbox.uidvalidity = None
        mailbox.last_uid = 0
    mailbox.last_error = None
    session.flush()
    return mailbox


def delete_mailbox(session: Session, workspace_id: int) -> None:
    mailbox = get_mailbox(session, workspace_id)
    if mailbox is None:
        raise NotFound("reply mailbox")
    session.delete(mailbox)
    session.flush()


def _connect(mailbox: ReplyMailbox, secrets: Any, *, timeout: float = IMAP_TIMEOUT) -> imaplib.IMAP4:
    """A logged-in IMAP connection.  Server certificates are verified (system trust store)."""
    host, port = mailbox.imap_host, int(mailbox.imap_port)
    context = ssl.create_default_context()
    if mailbox.security == "ssl":
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
    else:
        conn = imaplib.IMAP4(host, port, timeout=timeout)
        if mailbox.security == "starttls":
            conn.starttls(context)
    try:
        conn.login(mailbox.username, secrets.decrypt(mailbox.password_encrypted))
    except Exception:
        _logout(conn)
        raise
    return conn


def _logout(conn: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        conn.logout()


def _quote_folder(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error_text(exc: BaseException) -> str:
    """A readable failure without secrets (imaplib errors carry the server's answer only)."""
    if isinstance(exc, imaplib.IMAP4.error):
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"IMAP: {detail}"[:500]
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS: {exc}"[:500]
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"[:500]
    return f"{type(exc).__name__}"


def _select(conn: imaplib.IMAP4, folder: str) -> tuple[int, int]:
    """Open the folder read-only (EXAMINE); returns ``(uidvalidity, message count)``."""
    typ, data = conn.select(_quote_folder(folder), readonly=True)
    if typ != "OK":
        raise imaplib.IMAP4.error(f"cannot open folder {folder}")
    _, validity = conn.response("UIDVALIDITY")
    if not validity or validity[0] is None:
        raise imaplib.IMAP4.error("server sent no UIDVALIDITY")
    return int(validity[0]), int((data[0] or b"0").decode() or 0)


def check_connection(mailbox: ReplyMailbox, *, secrets: Any) -> tuple[bool, str]:
    """Log in and open the folder; ``(True, "N messages in INBOX")`` or ``(False, why)``."""
    try:
        conn = _connect(mailbox, secrets)
    except Exception as exc:
        return False, _error_text(exc)
    try:
        _, count = _select(conn, mailbox.folder or "INBOX")
        return True, f"{count} messages in {mailbox.folder or 'INBOX'}"
    except Exception as exc:
        return False, _error_text(exc)
    finally:
        _logout(conn)


_UID = re.compile(rb"\bUID (\d+)")


def _fetch(conn: imaplib.IMAP4, uids: Sequence[int]) -> list[tuple[int, bytes]]:
    typ, data = conn.uid("FETCH", ",".join(map(str, uids)), f"(UID BODY.PEEK[]<0.{MAX_MESSAGE_BYTES}>)")
    if typ != "OK":
        raise imaplib.IMAP4.error("FETCH failed")
    out: list[tuple[int, bytes]] = []
    for item in data:
        if isinstance(item, tuple) and len(item) >= 2:
            found = _UID.search(item[0])
            if found:
                out.append((int(found.group(1)), item[1]))
    out.sort()
    return out


def poll(
    session: Session,
    workspace_id: int,
    *,
    secrets: Any,
    now: dt.datetime | None = None,
    batch: int = DEFAULT_BATCH,
    directory: Any = None,
) -> PollReport:
    """Read new messages of the workspace's mailbox, store the replies among them.  Commits.

    Each message is committed with the new ``last_uid``, so an interrupted poll resumes after
    the last message handled; a message that cannot be handled is logged and passed over.
    """
    report = PollReport()
    mailbox = get_mailbox(session, workspace_id)
    if mailbox is None:
        raise NotFound("reply mailbox")
    if not mailbox.enabled:
        report.skipped = True
        return report
    now = now or utcnow()
    options = ReplyOptions.of(mailbox)
    mailbox_id = mailbox.id
    try:
        conn = _connect(mailbox, secrets)
    except Exception as exc:
        return _failed(session, mailbox_id, report, exc, now)
    try:
        validity, _ = _select(conn, mailbox.folder or "INBOX")
        if mailbox.uidvalidity != validity:
            report.reset = mailbox.uidvalidity is not None
            mailbox.uidvalidity = validity
            mailbox.last_uid = 0
            session.commit()
        last_uid = int(mailbox.last_uid or 0)
        typ, data = conn.uid("SEARCH", None, f"UID {last_uid + 1}:*")
        if typ != "OK":
            raise imaplib.IMAP4.error("SEARCH failed")
        # "N:*" always names the newest message, even when its UID is below N.
        uids = sorted(u for u in (int(x) for x in b" ".join(data or []).split()) if u > last_uid)[:batch]
        for start in range(0, len(uids), 10):
            for uid, raw in _fetch(conn, uids[start : start + 10]):
                report.fetched += 1
                _handle(session, workspace_id, mailbox_id, uid, raw, options, directory, now, report)
        mailbox = session.get(ReplyMailbox, mailbox_id)
        report.last_uid = int(mailbox.last_uid or 0)
        mailbox.last_polled_at = now
        mailbox.last_error = None
        session.commit()
    except Exception as exc:
        session.rollback()
        return _failed(session, mailbox_id, report, exc, now)
    finally:
        _logout(conn)
    log.info(
        "reply mailbox of workspace %s: %s fetched, %s stored, %s duplicate, %s auto, %s bounce, "
        "%s unmatched",
        workspace_id,
        report.fetched,
        report.stored,
        report.duplicates,
        report.auto_replies,
        report.bounces,
        report.unmatched,
    )
    return report


def _handle(
    session: Session,
    workspace_id: int,
    mailbox_id: int,
    uid: int,
    raw: bytes,
    options: ReplyOptions,
    directory: Any,
    now: dt.datetime,
    report: PollReport,
) -> None:
    try:
        outcome, reply = store_reply(
            session,
            workspace_id,
            parse_message(raw),
            source="imap",
            options=options,
            directory=directory,
            now=now,
        )
    except Exception:  # one broken message must not stop the mailbox
        session.rollback()
        log.exception("reply mailbox of workspace %s: message UID %s could not be handled", workspace_id, uid)
        report.failed += 1
        outcome, reply = "failed", None
    if outcome == "stored" and reply is not None:
        report.stored += 1
        report.reply_ids.append(reply.id)
    elif outcome == "duplicate":
        report.duplicates += 1
    elif outcome == "auto_reply":
        report.auto_replies += 1
    elif outcome == "bounce":
        report.bounces += 1
    elif outcome == "unmatched":
        report.unmatched += 1
    elif outcome == "unsubscribed":
        report.unsubscribed += 1
    mailbox = session.get(ReplyMailbox, mailbox_id)
    if mailbox is not None and uid > int(mailbox.last_uid or 0):
        mailbox.last_uid = uid
    session.commit()


def _failed(
    session: Session, mailbox_id: int, report: PollReport, exc: BaseException, now: dt.datetime
) -> PollReport:
    report.error = _error_text(exc)
    mailbox = session.get(ReplyMailbox, mailbox_id)
    if mailbox is not None:
        mailbox.last_error = report.error
        mailbox.last_polled_at = now
        session.commit()
    log.warning("reply mailbox %s: %s", mailbox_id, report.error)
    return report


def poll_all(
    session: Session,
    *,
    secrets: Any,
    now: dt.datetime | None = None,
    every: dt.timedelta = dt.timedelta(minutes=DEFAULT_POLL_MINUTES),
    directory: Any = None,
) -> dict[int, PollReport]:
    """The scheduler's job: poll every enabled mailbox not polled within ``every``.  Commits.

    Never raises: a failing mailbox (or database hiccup) is logged and the scheduler's tick goes on.
    """
    now = now or utcnow()
    reports: dict[int, PollReport] = {}
    try:
        due = (
            session.execute(
                select(ReplyMailbox.workspace_id).where(
                    ReplyMailbox.enabled.is_(True),
                    (ReplyMailbox.last_polled_at.is_(None)) | (ReplyMailbox.last_polled_at <= now - every),
                )
            )
            .scalars()
            .all()
        )
        session.commit()
    except Exception:
        session.rollback()
        log.exception("reply mailboxes: could not list the mailboxes to read")
        return reports
    for workspace_id in due:
        try:
            reports[workspace_id] = poll(session, workspace_id, secrets=secrets, now=now, directory=directory)
        except Exception:  # the next mailbox still gets its turn
            session.rollback()
            log.exception("reply mailbox of workspace %s: poll failed", workspace_id)
    return reports


# -- reading replies -----------------------------------------------------------------------------

SORTS = {"received_at": Reply.received_at, "from": Reply.from_email, "subject": Reply.subject}


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[Reply]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def list_replies(
    session: Session,
    workspace_id: int,
    campaign_id: int,
    *,
    q: str | None = None,
    sort: str = "received_at",
    order: str = "desc",
    page: int = 1,
    per_page: int = 50,
) -> Page:
    """A campaign's replies, searchable by sender, subject and text."""
    from sqlalchemy import func

    query = select(Reply).where(Reply.workspace_id == workspace_id, Reply.campaign_id == campaign_id)
    if q:
        needle = q.strip().lower()
        query = query.where(
            func.lower(Reply.from_email).contains(needle, autoescape=True)
            | func.lower(Reply.subject).contains(needle, autoescape=True)
            | func.lower(Reply.text).contains(needle, autoescape=True)
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    column = SORTS.get(sort, Reply.received_at)
    ordering = column.asc() if order == "asc" else column.desc()
    page = max(1, page)
    items = session.scalars(
        query.order_by(ordering, Reply.id.desc()).limit(per_page).offset((page - 1) * per_page)
    ).all()
    return Page(items=list(items), total=int(total), page=page, per_page=per_page)


def contact_replies(session: Session, workspace_id: int, contact_id: int, *, limit: int = 50) -> list[Reply]:
    """A contact's replies, newest first (the contact's history in the CRM)."""
    return list(
        session.scalars(
            select(Reply)
            .where(Reply.workspace_id == workspace_id, Reply.contact_id == contact_id)
            .order_by(Reply.received_at.desc(), Reply.id.desc())
            .limit(limit)
        )
    )


__all__ = [
    "InboundMail",
    "Match",
    "PollReport",
    "ReplyOptions",
    "check_connection",
    "contact_replies",
    "decode_header",
    "delete_mailbox",
    "get_mailbox",
    "handle_route",
    "list_replies",
    "match",
    "parse_message",
    "parse_route",
    "poll",
    "poll_all",
    "reply_received",
    "save_mailbox",
    "skip_reason",
    "store_reply",
    "trim_quoted",
]
