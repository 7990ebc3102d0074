"""Trigger (transactional) mail: one templated mail for the host CRM, sent at once, exactly once.

Order confirmations, quotes and verification codes cannot wait behind a campaign, so this path
shares nothing with the campaign runner: no queue, no batch, and a ledger of its own (the quota's
``trigger`` channel, fed by the admin's trigger share).  What it guarantees:

* **One mail per idempotency key.**  The row (unique per workspace and key) is committed before
  anything is sent.  A second call with the same key, also one racing the first from another
  thread or process, gets the stored row back and sends nothing: the database's unique constraint
  decides who sends.
* **Retries cannot duplicate.**  Temporary failures (``ProviderError.retryable``, SMTP 4xx) are
  retried a few times with a short backoff, always with the same provider key, derived from the
  workspace and the client's key: SendCloud's ``sendRequestId`` makes a repeat of an accepted
  request answer "duplicate" (which we read as "sent"), and the SMTP Message-ID stays the same.
  The client's key is not passed on verbatim because two workspaces may use the same SendCloud
  account and the same key.
* **Quota first.**  One mail is reserved on the trigger ledger before the provider is called and
  settled with the outcome; when the gate says no, the mail is ``failed`` with the reason, and
  nothing was sent.

Statuses: ``queued`` (stored, not yet tried), ``sending``, ``sent``, ``failed`` (temporary trouble
outlived the retries, or the quota/account refused), ``rejected`` (the server refused this
recipient for good), ``unknown`` (the SMTP connection dropped after the message was written: it
may have arrived, so it is not resent).

This module commits: the row before sending, each attempt, and the outcome with the quota.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import counters, quota
from .addresses import normalize_email
from .channels import ProviderFactory
from .config import Settings
from .crypto import SecretBox
from .directory import ContactRecord
from .errors import (
    ConfigurationError,
    DuplicateRequest,
    InvalidInput,
    MarketingError,
    NotFound,
    ProviderError,
    ProviderQuotaExceeded,
)
from .i18n import _
from .models import ProviderAccount, Sender, Template, TriggerMail, utcnow
from .providers.base import BatchMessage, Provider, Recipient, SendResult

log = logging.getLogger(__name__)

STATUSES = ("queued", "sending", "sent", "failed", "rejected", "unknown")
MAX_KEY_LENGTH = 128
MAX_VARIABLES = 100
MAX_VARIABLE_LENGTH = 10_000
#: Seconds to wait before the 2nd, 3rd and 4th attempt (4 attempts in all, under 2 s of waiting).
RETRY_DELAYS = (0.2, 0.5, 1.0)


@dataclasses.dataclass
class TriggerContext:
    """What sending needs besides the database: configuration, secrets and the provider factory."""

    settings: Settings
    secrets: SecretBox
    provider_factory: ProviderFactory
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], dt.datetime] = utcnow
    retry_delays: tuple[float, ...] = RETRY_DELAYS


def context_from_app(app: Any) -> TriggerContext:
    """The context of a Flask app (the provider factory a host or a test registered, if any)."""
    from .channels import provider_factory

    state = app.extensions["marketing"]
    factory = provider_factory(app.extensions, secrets=state.secrets, settings=state.settings)
    return TriggerContext(settings=state.settings, secrets=state.secrets, provider_factory=factory)


# --------------------------------------------------------------------------- the calls


def send_trigger_mail(
    session: Session,
    workspace_id: int,
    *,
    to: str,
    idempotency_key: str,
    template_id: int | None = None,
    subject: str | None = None,
    html: str | None = None,
    text: str | None = None,
    variables: Mapping[str, Any] | None = None,
    account_id: int | None = None,
    sender_id: int | None = None,
    created_by: str | None = None,
    ctx: TriggerContext | None = None,
) -> TriggerMail:
    """Send one mail now (or return the mail already made for this key). See the module doc."""
    mail, _created = submit(
        session,
        workspace_id,
        to=to,
        idempotency_key=idempotency_key,
        template_id=template_id,
        subject=subject,
        html=html,
        text=text,
        variables=variables,
        account_id=account_id,
        sender_id=sender_id,
        created_by=created_by,
        ctx=ctx,
    )
    return mail


def submit(
    session: Session,
    workspace_id: int,
    *,
    to: str,
    idempotency_key: str,
    template_id: int | None = None,
    subject: str | None = None,
    html: str | None = None,
    text: str | None = None,
    variables: Mapping[str, Any] | None = None,
    account_id: int | None = None,
    sender_id: int | None = None,
    created_by: str | None = None,
    ctx: TriggerContext | None = None,
) -> tuple[TriggerMail, bool]:
    """:func:`send_trigger_mail`, plus whether this call created the mail (``False``: a repeat)."""
    key = check_key(idempotency_key)
    existing = find_by_key(session, workspace_id, key)
    if existing is not None:
        return _repeat(existing, to), False
    if ctx is None:
        from flask import current_app

        ctx = context_from_app(current_app)
    address = _check_address(to)
    values_in = _check_variables(variables)
    account = _pick_account(session, workspace_id, account_id)
    sender = _pick_sender(session, workspace_id, account, sender_id)
    template = _content(session, workspace_id, template_id, subject, html, text)
    content, values = _render(template, sender, address, values_in, ctx.settings, ctx.clock())

    from .campaigns.rendering import apply_values

    mail = TriggerMail(
        workspace_id=workspace_id,
        idempotency_key=key,
        template_id=template_id,
        account_id=account.id,
        to_email=address,
        subject=apply_values(content.subject, values)[:500],
        variables=values_in,
        status="queued",
        attempts=0,
        created_by=created_by,
        created_at=ctx.clock(),
    )
    session.add(mail)
    try:
        session.commit()
    except IntegrityError:
        # Another call with the same key committed first: its mail is the mail.
        session.rollback()
        existing = find_by_key(session, workspace_id, key)
        if existing is None:
            raise
        return _repeat(existing, to), False
    batch = BatchMessage(
        from_address=_from_address(account, sender),
        from_name=(sender.from_name if sender is not None else "") or "",
        subject=content.subject,
        html=content.html,
        text=content.text or None,
        reply_to=(sender.reply_to if sender is not None else None) or None,
        recipients=[Recipient(address, values, message_id=_message_id(workspace_id, key, account, sender))],
        idempotency_key=provider_key(workspace_id, key),
        kind="trigger",
    )
    _deliver(session, mail, account, batch, ctx)
    return mail, True


def provider_key(workspace_id: int, key: str) -> str:
    """The provider's idempotency key (SendCloud ``sendRequestId``) of a client key: stable, ≤128."""
    digest = hashlib.sha256(f"{workspace_id}\x00{key}".encode()).hexdigest()[:40]
    return f"trigger-{workspace_id}-{digest}"


