"""Campaigns as users handle them: drafts, the checks before launch, submission (schedule, start
now, or wait for an admin's approval), duplicate, delete, and the user's pause/resume/cancel.

Sending itself is the runner's (``campaigns/runner.py``); this module only decides *whether* a
campaign may go and moves it to the state the runner and the scheduler pick up.  "Send now" is a
campaign scheduled at the moment of submission: the page starts it at once, and if that start
fails or the process dies first, the scheduler's next tick starts it anyway, so a submitted
campaign can never be forgotten.

Functions take the session and their collaborators explicitly, never commit (the view decides the
transaction), scope every query by workspace, and raise :mod:`plugin.errors` exceptions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from ..config import Settings
from ..directory import ContactDirectory
from ..errors import InvalidInput, InvalidTransition, MarketingError, NotFound
from ..i18n import _, ngettext
from ..models import Campaign, CampaignRecipient, ProviderAccount, SendBatch, Sender, Template, utcnow
from . import lifecycle

#: Seconds of recent batches the live send rate is measured over.
RATE_WINDOW_SECONDS = 300


class CampaignErrors(InvalidInput):
    """Several fields are wrong at once; ``errors`` maps each field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        field, message = next(iter(errors.items()))
        super().__init__(message, field=field)
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class CampaignSpec:
    """What the form says a campaign is; ``send_at`` is UTC, ``None`` meaning "send now"."""

    name: str
    template_ids: tuple[int, ...] = ()
    template_assignment: str = "balanced"
    include_tags: tuple[int, ...] = ()
    include_views: tuple[int, ...] = ()
    exclude_tags: tuple[int, ...] = ()
    exclude_views: tuple[int, ...] = ()
    skip_count: int = 0
    max_count: int | None = None
    sender_ids: tuple[int, ...] = ()
    from_name: str | None = None
    reply_to: str | None = None
    tracking: bool = True
    label: str | None = None
    account_id: int | None = None
    send_at: dt.datetime | None = None
    send_rate: float | None = None
    spread_over_days: bool = True


@dataclasses.dataclass(frozen=True)
class Check:
    """The verdict before launch: errors block it, warnings are shown; counts and forecast are live."""

    errors: dict[str, str]
    warnings: list[str]
    counts: Any = None  # audience.AudienceCounts
    forecast: Any = None  # forecast.Forecast

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclasses.dataclass(frozen=True)
class Submitted:
    """Where a submitted campaign went; ``start_now`` asks the caller to start it at once."""

    status: str
    start_now: bool


