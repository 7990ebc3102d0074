"""Engagement and delivery facts: stored once, applied once.

Every fact — a provider webhook event, a pixel hit, a click, an unsubscribe, a reply — goes
through :func:`record`.  It inserts the :class:`~plugin.models.Event` with
``ON CONFLICT (dedupe_key) DO NOTHING``; only when that insert wrote a row are the effects
applied, in the same transaction.  So a provider that retries an event, two workers receiving
the same event at once, or a user pressing "unsubscribe" twice change things exactly once.

Effects are written as conditional single-statement updates, so the outcome does not depend on
the order in which events arrive:

* **Status** only moves up: ``sending/accepted/unknown`` → ``delivered`` → ``bounced``/``invalid``.
  A ``deliver`` that arrives after an ``open`` (which already implied delivery) or after a
  bounce changes nothing; a bounce after a delivery takes the delivery back out of the
  ``delivered`` counter, so the totals equal the recipients' final states in any order.
* **Flags** (opened, clicked, unsubscribed, complained, replied, machine opened) are first-time
  timestamps: the first event counts the ``unique_*``/flag metric, a later event with an earlier
  time only moves the timestamp back.
* **Counters** (:mod:`plugin.counters`) are bumped once per stored event, per template, sender
  and recipient domain (and link for clicks).
* **Suppression**: invalid addresses (hard failures), spam complaints and unsubscribes at once;
  soft bounces when an address has soft-bounced ``SOFT_BOUNCE_LIMIT`` times across the
  workspace's campaigns.  This also applies to events we cannot map to a campaign recipient
  (trigger mail), using the address in the event.

When a campaign has our own open/click tracking, SendCloud's own ``open``/``click`` events for
it are stored but not counted: the same open would otherwise count twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import counters, suppression, tracking
from .campaigns.runner import in_open_range
from .models import Campaign, CampaignRecipient, Event, utcnow

_R = CampaignRecipient.__table__
#: States a delivery event may lift a recipient out of.
_SENT_STATES = ("sending", "accepted", "unknown")
#: ... and a member of a batch claimed as a range (PostgreSQL's SendCloud claim,
#: ``runner._claim_range``), pending in its row until the provider's answer is recorded.  The
#: provider's events can come first (a batch answered late, or re-sent after a time-out); the
#: record keeps what they set.  A recipient merely waiting for its claim stays pending (an
#: unsubscribe then skips it).
_IN_FLIGHT = or_(_R.c.status.in_(_SENT_STATES), in_open_range(_R.c.campaign_id))
#: ``invalid`` substat → suppression reason (SendCloud codes; anything else is a hard bounce).
_INVALID_REASONS = {"402": "unsubscribed", "404": "invalid", "406": "invalid", "407": "complaint"}
DEFAULT_SOFT_BOUNCE_LIMIT = 3


class _Row:
    """The recipient fields effects need (read once per event)."""

    __slots__ = ("campaign_id", "delivered_at", "email", "id", "sender_id", "sent_at", "template_id")

    def __init__(self, row: Any) -> None:
        self.id = row.id
        self.campaign_id = row.campaign_id
        self.email = row.email
        self.template_id = row.template_id
        self.sender_id = row.sender_id
        self.sent_at = row.sent_at
        self.delivered_at = row.delivered_at

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


def _recipient(session: Session, workspace_id: int, recipient_id: int) -> _Row | None:
    row = session.execute(
        select(
            _R.c.id,
            _R.c.campaign_id,
            _R.c.email,
            _R.c.template_id,
            _R.c.sender_id,
            _R.c.sent_at,
            _R.c.delivered_at,
        ).where(_R.c.id == recipient_id, _R.c.workspace_id == workspace_id)
    ).first()
    return _Row(row) if row is not None else None


def _soft_bounce_limit(settings: Any) -> int:
    if settings is None:
        try:
            from .extension import get_state

            settings = get_state().settings
        except Exception:  # outside an app (scripts, unit tests)
            return DEFAULT_SOFT_BOUNCE_LIMIT
    return int(getattr(settings, "soft_bounce_limit", DEFAULT_SOFT_BOUNCE_LIMIT))


def record(
    session: Session,
    *,
    workspace_id: int,
    type: str,
    dedupe_key: str,
    occurred_at: dt.datetime,
    campaign_id: int | None = None,
    recipient_id: int | None = None,
    data: Mapping[str, Any] | None = None,
    settings: Any = None,
) -> bool:
    """Store the event once and apply its effects; False (and no change) for a repeat.

    Does not commit.  ``data`` may carry ``recipient`` (address), ``reason``, ``substat``,
    ``link_id``, ``machine`` (request-level machine signs), ``source`` (where an unsubscribe came
    from) and ``provider``.
    """
    info: dict[str, Any] = dict(data or {})
    row = _recipient(session, workspace_id, recipient_id) if recipient_id is not None else None
    if row is not None:
        if campaign_id is not None and campaign_id != row.campaign_id:
            row = None  # ids from different campaigns: trust neither for effects
        else:
            campaign_id = row.campaign_id
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=dt.UTC)
    if row is not None:
        _classify(session, type, row, occurred_at, info)
        if info.get("provider") and type in ("open", "click") and _own_tracking(session, row.campaign_id):
            info["ignored"] = "own_tracking"
    values = {
        "workspace_id": workspace_id,
        "campaign_id": campaign_id,
        "recipient_id": row.id if row is not None else None,
        "type": type[:24],
        "dedupe_key": dedupe_key[:128],
        "occurred_at": occurred_at,
        "received_at": utcnow(),
        "data": info,
    }
    make_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    inserted = session.execute(
        make_insert(Event.__table__)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Event.__table__.c.id)
    ).first()
    if inserted is None:  # stored before: a repeat changes nothing
        return False
    if info.get("ignored"):
        return True
    _apply(session, workspace_id, campaign_id, row, type, occurred_at, info, settings)
    return True


def _own_tracking(session: Session, campaign_id: int) -> bool:
    return bool(session.scalar(select(Campaign.tracking).where(Campaign.id == campaign_id)))


def _classify(session: Session, type_: str, row: _Row, at: dt.datetime, info: dict[str, Any]) -> None:
    """Mark machine opens/clicks (request signs come in ``info['machine']``; timing is added here)."""
    if type_ == "open":
        info["machine"] = bool(info.get("machine")) or tracking.is_machine_open(sent_at=row.sent_at, at=at)
    elif type_ == "click":
        if info.get("machine"):
            info["machine"] = True
            return
        since = at - dt.timedelta(seconds=tracking.BURST_SECONDS)
        recent = session.scalars(
            select(Event.data).where(
                Event.recipient_id == row.id,
                Event.type == "click",
                Event.occurred_at >= since,
                Event.occurred_at <= at + dt.timedelta(seconds=tracking.BURST_SECONDS),
            )
        ).all()
        link = info.get("link_id")
        others = sum(1 for d in recent if isinstance(d, dict) and d.get("link_id") != link)
        info["machine"] = tracking.is_machine_click(
            sent_at=row.sent_at, at=at, other_link_clicks_within_burst=others
        )


def _apply(
    session: Session,
    workspace_id: int,
    campaign_id: int | None,
    row: _Row | None,
    type_: str,
    at: dt.datetime,
    info: dict[str, Any],
    settings: Any,
) -> None:
    if type_ == "request":
        _fill_message_ids(session, campaign_id, info)
        return
    address = row.email if row is not None else suppression.normalize(str(info.get("recipient") or ""))
    if row is None:
        _unmapped(session, workspace_id, campaign_id, type_, at, info, address)
        return

    def bump(metric: str, n: int = 1, when: dt.datetime | None = None, **extra: Any) -> None:
        counters.bump(
            session,
            workspace_id=workspace_id,
            campaign_id=row.campaign_id,
            metric=metric,
            at=when or at,
            n=n,
            template_id=row.template_id,
            sender_id=row.sender_id,
            domain=row.domain,
            **extra,
        )

    if type_ == "deliver":
        _deliver(session, row, at, bump)
    elif type_ in ("invalid", "soft_bounce"):
        new = "invalid" if type_ == "invalid" else "bounced"
        _fail(session, row, new, at, str(info.get("reason") or "")[:255] or None, bump)
        if type_ == "soft_bounce":
            bump("soft_bounced")
            session.execute(_R.update().where(_R.c.id == row.id).values(soft_bounces=_R.c.soft_bounces + 1))
            if _soft_bounces(session, workspace_id, row.email) >= _soft_bounce_limit(settings):
                suppression.add(
                    session,
                    workspace_id,
                    address,
                    "soft_bounce",
                    source="webhook",
                    campaign_id=row.campaign_id,
                )
        else:
            reason = _INVALID_REASONS.get(str(info.get("substat") or ""), "hard_bounce")
            suppression.add(
                session, workspace_id, address, reason, source="webhook", campaign_id=row.campaign_id
            )
    elif type_ == "open":
        _deliver(session, row, at, bump)
        if info.get("machine"):
            bump("machine_opened")
            _first(session, row.id, "machine_opened_at", at)
        else:
            bump("opened")
            if _first(session, row.id, "opened_at", at):
                bump("unique_opened")
    elif type_ == "click":
        _deliver(session, row, at, bump)
        if info.get("machine"):
            bump("machine_opened")
            _first(session, row.id, "machine_opened_at", at)
            return
        link_id = info.get("link_id")
        bump("clicked", link_id=link_id if isinstance(link_id, int) else None)
        if _first(session, row.id, "clicked_at", at):
            bump("unique_clicked")
        if _first(session, row.id, "opened_at", at):  # a click proves an open the pixel missed
            bump("unique_opened")
    elif type_ == "unsubscribe":
        _deliver(session, row, at, bump)
        if _first(session, row.id, "unsubscribed_at", at):
            bump("unsubscribed")
        source = str(info.get("source") or "webhook")
        suppression.add(
            session, workspace_id, address, "unsubscribed", source=source, campaign_id=row.campaign_id
        )
    elif type_ == "report_spam":
        _deliver(session, row, at, bump)
        if _first(session, row.id, "complained_at", at):
            bump("complained")
        suppression.add(
            session, workspace_id, address, "complaint", source="webhook", campaign_id=row.campaign_id
        )
    elif type_ == "reply":
        _deliver(session, row, at, bump)
        if _first(session, row.id, "replied_at", at):
            bump("replied")


def _deliver(session: Session, row: _Row, at: dt.datetime, bump: Any) -> None:
    """In flight → delivered (counted once); delivered already, bounced or invalid: nothing."""
    result = session.execute(
        _R.update().where(_R.c.id == row.id, _IN_FLIGHT).values(status="delivered", delivered_at=at)
    )
    if result.rowcount:
        row.delivered_at = at
        bump("delivered")
    else:
        # an earlier time for the first delivery (events out of order) only moves the timestamp
        session.execute(
            _R.update()
            .where(_R.c.id == row.id, _R.c.status == "delivered", _R.c.delivered_at > at)
            .values(delivered_at=at)
        )


def _fail(session: Session, row: _Row, new: str, at: dt.datetime, reason: str | None, bump: Any) -> None:
    """→ bounced/invalid from in flight or delivered (a delivery is taken back out of the count)."""
    was_delivered = session.execute(
        _R.update()
        .where(_R.c.id == row.id, _R.c.status == "delivered")
        .values(status=new, reason=reason)
        .returning(_R.c.delivered_at)
    ).first()
    if was_delivered is not None:
        bump("delivered", -1, when=was_delivered.delivered_at or at)
        bump(new)
        return
    result = session.execute(
        _R.update().where(_R.c.id == row.id, _IN_FLIGHT).values(status=new, reason=reason)
    )
    if result.rowcount:
        bump(new)


def _first(session: Session, recipient_id: int, column: str, at: dt.datetime) -> bool:
    """Set a first-time flag; True when this event is the first (an earlier time moves it back)."""
    col = _R.c[column]
    result = session.execute(_R.update().where(_R.c.id == recipient_id, col.is_(None)).values({column: at}))
    if result.rowcount:
        return True
    session.execute(_R.update().where(_R.c.id == recipient_id, col > at).values({column: at}))
    return False


def _soft_bounces(session: Session, workspace_id: int, email: str) -> int:
    """Soft bounces of one address over the workspace's campaigns.

    Walks the campaigns and uses the ``(campaign_id, email)`` unique index of each, so it stays
    an index lookup per campaign instead of a scan of every recipient row.
    """
    campaigns = select(Campaign.id).where(Campaign.workspace_id == workspace_id).scalar_subquery()
    total = session.scalar(
        select(func.coalesce(func.sum(_R.c.soft_bounces), 0)).where(
            _R.c.campaign_id.in_(campaigns), _R.c.email == email
        )
    )
    return int(total or 0)


def _fill_message_ids(session: Session, campaign_id: int | None, info: Mapping[str, Any]) -> None:
    """A ``request`` event names the provider id of each address: fill the ones we lack.

    Batches accepted as a "duplicate request" (a retry after a lost answer) got no ids back.
    """
    pairs = info.get("pairs") or []
    if campaign_id is None or not pairs:
        return
    for address, message_id in pairs:
        if not address or not message_id:
            continue
        session.execute(
            _R.update()
            .where(
                _R.c.campaign_id == campaign_id,
                _R.c.email == suppression.normalize(str(address)),
                _R.c.provider_message_id.is_(None),
            )
            .values(provider_message_id=str(message_id)[:255])
        )


_UNMAPPED_METRICS = {
    "deliver": "delivered",
    "invalid": "invalid",
    "soft_bounce": "soft_bounced",
    "report_spam": "complained",
    "unsubscribe": "unsubscribed",
}


def _unmapped(
    session: Session,
    workspace_id: int,
    campaign_id: int | None,
    type_: str,
    at: dt.datetime,
    info: Mapping[str, Any],
    address: str,
) -> None:
    """An event for mail we cannot tie to a campaign recipient (trigger mail, old mail).

    Suppression still applies to the address; mail outside campaigns counts in campaign 0.
    """
    if address and "@" in address:
        if type_ == "invalid":
            reason = _INVALID_REASONS.get(str(info.get("substat") or ""), "hard_bounce")
            suppression.add(session, workspace_id, address, reason, source="webhook", campaign_id=campaign_id)
        elif type_ == "report_spam":
            suppression.add(
                session, workspace_id, address, "complaint", source="webhook", campaign_id=campaign_id
            )
        elif type_ == "unsubscribe":
            suppression.add(
                session, workspace_id, address, "unsubscribed", source="webhook", campaign_id=campaign_id
            )
    metric = _UNMAPPED_METRICS.get(type_)
    if metric is not None and campaign_id is None:
        counters.bump(
            session,
            workspace_id=workspace_id,
            campaign_id=0,
            metric=metric,
            at=at,
            domain=address.rpartition("@")[2] or None,
        )


__all__ = ["DEFAULT_SOFT_BOUNCE_LIMIT", "record"]
