"""Provider webhooks: which workspace a webhook URL belongs to, verification, and storing each
event exactly once.

The webhook URL carries the workspace id inside a signed token (no expiry: the URL lives as long
as the binding), so a post can only ever write into the workspace whose URL it was sent to.
SendCloud retries a delivery until it gets HTTP 200, so a repeat of an event we already stored
is answered like the first one and changes nothing.  Storing and applying an event is
:func:`plugin.events.record`'s job; this module finds the campaign recipient an event is about
(provider email id first, then our ``SC-Custom-campaign`` header plus the address).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import events
from .config import Settings
from .crypto import SecretBox
from .errors import NotFound, WebhookRejected
from .models import Campaign, CampaignRecipient, ProviderAccount, utcnow

WEBHOOK_SALT = "marketing-webhook"
#: Fields of a SendCloud event post; a post with none of them is SendCloud's URL check.
EVENT_FIELDS = ("event", "signature", "token", "timestamp")
#: ``Event.dedupe_key`` is at most 128 characters.
_MAX_KEY = 128

Outcome = Literal["stored", "duplicate", "url_check"]


def _serializer(settings: Settings) -> URLSafeSerializer:
    return URLSafeSerializer(settings.token_secret, salt=WEBHOOK_SALT)


def workspace_token(settings: Settings, workspace_id: int) -> str:
    """The signed, URL-safe token of a workspace used in its webhook URL."""
    return str(_serializer(settings).dumps(int(workspace_id)))


def workspace_from_token(settings: Settings, token: str) -> int:
    """The workspace id inside ``token``, or :class:`NotFound` when it was not signed by us."""
    try:
        value = _serializer(settings).loads(token)
    except BadSignature as exc:
        raise NotFound("unknown webhook address") from exc
    if not isinstance(value, int) or isinstance(value, bool):
        raise NotFound("unknown webhook address")
    return value


def webhook_url(settings: Settings, workspace_id: int) -> str:
    """The absolute URL SendCloud posts this workspace's events to."""
    return (
        f"{settings.public_base_url}{settings.public_url_prefix}/webhooks/sendcloud/"
        f"{workspace_token(settings, workspace_id)}"
    )


def is_url_check(form: Mapping[str, Any]) -> bool:
    """SendCloud tests a new webhook URL with a GET or a POST that carries no event."""
    return not any(form.get(name) for name in EVENT_FIELDS)


def dedupe_key(provider_event_id: str) -> str:
    """``sendcloud:<provider event id>``, hashed when it would not fit the column.

    The adapter's ids already start with ``sendcloud:``; the prefix is not doubled.
    """
    key = (
        provider_event_id if provider_event_id.startswith("sendcloud:") else f"sendcloud:{provider_event_id}"
    )
    if len(key) <= _MAX_KEY:
        return key
    return "sendcloud:sha256:" + hashlib.sha256(provider_event_id.encode()).hexdigest()


def token_key(form: Mapping[str, Any]) -> str:
    """The dedupe key of a verified post: its signed ``token`` alone.

    SendCloud's signature covers ``timestamp + token``, not the body, and every event gets a
    fresh random token that retries repeat.  Keying on the token (not on token + event type)
    makes a token single-use: a replay of an observed post with a different body (another
    event, address or email id) is a duplicate and changes nothing.
    """
    from .providers.sendcloud import _field

    return dedupe_key(f"sendcloud:{_field(form, 'token') or ''}")


def _account(session: Session, workspace_id: int) -> ProviderAccount:
    account = session.scalar(
        select(ProviderAccount)
        .where(ProviderAccount.workspace_id == workspace_id, ProviderAccount.kind == "sendcloud")
        .order_by(ProviderAccount.id)
        .limit(1)
    )
    if account is None:
        raise NotFound("this workspace has no SendCloud account")
    return account