# -- time ---------------------------------------------------------------------------------------
def local_to_utc(value: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """A wall-clock time the user typed in his zone, as UTC (aware values are only converted)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(dt.UTC)


def utc_to_local(value: dt.datetime | None, tz: ZoneInfo) -> dt.datetime | None:
    """A stored UTC time as the naive wall-clock time a ``datetime-local`` input shows."""
    return None if value is None else value.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)


def spec_from_input(data: Mapping[str, Any], *, tz: ZoneInfo) -> CampaignSpec:
    """The schema's output (``schemas.campaigns.CampaignIn``) as a spec, the time made UTC."""
    timed = data.get("send_mode") == "at" and data.get("send_at") is not None
    return CampaignSpec(
        name=" ".join(str(data["name"]).split()) or str(data["name"]),
        template_ids=tuple(dict.fromkeys(data.get("template_ids") or ())),
        template_assignment=data.get("template_assignment") or "balanced",
        include_tags=tuple(dict.fromkeys(data.get("include_tags") or ())),
        include_views=tuple(dict.fromkeys(data.get("include_views") or ())),
        exclude_tags=tuple(dict.fromkeys(data.get("exclude_tags") or ())),
        exclude_views=tuple(dict.fromkeys(data.get("exclude_views") or ())),
        skip_count=int(data.get("skip_count") or 0),
        max_count=data.get("max_count"),
        sender_ids=tuple(dict.fromkeys(data.get("sender_ids") or ())),
        from_name=(data.get("from_name") or "").strip() or None,
        reply_to=(data.get("reply_to") or "").strip() or None,
        tracking=bool(data.get("tracking", True)),
        label=(data.get("label") or "").strip() or None,
        account_id=data.get("account_id"),
        send_at=local_to_utc(data["send_at"], tz) if timed else None,
        send_rate=data.get("send_rate"),
        spread_over_days=bool(data.get("spread_over_days", True)),
    )


def spec_of(campaign: Campaign) -> CampaignSpec:
    audience = campaign.audience or {}
    return CampaignSpec(
        name=campaign.name,
        template_ids=tuple(campaign.template_ids or ()),
        template_assignment=campaign.template_assignment,
        include_tags=tuple(audience.get("include_tags") or ()),
        include_views=tuple(audience.get("include_views") or ()),
        exclude_tags=tuple(audience.get("exclude_tags") or ()),
        exclude_views=tuple(audience.get("exclude_views") or ()),
        skip_count=campaign.skip_count or 0,
        max_count=campaign.max_count,
        sender_ids=tuple(campaign.sender_ids or ()),
        from_name=campaign.from_name,
        reply_to=campaign.reply_to,
        tracking=campaign.tracking,
        label=campaign.label,
        account_id=campaign.account_id,
        send_at=campaign.send_at,
        send_rate=campaign.send_rate,
        spread_over_days=campaign.spread_over_days,
    )


# -- reading ------------------------------------------------------------------------------------
def get_campaign(session: Session, workspace_id: int, campaign_id: int) -> Campaign:
    campaign = session.scalar(
        select(Campaign).where(Campaign.id == campaign_id, Campaign.workspace_id == workspace_id)
    )
    if campaign is None:
        raise NotFound(_("No such campaign."))
    return campaign


def default_account(session: Session, workspace_id: int) -> ProviderAccount | None:
    """The workspace's SendCloud account (the usual channel), else its first SMTP account."""
    return session.scalar(
        select(ProviderAccount)
        .where(ProviderAccount.workspace_id == workspace_id, ProviderAccount.status == "active")
        .order_by((ProviderAccount.kind == "sendcloud").desc(), ProviderAccount.id)
        .limit(1)
    )


def _account(session: Session, workspace_id: int, account_id: int | None) -> ProviderAccount | None:
    if account_id is None:
        return default_account(session, workspace_id)
    return session.scalar(
        select(ProviderAccount).where(
            ProviderAccount.id == account_id, ProviderAccount.workspace_id == workspace_id
        )
    )


# -- drafts -------------------------------------------------------------------------------------
def _apply(campaign: Campaign, spec: CampaignSpec) -> None:
    campaign.name = spec.name
    campaign.template_ids = list(spec.template_ids)
    campaign.template_assignment = spec.template_assignment
    campaign.audience = {
        "include_tags": list(spec.include_tags),
        "include_views": list(spec.include_views),
        "exclude_tags": list(spec.exclude_tags),
        "exclude_views": list(spec.exclude_views),
    }
    campaign.skip_count = spec.skip_count
    campaign.max_count = spec.max_count
    campaign.sender_ids = list(spec.sender_ids)
    campaign.from_name = spec.from_name
    campaign.reply_to = spec.reply_to
    campaign.tracking = spec.tracking
    campaign.label = spec.label
    campaign.account_id = spec.account_id
    campaign.send_at = spec.send_at
    campaign.send_rate = spec.send_rate
    campaign.spread_over_days = spec.spread_over_days


def save_draft(
    session: Session,
    workspace_id: int,
    spec: CampaignSpec,
    *,
    user_id: str,
    team: str | None = None,
    campaign_id: int | None = None,
) -> Campaign:
    """Create a draft, or store an edit.  Editing a scheduled, missed or awaiting-approval campaign
    takes it back to draft: what was checked (or approved) is no longer what would be sent."""
    _check_ownership(session, workspace_id, spec)
    if campaign_id is None:
        campaign = Campaign(workspace_id=workspace_id, status=lifecycle.DRAFT, created_by=user_id)
        campaign.owner_id = user_id
        campaign.team = team
        _apply(campaign, spec)
        session.add(campaign)
        session.flush()
        return campaign
    campaign = get_campaign(session, workspace_id, campaign_id)
    if campaign.status not in lifecycle.EDITABLE:
        raise InvalidTransition(
            _(
                "A campaign that is %(status)s cannot be edited.",
                status=lifecycle.status_label(campaign.status),
            )
        )
    if campaign.status != lifecycle.DRAFT:
        lifecycle.transition(session, campaign, lifecycle.DRAFT)
    campaign.approved_by = None
    campaign.approved_at = None
    _apply(campaign, spec)
    session.flush()
    return campaign


def _check_ownership(session: Session, workspace_id: int, spec: CampaignSpec) -> None:
    """Ids that are not this workspace's are refused even in a draft (they could leak names)."""
    errors: dict[str, str] = {}
    for field, model, ids in (
        ("template_ids", Template, spec.template_ids),
        ("sender_ids", Sender, spec.sender_ids),
        ("account_id", ProviderAccount, (spec.account_id,) if spec.account_id else ()),
    ):
        if not ids:
            continue
        found = set(
            session.scalars(select(model.id).where(model.workspace_id == workspace_id, model.id.in_(ids)))
        )
        if set(ids) - found:
            errors[field] = _("Some of the chosen items no longer exist; pick again.")
    if errors:
        raise CampaignErrors(errors)


# -- checks before launch ------------------------------------------------------------------------
def check(
    session: Session,
    workspace_id: int,
    spec: CampaignSpec,
    *,
    directory: ContactDirectory,
    settings: Settings,
    now: dt.datetime | None = None,
    timed: bool | None = None,
    owner: tuple[str | None, str | None] = (None, None),
) -> Check:
    """Everything that would stop this campaign from being sent as the user expects.

    ``timed`` says the user chose a time (``spec.send_at`` must then be in the future);
    ``owner`` (user id, team) makes the forecast count that owner's daily cap.
    """
    now = now or utcnow()
    errors: dict[str, str] = {}
    warnings: list[str] = []
    account = _account(session, workspace_id, spec.account_id)
    if account is None:
        errors["account_id"] = _("No sending account yet: finish the setup, or add an SMTP account.")
    _check_templates(session, workspace_id, spec, account, errors, warnings)
    _check_senders(session, workspace_id, spec, errors)
    is_timed = timed if timed is not None else spec.send_at is not None
    if is_timed and spec.send_at is not None and spec.send_at <= now:
        errors["send_at"] = _("This time has already passed; pick a time in the future or send now.")
    counts = _check_audience(session, workspace_id, spec, directory=directory, errors=errors)
    result_forecast = None
    if counts is not None and counts.final > 0 and account is not None:
        result_forecast = _check_forecast(
            session, workspace_id, account, spec, counts.final, settings, errors, warnings, owner=owner
        )
    return Check(errors=errors, warnings=warnings, counts=counts, forecast=result_forecast)


def _check_templates(
    session: Session,
    workspace_id: int,
    spec: CampaignSpec,
    account: ProviderAccount | None,
    errors: dict[str, str],
    warnings: list[str],
) -> None:
    if not spec.template_ids:
        errors["template_ids"] = _("Pick at least one template.")
        return
    templates = session.scalars(
        select(Template).where(Template.workspace_id == workspace_id, Template.id.in_(spec.template_ids))
    ).all()
    from .rendering import known_fields

    known = known_fields(session, workspace_id)
    problems = []
    for template in templates:
        unknown = sorted(set(template.variables or ()) - known)
        if unknown:
            problems.append(
                _(
                    "Template “%(name)s” uses unknown variables: %(names)s.",
                    name=template.name,
                    names=", ".join(unknown),
                )
            )
    if problems:
        errors["template_ids"] = " ".join(problems) + " " + _("Fix the template or add the custom fields.")
    if account is not None and account.kind == "sendcloud":
        pending = [t.name for t in templates if t.review_state != "approved"]
        if pending:
            warnings.append(
                _(
                    "Not approved by SendCloud yet: %(names)s. SendCloud may refuse inline content "
                    "that does not match an approved template; the campaign would then pause until "
                    "it is approved.",
                    names=", ".join(pending),
                )
            )


def _check_senders(session: Session, workspace_id: int, spec: CampaignSpec, errors: dict[str, str]) -> None:
    if not spec.sender_ids:
        errors["sender_ids"] = _("Pick at least one sender.")
        return
    senders = session.scalars(
        select(Sender).where(Sender.workspace_id == workspace_id, Sender.id.in_(spec.sender_ids))
    ).all()
    missing = [s.from_address for s in senders if not (s.postal_address or "").strip()]
    if missing:
        errors["sender_ids"] = _(
            "%(senders)s: no postal address: add one to the sender in setup.", senders=", ".join(missing)
        )


def audience_spec(spec: CampaignSpec) -> Any:
    from .audience import AudienceSpec

    return AudienceSpec(
        include_tags=tuple(spec.include_tags),
        include_views=tuple(spec.include_views),
        exclude_tags=tuple(spec.exclude_tags),
        exclude_views=tuple(spec.exclude_views),
        skip=spec.skip_count,
        max=spec.max_count,
    )


def segment_problems(
    session: Session, workspace_id: int, spec: CampaignSpec, directory: ContactDirectory
) -> dict[str, str]:
    """Tags and views of the audience that were deleted since it was chosen (the host's CRM
    deletes tags without asking the plugin), said beside the include or exclude choice."""
    tags = {t.id for t in directory.tags(session, workspace_id)}
    views = {v.id for v in directory.views(session, workspace_id)}
    errors: dict[str, str] = {}
    if (set(spec.include_tags) - tags) or (set(spec.include_views) - views):
        errors["include"] = _("Some of the chosen tags or views no longer exist; pick again.")
    if (set(spec.exclude_tags) - tags) or (set(spec.exclude_views) - views):
        errors["exclude"] = _("Some of the excluded tags or views no longer exist; pick again.")
    return errors


def _check_audience(
    session: Session,
    workspace_id: int,
    spec: CampaignSpec,
    *,
    directory: ContactDirectory,
    errors: dict[str, str],
) -> Any:
    if not spec.include_tags and not spec.include_views:
        errors["include"] = _("Choose at least one tag or view to send to.")
        return None
    problems = segment_problems(session, workspace_id, spec, directory)
    if problems:
        errors.update(problems)
        return None
    counts = count(session, workspace_id, spec, directory=directory)
    if counts.final == 0:
        errors.update(_why_nobody(spec, counts))
    return counts


def _why_nobody(spec: CampaignSpec, counts: Any) -> dict[str, str]:
    """Which choice left the campaign without recipients, said beside that choice."""
    if counts.audience == 0:
        return {"include": _("The chosen tags and views have no contacts.")}
    left = counts.audience - counts.excluded
    if left <= 0:
        return {"exclude": _("The exclusions remove everyone: no recipient is left.")}
    if left - counts.suppressed - counts.invalid <= 0:
        return {
            "include": _(
                "Every contact left is suppressed (unsubscribed, bounced) or has an invalid address."
            )
        }
    return {
        "skip_count": _(
            "Skipping %(skip)s contacts leaves nobody: the audience has only %(count)s sendable contacts.",
            skip=spec.skip_count,
            count=left - counts.suppressed - counts.invalid,
        )
    }


def count(session: Session, workspace_id: int, spec: CampaignSpec, *, directory: ContactDirectory) -> Any:
    """Live audience counts (audience, excluded, suppressed, invalid, final) for ``spec``."""
    from .audience import count_audience

    return count_audience(session, directory, workspace_id, audience_spec(spec))


def forecast_for(
    session: Session,
    workspace_id: int,
    account: ProviderAccount | None,
    recipients: int,
    settings: Settings,
    *,
    owner_id: str | None = None,
    team: str | None = None,
) -> Any:
    """The quota helper's forecast (cost, today's room, days needed), or ``None`` without an account."""
    if account is None:
        return None
    from ..forecast import forecast

    try:
        return forecast(session, workspace_id, account, recipients, settings, owner_id=owner_id, team=team)
    except MarketingError:
        return None


def _check_forecast(
    session: Session,
    workspace_id: int,
    account: ProviderAccount,
    spec: CampaignSpec,
    recipients: int,
    settings: Settings,
    errors: dict[str, str],
    warnings: list[str],
    *,
    owner: tuple[str | None, str | None],
) -> Any:
    result = forecast_for(
        session, workspace_id, account, recipients, settings, owner_id=owner[0], team=owner[1]
    )
    if result is None:
        return None
    days = getattr(result, "days_needed", None)
    if not spec.spread_over_days and days is not None and days > 1:
        errors["spread_over_days"] = _(
            "At the current quota this campaign needs %(days)s days: allow it to continue on the following "
            "days, or send fewer with the custom send count.",
            days=days,
        )
    if getattr(result, "balance_ok", True) is False:
        warnings.append(_("The balance may not cover the estimated cost; sending pauses when it runs out."))
    return result


# -- submission and approval ---------------------------------------------------------------------
def submit(
    session: Session,
    workspace_id: int,
    campaign_id: int,
    *,
    directory: ContactDirectory,
    settings: Settings,
    send_now: bool = False,
    now: dt.datetime | None = None,
) -> Submitted:
    """Check the campaign and send it on its way: to approval when it is larger than the
    approval threshold, else scheduled (at its time, or now).  ``send_now`` drops a stored time
    (the "start now" of a campaign that missed its time).  Raises :class:`CampaignErrors`."""
    now = now or utcnow()
    campaign = get_campaign(session, workspace_id, campaign_id)
    if send_now:
        campaign.send_at = None
    if campaign.status not in (lifecycle.DRAFT, lifecycle.MISSED):
        raise InvalidTransition(
            _(
                "A campaign that is %(status)s cannot be submitted.",
                status=lifecycle.status_label(campaign.status),
            )
        )
    verdict = check(
        session,
        workspace_id,
        spec_of(campaign),
        directory=directory,
        settings=settings,
        now=now,
        owner=(campaign.owner_id, campaign.team),
    )
    if verdict.errors:
        raise CampaignErrors(verdict.errors)
    if campaign.account_id is None:
        account = default_account(session, workspace_id)
        campaign.account_id = account.id if account is not None else None
    threshold = settings.approval_threshold
    if threshold and verdict.counts.final > threshold and campaign.approved_at is None:
        lifecycle.transition(session, campaign, lifecycle.AWAITING_APPROVAL, now=now)
        return Submitted(lifecycle.AWAITING_APPROVAL, start_now=False)
    return _schedule(session, campaign, now)


def _schedule(session: Session, campaign: Campaign, now: dt.datetime) -> Submitted:
    start_now = campaign.send_at is None or campaign.send_at <= now
    if start_now:
        campaign.send_at = now
    lifecycle.transition(session, campaign, lifecycle.SCHEDULED, now=now)
    session.flush()
    return Submitted(lifecycle.SCHEDULED, start_now=start_now)


def approve(
    session: Session, workspace_id: int, campaign_id: int, *, by: str, now: dt.datetime | None = None
) -> Submitted:
    """An admin lets a large campaign go; if its time passed while it waited, it starts now."""
    now = now or utcnow()
    campaign = get_campaign(session, workspace_id, campaign_id)
    if campaign.status != lifecycle.AWAITING_APPROVAL:
        raise InvalidTransition(_("Only a campaign awaiting approval can be approved."))
    campaign.approved_by = by
    campaign.approved_at = now
    campaign.last_error = None
    return _schedule(session, campaign, now)


def reject(session: Session, workspace_id: int, campaign_id: int, *, by: str, note: str = "") -> Campaign:
    """Back to draft, with the admin's reason kept where its author sees it."""
    campaign = get_campaign(session, workspace_id, campaign_id)
    if campaign.status != lifecycle.AWAITING_APPROVAL:
        raise InvalidTransition(_("Only a campaign awaiting approval can be rejected."))
    lifecycle.transition(session, campaign, lifecycle.DRAFT)
    note = " ".join(note.split())
    campaign.last_error = (
        _("Not approved by %(user)s: %(note)s", user=by, note=note)
        if note
        else _("Not approved by %(user)s.", user=by)
    )
    session.flush()
    return campaign


# -- other actions -------------------------------------------------------------------------------
def duplicate(
    session: Session, workspace_id: int, campaign_id: int, *, user_id: str, team: str | None = None
) -> Campaign:
    """A new draft with the same content and audience (not its time: that is rarely still right)."""
    source = get_campaign(session, workspace_id, campaign_id)
    spec = dataclasses.replace(
        spec_of(source), send_at=None, name=_("%(name)s (copy)", name=source.name)[:200]
    )
    return save_draft(session, workspace_id, spec, user_id=user_id, team=team)


def delete_draft(session: Session, workspace_id: int, campaign_id: int) -> None:
    campaign = get_campaign(session, workspace_id, campaign_id)
    if campaign.status != lifecycle.DRAFT:
        raise InvalidTransition(_("Only drafts can be deleted; cancel the campaign instead."))
    # Recipients have no foreign key to cascade through (see CampaignRecipient); a draft has
    # none unless a freeze was interrupted, and those go with it.
    session.execute(delete(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign.id))
    session.delete(campaign)
    session.flush()


def pause(session: Session, workspace_id: int, campaign_id: int, *, by: str) -> None:
    """The user's pause, through the runner (it owns the running campaign's batches)."""
    from . import runner

    get_campaign(session, workspace_id, campaign_id)
    runner.pause(session, campaign_id, by=by)


def resume(session: Session, workspace_id: int, campaign_id: int) -> None:
    from . import runner

    get_campaign(session, workspace_id, campaign_id)
    runner.resume(session, campaign_id)


def cancel(session: Session, workspace_id: int, campaign_id: int) -> None:
    from . import runner

    get_campaign(session, workspace_id, campaign_id)
    runner.cancel(session, campaign_id)


# -- list and progress ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CampaignPage:
    rows: list[Campaign]
    total: int
    page: int
    pages: int
    all_count: int


def list_campaigns(
    session: Session,
    workspace_id: int,
    *,
    q: str = "",
    status: str = "",
    sort: str = "created_at",
    order: str = "desc",
    page: int = 1,
    per_page: int = 50,
) -> CampaignPage:
    scope = select(Campaign).where(Campaign.workspace_id == workspace_id)
    all_count = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    needle = " ".join(q.split()).lower()
    if needle:  # the name, or the SendCloud label a campaign was filed under
        scope = scope.where(
            or_(
                func.lower(Campaign.name).contains(needle, autoescape=True),
                func.lower(Campaign.label).contains(needle, autoescape=True),
            )
        )
    if status in lifecycle.STATUSES:
        scope = scope.where(Campaign.status == status)
    total = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    pages = max(1, math.ceil(total / per_page))
    page = min(page, pages)
    column = getattr(Campaign, sort)
    ordering = column.desc() if order == "desc" else column.asc()
    rows = session.scalars(
        scope.order_by(ordering, Campaign.id.desc()).offset((page - 1) * per_page).limit(per_page)
    ).all()
    return CampaignPage(rows=list(rows), total=total, page=page, pages=pages, all_count=all_count)


def rate_per_minute(
    session: Session, campaign: Campaign, now: dt.datetime, *, default_pace: float | None = None
) -> float:
    """Recipients sent per minute over the last few minutes, from the batch rows (a campaign has a
    hundred times fewer batches than recipients, so this stays cheap at every poll).

    Why five minutes, capped at the pace: batches go out a hundred at a time, so at a paced rate
    of 120 a minute a two-minute window held two or three of them and the figure jumped between
    100 and 150 (and the time left with it).  When nothing was sent in the window's first minute
    (a start or a resume within it) the rate is taken over the time since the first batch in
    the window, not over minutes the campaign was not sending.  The pace is the campaign's send
    rate (mails per second), else ``default_pace`` (the setting the runner falls back to).
    """
    since = now - dt.timedelta(seconds=RATE_WINDOW_SECONDS)
    sent, oldest = session.execute(
        select(func.coalesce(func.sum(SendBatch.size), 0), func.min(SendBatch.sent_at)).where(
            SendBatch.campaign_id == campaign.id, SendBatch.sent_at.is_not(None), SendBatch.sent_at >= since
        )
    ).one()
    if sent:
        span = float(RATE_WINDOW_SECONDS)
        if oldest is not None and (oldest - since).total_seconds() > 60:
            span = max(60.0, (now - oldest).total_seconds())
        rate = float(sent) * 60.0 / span
        pace = campaign.send_rate if campaign.send_rate is not None else default_pace
        if pace:
            rate = min(rate, float(pace) * 60.0)
        return rate
    if campaign.status == lifecycle.RUNNING and campaign.started_at and campaign.sent:
        elapsed = max((now - campaign.started_at).total_seconds(), 1.0)
        return campaign.sent * 60.0 / elapsed
    return 0.0


def status_of(
    session: Session,
    campaign: Campaign,
    *,
    now: dt.datetime | None = None,
    default_pace: float | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The live state of a campaign for its page's progress bar (``default_pace``: see
    :func:`rate_per_minute`; ``settings``: to tell when today's quota cannot cover the rest,
    see :func:`quota_outlook`)."""
    now = now or utcnow()
    total = campaign.total or 0
    done = (campaign.sent or 0) + (campaign.failed or 0) + (campaign.skipped or 0)
    pending = max(total - done, 0)
    rate = (
        rate_per_minute(session, campaign, now, default_pace=default_pace)
        if campaign.status == lifecycle.RUNNING
        else 0.0
    )
    eta = int(pending * 60 / rate) if rate > 0 and pending else None
    days, note = (None, "") if settings is None else quota_outlook(session, campaign, pending, settings, now)
    if note:  # the rate alone would promise the end today
        eta = None
    return {
        "id": campaign.id,
        "status": campaign.status,
        "status_label": lifecycle.status_label(campaign.status),
        "total": total,
        "sent": campaign.sent or 0,
        "failed": campaign.failed or 0,
        "skipped": campaign.skipped or 0,
        "pending": pending,
        "percent": round(100.0 * (campaign.sent or 0) / total, 1) if total else 0.0,
        "rate_per_minute": round(rate, 1),
        "eta_seconds": eta,
        "eta_days": days,
        #: ``eta_days`` in words, in the user's language ("about 3 days"), or "".
        "eta_text": ngettext("about %(num)s day", "about %(num)s days", days) if days else "",
        "quota_note": note,
        "pause_reason": campaign.pause_reason,
        "pause_text": lifecycle.pause_reason_text(campaign.pause_reason, campaign.pause_detail)
        if campaign.status == lifecycle.PAUSED
        else "",
        "last_error": campaign.last_error,
        "final": campaign.status in lifecycle.FINAL,
    }


def quota_outlook(
    session: Session, campaign: Campaign, pending: int, settings: Settings, now: dt.datetime
) -> tuple[int | None, str]:
    """``(days, note)`` when today's quota cannot cover what a running (or quota-paused)
    campaign still has to send, else ``(None, "")``.

    Why: the time left comes from the sending rate, so a campaign of 50,000 on a 10,000 daily
    quota showed "2 h 5 min" until the gate paused it.  The days and the room left today come
    from the same forecast the form shows before launch (the day's ledger, the trigger share,
    the owner's cap).  Batches out at the provider (``sending``) already hold their quota in
    the day's ledger, so their recipients are not asked of it a second time (with batches in
    flight, a campaign that fits today showed "about 2 days" at its start).
    """
    from .. import forecast, quota
    from ..i18n import format_datetime, format_number

    waiting = campaign.status == lifecycle.PAUSED and campaign.pause_reason in ("quota", "cap")
    if not pending or campaign.account_id is None or not (campaign.status == lifecycle.RUNNING or waiting):
        return None, ""
    account = session.get(ProviderAccount, campaign.account_id)
    if account is None or account.workspace_id != campaign.workspace_id:
        return None, ""
    held = session.scalar(
        select(func.coalesce(func.sum(SendBatch.size), 0)).where(
            SendBatch.campaign_id == campaign.id, SendBatch.status == "sending"
        )
    )
    pending = max(0, pending - int(held or 0))
    if not pending:
        return None, ""
    outlook = forecast.forecast(
        session,
        campaign.workspace_id,
        account,
        pending,
        settings,
        owner_id=campaign.owner_id,
        team=campaign.team,
        now=now,
    )
    if outlook.fits_today or outlook.remaining_today is None:
        return None, ""
    resets = format_datetime(quota.next_provider_midnight(now))
    days = outlook.days_needed
    if outlook.remaining_today > 0:
        note = _(
            "Today's quota covers about %(n)s more; "
            "the rest goes out after the daily quota resets (%(time)s).",
            n=format_number(outlook.remaining_today),
            time=resets,
        )
    else:
        note = _("Today's quota is used up; sending goes on after it resets (%(time)s).", time=resets)
    if days is None:
        note = f"{note} " + _("At the current quota the rest cannot be planned (check the quota page).")
    return days, note
