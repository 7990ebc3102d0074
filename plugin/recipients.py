"""A campaign's recipients: filter by what happened to them, page, export, tag, follow up.

The drill-down behind every figure of the statistics page ("who opened?", "who replied?"), and
the way sales turns engagement into CRM work: tag the repliers, export the clickers, start a
follow-up campaign to the ones who opened but did not reply.

Why bulk actions walk the selection in keyset chunks (``id > last ORDER BY id LIMIT n``): "all
matching the filter" may be hundreds of thousands of recipients; chunks keep memory flat and
each statement short, and the order is stable while rows change under us.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from .campaigns import service as campaigns
from .directory import ContactDirectory
from .errors import InvalidInput, NotFound
from .i18n import _
from .models import Campaign, CampaignRecipient, Sender, Template

R = CampaignRecipient
#: filter name -> condition.  Engagement filters read the first-time timestamps; outcome
#: filters read the recipient's status.
FILTERS: dict[str, Any] = {
    "delivered": lambda: R.status == "delivered",
    "opened": lambda: R.opened_at.is_not(None),
    "not_opened": lambda: (R.status == "delivered") & R.opened_at.is_(None),
    "machine_opened": lambda: R.machine_opened_at.is_not(None),
    "clicked": lambda: R.clicked_at.is_not(None),
    "replied": lambda: R.replied_at.is_not(None),
    "bounced": lambda: R.status == "bounced",
    "invalid": lambda: R.status == "invalid",
    "unsubscribed": lambda: R.unsubscribed_at.is_not(None),
    "complained": lambda: R.complained_at.is_not(None),
    "failed": lambda: R.status == "failed",
    "skipped": lambda: R.status == "skipped",
    "in_flight": lambda: R.status.in_(("sending", "accepted", "unknown")),
    "pending": lambda: R.status == "pending",
}
SORTS: dict[str, Any] = {
    "email": R.email,
    "status": R.status,
    "sent_at": R.sent_at,
    "delivered_at": R.delivered_at,
    "opened_at": R.opened_at,
    "clicked_at": R.clicked_at,
    "replied_at": R.replied_at,
    "unsubscribed_at": R.unsubscribed_at,
}
#: Recipients read per statement by bulk actions and exports.
CHUNK = 1000


@dataclasses.dataclass(frozen=True)
class Criteria:
    """Which recipients: a filter, a skip reason, an address search, or explicit ids."""

    filter: str = ""
    reason: str = ""
    q: str = ""
    #: Explicit selection (checked rows); ``None`` means "all matching the filter".
    ids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class RecipientPage:
    items: list[CampaignRecipient]
    total: int
    page: int
    pages: int


def get_campaign(session: Session, workspace_id: int, campaign_id: int) -> Campaign:
    campaign = session.scalar(
        select(Campaign).where(Campaign.id == campaign_id, Campaign.workspace_id == workspace_id)
    )
    if campaign is None:
        raise NotFound(_("No such campaign."))
    return campaign


def _where(workspace_id: int, campaign_id: int, criteria: Criteria) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [R.campaign_id == campaign_id, R.workspace_id == workspace_id]
    if criteria.filter:
        if criteria.filter not in FILTERS:
            raise InvalidInput(_("Unknown filter."), field="filter")
        conditions.append(FILTERS[criteria.filter]())
    if criteria.reason:
        conditions.append(R.reason == criteria.reason)
    if criteria.q:
        needle = criteria.q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(R.email.like(f"%{needle}%", escape="\\"))
    if criteria.ids is not None:
        conditions.append(R.id.in_(criteria.ids or (-1,)))
    return conditions


def list_recipients(
    session: Session,
    workspace_id: int,
    campaign_id: int,
    criteria: Criteria,
    *,
    sort: str = "email",
    order: str = "asc",
    page: int = 1,
    per_page: int = 50,
) -> RecipientPage:
    """One page of the matching recipients, sorted (ties broken by id, so pages never overlap)."""
    get_campaign(session, workspace_id, campaign_id)
    where = _where(workspace_id, campaign_id, criteria)
    total = session.scalar(select(func.count()).select_from(R).where(*where)) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    column = SORTS.get(sort, R.email)
    ordering = column.asc() if order == "asc" else column.desc()
    nulls_last = column.is_(None)  # recipients without the timestamp go last in either direction
    items = session.scalars(
        select(R)
        .where(*where)
        .order_by(nulls_last, ordering, R.id)
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return RecipientPage(list(items), total, page, pages)


def skip_reasons(session: Session, workspace_id: int, campaign_id: int) -> list[tuple[str, int]]:
    """Why recipients were skipped, with counts (the ``skipped`` filter's sub-choices)."""
    rows = session.execute(
        select(R.reason, func.count())
        .where(R.campaign_id == campaign_id, R.workspace_id == workspace_id, R.status == "skipped")
        .group_by(R.reason)
        .order_by(func.count().desc())
    )
    return [(reason or "", int(n)) for reason, n in rows]


def _chunks(
    session: Session, workspace_id: int, campaign_id: int, criteria: Criteria, columns: Sequence[Any]
) -> Iterator[list[Any]]:
    """Rows of ``columns`` (the id first) for every matching recipient, ``CHUNK`` at a time."""
    where = _where(workspace_id, campaign_id, criteria)
    last = 0
    while True:
        query: Select[Any] = select(*columns).where(*where, R.id > last).order_by(R.id).limit(CHUNK)
        rows = session.execute(query).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def contact_ids(
    session: Session, workspace_id: int, campaign_id: int, criteria: Criteria
) -> Iterator[list[int]]:
    """The CRM contact ids behind the matching recipients, a chunk at a time."""
    for rows in _chunks(session, workspace_id, campaign_id, criteria, (R.id, R.contact_id)):
        ids = [contact for _rid, contact in rows if contact is not None]
        if ids:
            yield ids


@dataclasses.dataclass(frozen=True)
class TagResult:
    contacts: int
    changed: int


def tag(
    session: Session,
    directory: ContactDirectory,
    workspace_id: int,
    campaign_id: int,
    criteria: Criteria,
    tag_name: str,
    *,
    remove: bool = False,
) -> TagResult:
    """Add (or remove) a CRM tag on the contacts of the matching recipients.  Does not commit.

    :raises InvalidInput: no tag name, or nobody matches.
    """
    name = " ".join((tag_name or "").split())
    if not name:
        raise InvalidInput(_("Enter a tag name."), field="tag")
    if len(name) > 100:
        raise InvalidInput(_("A tag name has at most 100 characters."), field="tag")
    get_campaign(session, workspace_id, campaign_id)
    contacts = changed = 0
    for ids in contact_ids(session, workspace_id, campaign_id, criteria):
        contacts += len(ids)
        if remove:
            changed += directory.remove_tags(session, workspace_id, ids, [name])
        else:
            changed += directory.add_tags(session, workspace_id, ids, [name])
    if not contacts:
        raise InvalidInput(_("No contact matches the selection."), field="selection")
    return TagResult(contacts, changed)


def follow_up(
    session: Session,
    directory: ContactDirectory,
    workspace_id: int,
    campaign_id: int,
    criteria: Criteria,
    *,
    user_id: str,
    team: str | None = None,
    today: dt.date,
) -> Campaign:
    """A draft campaign to the selection: the selection becomes a new tag, the draft sends to it.

    Content, senders and channel are copied from the campaign (to be edited); the tag is named
    ``follow-up <campaign> <date>`` (numbered if that name exists), so sales can see who was in it.
    Does not commit.
    """
    source = get_campaign(session, workspace_id, campaign_id)
    existing = {info.name for info in directory.tags(session, workspace_id)}
    base = f"follow-up {' '.join(source.name.split())[:70]} {today.isoformat()}"
    name, n = base, 1
    while name in existing:
        n += 1
        name = f"{base} #{n}"
    tag(session, directory, workspace_id, campaign_id, criteria, name)
    tag_id = next(info.id for info in directory.tags(session, workspace_id) if info.name == name)
    spec = dataclasses.replace(
        campaigns.spec_of(source),
        name=_("Follow-up: %(name)s", name=source.name)[:200],
        include_tags=(tag_id,),
        include_views=(),
        exclude_tags=(),
        exclude_views=(),
        skip_count=0,
        max_count=None,
        send_at=None,
    )
    return campaigns.save_draft(session, workspace_id, spec, user_id=user_id, team=team)


# -- export --------------------------------------------------------------------------------------
def export_header() -> list[str]:
    return [
        _("Email"),
        _("Status"),
        _("Reason"),
        _("Template"),
        _("Sender"),
        _("Sent"),
        _("Delivered"),
        _("Opened"),
        _("Machine open"),
        _("Clicked"),
        _("Replied"),
        _("Unsubscribed"),
        _("Complained"),
        _("Campaign"),
    ]


def export_rows(
    session: Session, workspace_id: int, campaign_id: int, criteria: Criteria, *, tz: dt.tzinfo
) -> Iterator[list[Any]]:
    """The header, then one row per matching recipient (times in ``tz``), streamed in chunks."""
    campaign = get_campaign(session, workspace_id, campaign_id)
    templates = dict(
        session.execute(select(Template.id, Template.name).where(Template.workspace_id == workspace_id)).all()
    )
    senders = dict(
        session.execute(
            select(Sender.id, Sender.from_address).where(Sender.workspace_id == workspace_id)
        ).all()
    )

    def when(value: dt.datetime | None) -> str:
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value else ""

    columns = (
        R.id,
        R.email,
        R.status,
        R.reason,
        R.template_id,
        R.sender_id,
        R.sent_at,
        R.delivered_at,
        R.opened_at,
        R.machine_opened_at,
        R.clicked_at,
        R.replied_at,
        R.unsubscribed_at,
        R.complained_at,
    )
    yield export_header()
    for rows in _chunks(session, workspace_id, campaign_id, criteria, columns):
        for row in rows:
            yield [
                row.email,
                row.status,
                row.reason or "",
                templates.get(row.template_id, ""),
                senders.get(row.sender_id, ""),
                *(when(v) for v in row[6:]),
                campaign.name,
            ]