def receive_sendcloud(
    session: Session,
    settings: Settings,
    secrets: SecretBox,
    workspace_id: int,
    form: Mapping[str, Any],
    *,
    now: dt.datetime | None = None,
) -> Outcome:
    """Verify one SendCloud post and store its event once; commits.

    Raises :class:`NotFound` (no account in the workspace) and :class:`WebhookRejected`
    (signature, timestamp or shape); both leave the database untouched.
    """
    from .providers.sendcloud import parse_webhook, verify_webhook

    if is_url_check(form):
        return "url_check"
    account = _account(session, workspace_id)
    if not account.webhook_app_key_encrypted:
        raise WebhookRejected("no webhook app key is stored for this account", reason="no_key")
    app_key = secrets.decrypt(account.webhook_app_key_encrypted)
    now = now or utcnow()
    verify_webhook(
        form,
        app_key,
        now=now,
        max_age=dt.timedelta(minutes=settings.webhook_max_age_minutes),
    )
    _note_accepted(account, now)
    event = parse_webhook(form)
    data = _event_data(event, form)
    substat = (event.raw or {}).get("substat")
    if isinstance(substat, str) and substat:
        data["substat"] = substat[:8]
    campaign_id, recipient_id = resolve_recipient(session, workspace_id, event)
    if event.event_type == "request":
        data["pairs"] = request_pairs(event)
    elif event.event_type == "route":
        data.update(_route_data(form))
    stored = events.record(
        session,
        workspace_id=workspace_id,
        type=event.event_type,
        dedupe_key=token_key(form),
        occurred_at=event.occurred_at,
        campaign_id=campaign_id,
        recipient_id=recipient_id,
        data=data,
        settings=settings,
    )
    if stored and event.event_type == "route":
        handle_route(session, settings, workspace_id, form)
    session.commit()
    return "stored" if stored else "duplicate"


#: How often the account's webhook health is written: posts arrive by the thousand per minute.
HEALTH_WRITE_EVERY = dt.timedelta(minutes=1)
#: Refusals that mean genuine events are refused too (the stored APP KEY is wrong or missing).
KEY_REFUSALS = frozenset({"signature", "no_key"})


def forget_health(account: ProviderAccount) -> None:
    """Nothing known of the key: no refusal, no accepted event (a new key is stored)."""
    account.webhook_refused_since = account.webhook_refused_at = account.webhook_refused_reason = None
    account.webhook_ok_at = None


def _note_accepted(account: ProviderAccount, now: dt.datetime) -> None:
    """A signed event arrived: the key works (committed with the event)."""
    if account.webhook_refused_since is not None or account.webhook_refused_reason is not None:
        forget_health(account)
        account.webhook_ok_at = now
    elif account.webhook_ok_at is None or now - account.webhook_ok_at >= HEALTH_WRITE_EVERY:
        account.webhook_ok_at = now


def note_refusal(session: Session, workspace_id: int, reason: str, *, now: dt.datetime | None = None) -> bool:
    """Remember that a post was refused for the APP KEY (``KEY_REFUSALS``); commits.  Returns
    whether anything was written: other refusals (stale, malformed) say nothing about the
    key, and within ``HEALTH_WRITE_EVERY`` of the last write only the first one is written.

    Why record it at all: SendCloud retries a refused post and then gives up, so a wrong key
    otherwise shows only as statistics that stop moving.  Anyone can post a badly signed form
    to the address, so the pages say what was refused and when, beside when an event was last
    accepted, and the next accepted event clears it."""
    if reason not in KEY_REFUSALS:
        return False
    now = now or utcnow()
    try:
        account = _account(session, workspace_id)
    except NotFound:
        return False
    if account.webhook_refused_at is not None and now - account.webhook_refused_at < HEALTH_WRITE_EVERY:
        return False
    account.webhook_refused_since = account.webhook_refused_since or now
    account.webhook_refused_at = now
    account.webhook_refused_reason = reason
    session.commit()
    return True


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            text = str(value).strip()
            return int(text) if text.isdigit() and len(text) < 18 else None
    return None