def find_by_key(session: Session, workspace_id: int, key: str) -> TriggerMail | None:
    return session.scalar(
        select(TriggerMail).where(
            TriggerMail.workspace_id == workspace_id, TriggerMail.idempotency_key == key
        )
    )


def get_mail(session: Session, workspace_id: int, mail_id: int) -> TriggerMail:
    mail = session.scalar(
        select(TriggerMail).where(TriggerMail.id == mail_id, TriggerMail.workspace_id == workspace_id)
    )
    if mail is None:
        raise NotFound(f"trigger mail {mail_id}")
    return mail


SORTS = {
    "created_at": TriggerMail.created_at,
    "to": TriggerMail.to_email,
    "status": TriggerMail.status,
    "sent_at": TriggerMail.sent_at,
    "attempts": TriggerMail.attempts,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    items: list[TriggerMail]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def list_mails(
    session: Session,
    workspace_id: int,
    *,
    q: str | None = None,
    status: str | None = None,
    to: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    sort: str = "created_at",
    order: str = "desc",
    page: int = 1,
    per_page: int = 50,
) -> Page:
    """The log, newest first by default; ``q`` matches the recipient, the key or the subject."""
    where = [TriggerMail.workspace_id == workspace_id]
    if q:
        needle = f"%{_escape_like(q.strip().lower())}%"
        where.append(
            or_(
                func.lower(TriggerMail.to_email).like(needle, escape="\\"),
                func.lower(TriggerMail.idempotency_key).like(needle, escape="\\"),
                func.lower(TriggerMail.subject).like(needle, escape="\\"),
            )
        )
    if status:
        where.append(TriggerMail.status == status)
    if to:
        where.append(func.lower(TriggerMail.to_email) == to.strip().lower())
    if since is not None:
        where.append(TriggerMail.created_at >= since)
    if until is not None:
        where.append(TriggerMail.created_at < until)
    total = session.scalar(select(func.count()).select_from(TriggerMail).where(*where)) or 0
    column = SORTS.get(sort, TriggerMail.created_at)
    ordering = column.asc() if order == "asc" else column.desc()
    tie = TriggerMail.id.asc() if order == "asc" else TriggerMail.id.desc()
    pages = max(1, math.ceil(total / per_page))
    page = max(1, min(page, pages))
    items = list(
        session.scalars(
            select(TriggerMail)
            .where(*where)
            .order_by(ordering, tie)
            .offset((page - 1) * per_page)
            .limit(per_page)
        )
    )
    return Page(items=items, total=total, page=page, per_page=per_page)


def status_counts(session: Session, workspace_id: int) -> dict[str, int]:
    rows = session.execute(
        select(TriggerMail.status, func.count())
        .where(TriggerMail.workspace_id == workspace_id)
        .group_by(TriggerMail.status)
    ).all()
    return dict(rows)


# --------------------------------------------------------------------------- input


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidInput(_("An idempotency key is required."), field="idempotency_key")
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            _("The idempotency key must be at most %(max)s characters.", max=MAX_KEY_LENGTH),
            field="idempotency_key",
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise InvalidInput(
            _("The idempotency key cannot contain control characters."), field="idempotency_key"
        )
    return key


def _repeat(mail: TriggerMail, to: str) -> TriggerMail:
    """The stored mail for a repeated key, unless the key is being reused for another recipient."""
    try:
        same = normalize_email(to) == mail.to_email
    except (InvalidInput, ValueError):
        same = False
    if not same:
        raise InvalidInput(
            _("This idempotency key was already used for a mail to another recipient."),
            field="idempotency_key",
        )
    return mail


def _check_address(to: Any) -> str:
    if not isinstance(to, str) or not to.strip():
        raise InvalidInput(_("The recipient address is required."), field="to")
    try:
        address = normalize_email(to)
    except (InvalidInput, ValueError):
        address = None
    if not address:
        raise InvalidInput(
            _("%(address)s is not a valid email address.", address=to.strip()[:320]), field="to"
        )
    return address


def _check_variables(variables: Mapping[str, Any] | None) -> dict[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, Mapping):
        raise InvalidInput(_("Variables must be an object of names and values."), field="variables")
    if len(variables) > MAX_VARIABLES:
        raise InvalidInput(_("At most %(max)s variables.", max=MAX_VARIABLES), field="variables")
    clean: dict[str, Any] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise InvalidInput(_("Variable names are 1 to 64 characters."), field="variables")
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            raise InvalidInput(
                _("The variable %(name)s must be a text or a number.", name=name), field="variables"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(
                _("The variable %(name)s must be a finite number.", name=name), field="variables"
            )
        if value is not None and len(str(value)) > MAX_VARIABLE_LENGTH:
            raise InvalidInput(_("The variable %(name)s is too long.", name=name), field="variables")
        clean[name.strip()] = value
    return clean


def _pick_account(session: Session, workspace_id: int, account_id: int | None) -> ProviderAccount:
    if account_id is not None:
        account = session.scalar(
            select(ProviderAccount).where(
                ProviderAccount.id == account_id, ProviderAccount.workspace_id == workspace_id
            )
        )
        if account is None:
            raise InvalidInput(_("There is no sending account %(id)s.", id=account_id), field="account_id")
        if account.status != "active":
            raise InvalidInput(
                _("The account %(name)s is not active.", name=account.name), field="account_id"
            )
        return account
    # Default: the workspace's SendCloud account (trigger API_USER), else its first SMTP account.
    account = session.scalar(
        select(ProviderAccount)
        .where(ProviderAccount.workspace_id == workspace_id, ProviderAccount.status == "active")
        .order_by((ProviderAccount.kind == "sendcloud").desc(), ProviderAccount.id)
        .limit(1)
    )
    if account is None:
        raise InvalidInput(
            _("No sending account: finish the setup (SendCloud) or add an SMTP account first."),
            field="account_id",
        )
    return account


def _pick_sender(
    session: Session, workspace_id: int, account: ProviderAccount, sender_id: int | None
) -> Sender | None:
    if sender_id is not None:
        sender = session.scalar(
            select(Sender).where(Sender.id == sender_id, Sender.workspace_id == workspace_id)
        )
        if sender is None:
            raise InvalidInput(_("There is no sender %(id)s.", id=sender_id), field="sender_id")
        return sender
    sender = session.scalar(
        select(Sender)
        .where(Sender.workspace_id == workspace_id)
        .order_by(Sender.is_default.desc(), Sender.id)
        .limit(1)
    )
    if sender is None and account.kind == "sendcloud":
        raise InvalidInput(_("Add a sender address in the setup before sending mail."), field="sender_id")
    return sender


def _from_address(account: ProviderAccount, sender: Sender | None) -> str:
    """SMTP servers accept only their own mailbox as sender; SendCloud a sender of the domain."""
    if account.kind == "smtp":
        return account.from_address or account.smtp_username or ""
    assert sender is not None
    return sender.from_address


def _message_id(workspace_id: int, key: str, account: ProviderAccount, sender: Sender | None) -> str:
    """A Message-ID fixed by the key, so a resend of the same mail carries the same id."""
    domain = _from_address(account, sender).rpartition("@")[2] or "localhost"
    return f"<{provider_key(workspace_id, key)}@{domain}>"


def _content(
    session: Session,
    workspace_id: int,
    template_id: int | None,
    subject: str | None,
    html: str | None,
    text: str | None,
) -> Template:
    """The stored template, or an unsaved one made of the inline subject and body."""
    if template_id is not None:
        template = session.scalar(
            select(Template).where(Template.id == template_id, Template.workspace_id == workspace_id)
        )
        if template is None:
            raise InvalidInput(_("There is no template %(id)s.", id=template_id), field="template_id")
        if subject:
            # The caller may override the stored subject (e.g. with an order number).
            template = Template(subject=subject, html=template.html, text=template.text, name=template.name)
        return template
    if not subject or not subject.strip():
        raise InvalidInput(_("Give a template_id, or a subject and html."), field="subject")
    if not (html and html.strip()) and not (text and text.strip()):
        raise InvalidInput(_("Give a template_id, or a subject and html."), field="html")
    return Template(name="trigger", subject=subject, html=html or "", text=text or None)


def _render(
    template: Template,
    sender: Sender | None,
    address: str,
    variables: Mapping[str, Any],
    settings: Settings,
    now: dt.datetime,
):
    """Compile the content and the values of its placeholders; missing variables are named."""
    from .campaigns import rendering

    content = rendering.compile_content(
        template,
        sender=sender,
        company_name="",
        postal_address="",
        tracking=False,
        unsubscribe=False,  # transactional mail: no unsubscribe link is added
    )
    by_key: dict[str, Any] = {}
    for name, value in variables.items():
        key = rendering.canonical_name(name)
        by_key[key.removeprefix(rendering.CUSTOM_PREFIX)] = value
    contact = ContactRecord(
        id=0,
        email=address,
        name=_opt(by_key.get("name")),
        company=_opt(by_key.get("company")),
        country=_opt(by_key.get("country")),
        owner_id=None,
        custom=by_key,
    )
    missing = sorted(
        {
            binding.key
            for binding in content.placeholders.values()
            if binding.source in ("contact", "custom")
            and not binding.fallback
            and (by_key.get(binding.key) is None or str(by_key.get(binding.key)).strip() == "")
        }
    )
    if missing:
        raise InvalidInput(
            _("Values are missing for the variables: %(names)s.", names=", ".join(missing)), field="variables"
        )
    local_now = now.astimezone(ZoneInfo(settings.default_timezone))
    values = rendering.recipient_values(content, contact, email=address, unsubscribe_url="", now=local_now)
    return content, values


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --------------------------------------------------------------------------- sending


def _deliver(
    session: Session, mail: TriggerMail, account: ProviderAccount, batch: BatchMessage, ctx: TriggerContext
) -> None:
    workspace_id = mail.workspace_id
    try:
        provider = ctx.provider_factory(account, "trigger")
    except (ConfigurationError, ProviderError, InvalidInput) as exc:
        _finish(
            session,
            mail,
            "failed",
            error=_("The account %(name)s cannot send: %(error)s", name=account.name, error=exc),
        )
        return
    try:
        decision = _reserve(session, workspace_id, account, provider, ctx)
        if isinstance(decision, quota.Blocked):
            _finish(session, mail, "failed", error=_blocked_text(decision))
            return
        grant = decision
        try:
            status, message_id, error, answered = _send_with_retries(session, mail, provider, batch, ctx)
        except BaseException:
            session.rollback()
            quota.give_back(session, grant)
            mail.status = "failed"
            mail.error = _("Sending stopped by an unexpected error; nothing is known to have been sent.")
            session.commit()
            raise
        quota.settle(session, grant, 1 if status in ("sent", "unknown") else 0)
        _finish(session, mail, status, error=error, message_id=message_id, answered=answered)
    finally:
        try:
            provider.close()
        except Exception:
            log.debug("closing the provider after trigger mail %s failed", mail.id, exc_info=True)


def _reserve(
    session: Session, workspace_id: int, account: ProviderAccount, provider: Provider, ctx: TriggerContext
) -> quota.Grant | quota.Blocked:
    """One mail on the trigger ledger; an account never synced is synced once, right now."""
    decision = quota.reserve_for_send(
        session,
        workspace_id=workspace_id,
        account=account,
        channel="trigger",
        n=1,
        settings=ctx.settings,
        now=ctx.clock(),
    )
    if isinstance(decision, quota.Blocked) and decision.reason == "not_synced":
        from . import quota_sync

        for attempt in range(len(ctx.retry_delays) + 1):
            try:
                quota_sync.sync_account(session, workspace_id, account, provider, now=ctx.clock())
                break
            except MarketingError as exc:
                session.rollback()
                if isinstance(exc, ProviderError) and exc.retryable and attempt < len(ctx.retry_delays):
                    ctx.sleep(ctx.retry_delays[attempt])
                    continue
                return quota.Blocked("not_synced", str(exc), decision.retry_at)
        decision = quota.reserve_for_send(
            session,
            workspace_id=workspace_id,
            account=account,
            channel="trigger",
            n=1,
            settings=ctx.settings,
            now=ctx.clock(),
        )
    return decision


def _blocked_text(blocked: quota.Blocked) -> str:
    """The error stored on the trigger mail (shown in its list): every reason the gate answers has
    its own sentence, and a reason added to the gate later reads generically, never as a raw code."""
    texts = {
        "quota": _(
            "Today's quota for trigger mail is used up; it returns at 00:00 (Beijing time). Nothing was sent."
        ),
        "balance": _("The account balance is too low to send this mail. Nothing was sent."),
        "cap": _("The daily sending allowance is used up. Nothing was sent."),
        "not_synced": _("The account's quota could not be read from the provider. Nothing was sent."),
    }
    text = texts.get(blocked.reason) or _("Sending is blocked for now. Nothing was sent.")
    return f"{text} {blocked.detail}".strip()


def _send_with_retries(
    session: Session, mail: TriggerMail, provider: Provider, batch: BatchMessage, ctx: TriggerContext
) -> tuple[str, str | None, str | None, bool]:
    """(status, provider message id, error, answered) after at most ``1 + len(retry_delays)``
    attempts; ``answered``: the provider gave this mail a final answer (accepted, refused or
    unknown), as campaigns count a recipient "submitted" (a refused request, a quota answer or
    a message refused before sending is not)."""
    attempts = 1 + len(ctx.retry_delays)
    last_error: str | None = None
    for attempt in range(1, attempts + 1):
        mail.status = "sending"
        mail.attempts = attempt
        session.commit()
        retry = attempt < attempts
        try:
            result: SendResult = provider.send_one(batch)
        except DuplicateRequest:
            # The provider already accepted this key (an earlier attempt whose answer we lost).
            return "sent", None, None, True
        except ProviderQuotaExceeded as exc:
            return (
                "failed",
                None,
                _("The provider refused: daily quota or balance used up (%(error)s).", error=exc),
                False,
            )
        except ProviderError as exc:
            last_error = str(exc)
            log.info(
                "trigger mail %s: attempt %s failed (%s)",
                mail.id,
                attempt,
                "retryable" if exc.retryable else "final",
            )
            if exc.retryable and retry:
                ctx.sleep(ctx.retry_delays[attempt - 1])
                continue
            return "failed", None, last_error, False
        except InvalidInput as exc:
            return "rejected", None, str(exc), False
        if result.status == "accepted":
            return "sent", result.provider_message_id, None, True
        if result.status == "rejected":
            return "rejected", result.provider_message_id, result.error, True
        if result.status == "unknown":
            return "unknown", result.provider_message_id, result.error, True
        last_error = result.error  # "failed": a temporary refusal (SMTP 4xx)
        if retry:
            ctx.sleep(ctx.retry_delays[attempt - 1])
            continue
        return "failed", result.provider_message_id, last_error, True
    return "failed", None, last_error, False  # pragma: no cover - the loop always returns


def _finish(
    session: Session,
    mail: TriggerMail,
    status: str,
    *,
    error: str | None = None,
    message_id: str | None = None,
    answered: bool = False,
) -> None:
    """Store a mail's outcome; one the provider answered counts in the statistics (campaign 0)."""
    mail.status = status
    mail.error = str(error)[:2000] if error else None
    if message_id:
        mail.provider_message_id = message_id[:255]
    if status == "sent":
        mail.sent_at = utcnow()
    if answered:
        counters.count_outside_campaigns(session, mail.workspace_id, mail.to_email, accepted=status == "sent")
    session.commit()
    log.info("trigger mail %s: %s after %s attempt(s)", mail.id, status, mail.attempts)


__all__ = [
    "STATUSES",
    "Page",
    "TriggerContext",
    "check_key",
    "context_from_app",
    "find_by_key",
    "get_mail",
    "list_mails",
    "provider_key",
    "send_trigger_mail",
    "status_counts",
    "submit",
]