def resolve_recipient(session: Session, workspace_id: int, event: Any) -> tuple[int | None, int | None]:
    """``(campaign_id, recipient_id)`` of an event, as far as it can be known.

    The provider's email id is looked up first (the runner stores it per recipient); otherwise
    our ``SC-Custom-campaign`` header plus the address (ids of a batch accepted as a duplicate
    request are only learnt from its ``request`` event).  Only ids of this workspace count.
    """
    campaign_id = _header_int(event.user_headers or {}, "SC-Custom-campaign")
    if campaign_id is not None:
        campaign_id = session.scalar(
            select(Campaign.id).where(Campaign.id == campaign_id, Campaign.workspace_id == workspace_id)
        )
    if event.provider_message_id:
        row = session.execute(
            select(CampaignRecipient.id, CampaignRecipient.campaign_id)
            .where(
                CampaignRecipient.provider_message_id == event.provider_message_id[:255],
                CampaignRecipient.workspace_id == workspace_id,
            )
            .limit(1)
        ).first()
        if row is not None:
            return row.campaign_id, row.id
    if campaign_id is not None and event.recipient:
        from .suppression import normalize

        recipient_id = session.scalar(
            select(CampaignRecipient.id).where(
                CampaignRecipient.campaign_id == campaign_id,
                CampaignRecipient.email == normalize(event.recipient),
            )
        )
        return campaign_id, recipient_id
    return campaign_id, None


def request_pairs(event: Any) -> list[list[str]]:
    """``[[address, email id], ...]`` of a ``request`` event (ids end in ``$<address>``)."""
    raw = event.raw or {}
    ids = raw.get("emailIds") or []
    if isinstance(ids, str):
        ids = [ids]
    pairs = []
    for email_id in ids:
        _, sep, address = str(email_id).rpartition("$")
        if sep and address:
            pairs.append([address, str(email_id)])
    return pairs


#: Route (inbound mail) fields kept on the event; the raw message and HTML are left out (size).
_ROUTE_FIELDS = ("from", "fromname", "to", "toname", "subject", "reference", "x_mx_mailfrom", "x_mx_rcptto")


def _route_data(form: Mapping[str, Any]) -> dict[str, Any]:
    from .providers.sendcloud import _field

    data: dict[str, Any] = {}
    for name in _ROUTE_FIELDS:
        value = _field(form, name)
        if value:
            data[name] = value[:998]
    text = _field(form, "text")
    if text:
        data["text"] = text[:20_000]
    headers = _field(form, "headers")
    if headers:
        data["headers"] = headers[:20_000]
    return data


def handle_route(session: Session, settings: Settings, workspace_id: int, form: Mapping[str, Any]) -> None:
    """Hand an inbound mail (SendCloud ``route``) to reply detection.

    The hook: ``plugin.replies.handle_route(session, workspace_id=, fields=, settings=)`` when
    that module exists; until then the stored ``route`` event is all there is.
    """
    try:
        from . import replies  # type: ignore[attr-defined]
    except ImportError:
        return
    handler = getattr(replies, "handle_route", None)
    if handler is None:
        return
    from .providers.sendcloud import _field

    fields = {key: _field(form, key) for key in form}
    handler(session, workspace_id=workspace_id, fields=fields, settings=settings)


def _event_data(event: Any, form: Mapping[str, Any]) -> dict[str, Any]:
    """What we keep of an event: the parsed facts, never the signature, token or keys."""
    data: dict[str, Any] = {
        "provider": "sendcloud",
        "recipient": event.recipient,
        "message_id": event.provider_message_id,
        "url": event.url,
        "reason": event.reason,
        "user_headers": dict(event.user_headers or {}),
    }
    api_user = form.get("apiUser") or form.get("category")
    if api_user:
        data["api_user"] = str(api_user)
    label = form.get("labelName") or form.get("labelId")
    if label:
        data["label"] = str(label)
    return {key: value for key, value in data.items() if value not in (None, "", {})}
