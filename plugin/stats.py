"""Campaign and account statistics, read only from the aggregated counters.

Why only :class:`~plugin.models.StatCounter`: a campaign of a million recipients produces
millions of events and recipient rows, and its statistics page must render in well under a
second.  Every fact is added to a counter once when it happens (:mod:`plugin.counters`), so a
page view reads a few thousand pre-summed cells, whatever the campaign's size.  Nothing here
scans events or recipients.

The rates are the ones users know from SendCloud and the Chinese EDM consoles:

* send rate = sent / submitted
* delivery rate = delivered / sent
* open rate = unique (human) openers / delivered
* click rate = unique clickers / delivered
* reply rate = repliers / delivered

Opens by privacy proxies and link scanners (``machine_opened``) are shown apart and never count
as openers.  A rate whose denominator is 0 is ``None`` (shown as a dash), not 0 %.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import counters
from .errors import NotFound
from .i18n import _
from .models import Campaign, Sender, StatCounter, Template, TrackedLink

#: The funnel, in order: metric behind each step.
FUNNEL = ("submitted", "sent", "delivered", "unique_opened", "unique_clicked", "replied")
#: Metrics drawn in the time series.
SERIES_METRICS = ("sent", "delivered", "unique_opened", "unique_clicked", "replied", "bounced", "invalid")
#: rate name -> (numerator metric, denominator metric)
RATES: dict[str, tuple[str, str]] = {
    "send_rate": ("sent", "submitted"),
    "delivery_rate": ("delivered", "sent"),
    "open_rate": ("unique_opened", "delivered"),
    "click_rate": ("unique_clicked", "delivered"),
    "reply_rate": ("replied", "delivered"),
    "bounce_rate": ("bounced", "sent"),
    "invalid_rate": ("invalid", "sent"),
    "unsubscribe_rate": ("unsubscribed", "delivered"),
    "complaint_rate": ("complained", "delivered"),
}
#: Longest account table a request may ask for (one row per day).
MAX_DAYS = 366
#: Rows of the per-domain table; the rest is summed into one "other domains" row.
DOMAIN_ROWS = 20


def ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, or ``None`` when there is nothing to divide by."""
    return numerator / denominator if denominator > 0 else None


def rates_of(totals: Mapping[str, int]) -> dict[str, float | None]:
    return {name: ratio(totals.get(num, 0), totals.get(den, 0)) for name, (num, den) in RATES.items()}


def metric_labels() -> dict[str, str]:
    """What each metric is called on the pages (translated for the current request)."""
    return {
        "submitted": _("Submitted"),
        "sent": _("Sent"),
        "delivered": _("Delivered"),
        "opened": _("Opens"),
        "unique_opened": _("Opened"),
        "machine_opened": _("Machine opens"),
        "clicked": _("Clicks"),
        "unique_clicked": _("Clicked"),
        "replied": _("Replied"),
        "bounced": _("Bounced"),
        "soft_bounced": _("Soft bounces"),
        "invalid": _("Invalid"),
        "unsubscribed": _("Unsubscribed"),
        "complained": _("Complaints"),
        "failed": _("Failed to send"),
        "skipped": _("Skipped"),
        "in_flight": _("Awaiting delivery report"),
        "pending": _("Not sent yet"),
    }


@dataclasses.dataclass(frozen=True)
class CampaignStats:
    """Everything the top of a campaign's statistics page shows."""

    campaign_id: int
    totals: dict[str, int]
    rates: dict[str, float | None]
    #: ``[(metric, count, share of the first step or None)]`` in funnel order.
    funnel: list[tuple[str, int, float | None]]
    #: Where every recipient ended up (the pie): delivered, bounced, invalid, failed, skipped,
    #: awaiting a delivery report, not sent yet.
    outcomes: dict[str, int]


def _campaign(session: Session, workspace_id: int, campaign_id: int) -> Campaign:
    campaign = session.scalar(
        select(Campaign).where(Campaign.id == campaign_id, Campaign.workspace_id == workspace_id)
    )
    if campaign is None:
        raise NotFound(_("No such campaign."))
    return campaign


def _cells(campaign_id: int, dimension: str, metrics: Iterable[str] = counters.METRICS):
    """The WHERE clause every read uses.

    Naming the metrics lets both databases seek the unique index
    ``(campaign_id, metric, dimension, key, bucket)`` once per metric instead of reading every
    cell of the campaign (a big campaign has hundreds of thousands of per-domain cells).
    """
    return (
        StatCounter.campaign_id == campaign_id,
        StatCounter.metric.in_(list(metrics)),
        StatCounter.dimension == dimension,
    )


def _totals(session: Session, campaign_id: int) -> dict[str, int]:
    result = dict.fromkeys(counters.METRICS, 0)
    rows = session.execute(
        select(StatCounter.metric, func.sum(StatCounter.count))
        .where(*_cells(campaign_id, "all"))
        .group_by(StatCounter.metric)
    )
    for metric, count in rows:
        result[metric] = int(count or 0)
    return result


def campaign_stats(session: Session, workspace_id: int, campaign_id: int) -> CampaignStats:
    """Totals, rates, funnel and outcomes of one campaign.

    :raises NotFound: the campaign is not this workspace's.
    """
    campaign = _campaign(session, workspace_id, campaign_id)
    totals = _totals(session, campaign.id)
    first = totals[FUNNEL[0]] or totals["sent"]
    funnel = [(m, totals[m], ratio(totals[m], first)) for m in FUNNEL]
    finished = totals["delivered"] + totals["bounced"] + totals["invalid"]
    outcomes = {
        "delivered": totals["delivered"],
        "bounced": totals["bounced"],
        "invalid": totals["invalid"],
        "failed": campaign.failed or 0,
        "skipped": campaign.skipped or 0,
        "in_flight": max(0, totals["sent"] - finished),
        "pending": _not_sent_yet(campaign),
    }
    return CampaignStats(campaign.id, totals, rates_of(totals), funnel, outcomes)


def _not_sent_yet(campaign: Campaign) -> int:
    """Recipients the runner has not handed over yet (the campaign row keeps its own progress).

    ``total`` counts the rows frozen ``pending``; addresses skipped at freezing are not part of
    it, those skipped later (suppressed while the campaign ran) are.
    """
    counts = campaign.audience_counts or {}
    frozen_skipped = int(counts.get("suppressed") or 0) + int(counts.get("invalid") or 0)
    later_skipped = max(0, (campaign.skipped or 0) - frozen_skipped)
    return max(0, (campaign.total or 0) - (campaign.sent or 0) - (campaign.failed or 0) - later_skipped)


@dataclasses.dataclass(frozen=True)
class Series:
    """Periods (start, aware in the user's zone) with one count list per metric, gaps filled."""

    by: str
    periods: list[dt.datetime]
    values: dict[str, list[int]]


def time_series(
    session: Session,
    workspace_id: int,
    campaign_id: int,
    *,
    by: str = "day",
    tz: dt.tzinfo | str | None = None,
    metrics: Iterable[str] = SERIES_METRICS,
    max_periods: int = 24 * 31,
) -> Series:
    """Per-hour or per-day counts in ``tz``, every period between the first and last shown.

    One query for all metrics.  Hourly series are cut to the last ``max_periods`` hours so a
    campaign whose opens trickle in for months still draws a readable chart.
    """
    if by not in ("hour", "day"):
        raise ValueError("by must be 'hour' or 'day'")
    _campaign(session, workspace_id, campaign_id)
    zone = ZoneInfo(tz) if isinstance(tz, str) else (tz or dt.UTC)
    wanted = list(metrics)
    rows = session.execute(
        select(StatCounter.metric, StatCounter.bucket, func.sum(StatCounter.count))
        .where(*_cells(campaign_id, "all", wanted))
        .group_by(StatCounter.metric, StatCounter.bucket)
    )
    folded: dict[tuple[str, dt.datetime], int] = {}
    for metric, bucket, count in rows:
        start = _period_start(bucket, zone, by)
        folded[(metric, start)] = folded.get((metric, start), 0) + int(count or 0)
    starts = sorted({start for _m, start in folded})
    periods = _fill(starts[0], starts[-1], by, zone) if starts else []
    if len(periods) > max_periods:
        periods = periods[-max_periods:]
    values = {m: [folded.get((m, p), 0) for p in periods] for m in wanted}
    return Series(by, periods, values)


def _period_start(bucket: dt.datetime, zone: dt.tzinfo, by: str) -> dt.datetime:
    if bucket.tzinfo is None:
        bucket = bucket.replace(tzinfo=dt.UTC)
    local = bucket.astimezone(zone).replace(minute=0, second=0, microsecond=0)
    return local.replace(hour=0) if by == "day" else local


def _fill(first: dt.datetime, last: dt.datetime, by: str, zone: dt.tzinfo) -> list[dt.datetime]:
    """Every hour or day from ``first`` to ``last`` (wall-clock days: DST days stay one step)."""
    out: list[dt.datetime] = []
    if by == "hour":
        at = first.astimezone(dt.UTC)
        end = last.astimezone(dt.UTC)
        while at <= end:
            out.append(at.astimezone(zone))
            at += dt.timedelta(hours=1)
        return out
    day = first.date()
    while day <= last.date():
        out.append(dt.datetime.combine(day, dt.time(), tzinfo=zone))
        day += dt.timedelta(days=1)
    return out


@dataclasses.dataclass(frozen=True)
class BreakdownRow:
    key: str
    label: str
    counts: dict[str, int]
    rates: dict[str, float | None]


def breakdown(
    session: Session, workspace_id: int, campaign_id: int, dimension: str, *, limit: int | None = None
) -> list[BreakdownRow]:
    """Per template, sender, link or recipient domain, most mail (or clicks, for links) first.

    With ``limit``, only the first ``limit`` keys are read in full and everything else is one
    row with key ``""`` (the campaign totals minus those rows), so the per-domain table of a
    million-recipient campaign with a hundred thousand company domains stays a few index reads.
    """
    if dimension not in ("template", "sender", "link", "domain"):
        raise ValueError(f"unknown dimension {dimension!r}")
    _campaign(session, workspace_id, campaign_id)
    order = "clicked" if dimension == "link" else "sent"
    keys = _top_keys(session, campaign_id, dimension, order, limit) if limit is not None else None
    cells = _breakdown_cells(session, campaign_id, dimension, keys)
    labels = _labels(session, workspace_id, dimension, cells.keys())
    ordered = sorted(cells, key=lambda k: (-cells[k][order], -cells[k]["delivered"], labels.get(k, k)))
    rows = [BreakdownRow(k, labels.get(k, k), cells[k], rates_of(cells[k])) for k in ordered]
    if limit is not None and len(rows) == limit:
        totals = _totals(session, campaign_id)
        rest = {m: max(0, totals[m] - sum(r.counts[m] for r in rows)) for m in counters.METRICS}
        if dimension == "link":
            rest = {m: (v if m == "clicked" else 0) for m, v in rest.items()}
        if any(rest.values()):
            label = _("All other domains") if dimension == "domain" else _("All others")
            rows.append(BreakdownRow("", label, rest, rates_of(rest)))
    return rows


def _top_keys(session: Session, campaign_id: int, dimension: str, order: str, limit: int) -> list[str]:
    """The ``limit`` keys with the most ``order`` (else ``delivered``), exactly, without ranking
    every key.

    Why not ``GROUP BY key ORDER BY sum LIMIT n``: a B2B list has a hundred thousand company
    domains of a few recipients each, and hashing them all costs most of a second per page view.
    Instead only keys with a cell of at least ``m`` are ranked: a key whose every hourly cell is
    below ``m`` totals less than ``m * hours``, so when the ``limit``-th ranked total reaches
    that, nothing outside can beat it.  Otherwise ``m`` drops and the ranking repeats (``m = 1``
    ranks every key, which small campaigns reach at once).
    """
    for metric in (order, "delivered"):
        where = _cells(campaign_id, dimension, [metric])
        hours, total = session.execute(
            select(func.count(), func.coalesce(func.sum(StatCounter.count), 0)).where(
                *_cells(campaign_id, "all", [metric])
            )
        ).one()
        if not total:
            continue
        floor = max(1, int(total) // (int(hours) * limit * 32))
        while True:
            candidates = select(StatCounter.key).where(*where, StatCounter.count >= floor).distinct()
            keys = list(session.scalars(candidates)) if floor > 1 else None
            ranked = (
                select(StatCounter.key, func.sum(StatCounter.count))
                .where(*where)
                .group_by(StatCounter.key)
                .order_by(func.sum(StatCounter.count).desc(), StatCounter.key)
                .limit(limit)
            )
            if keys is not None and len(keys) <= 2000:  # their totals are a few index seeks
                ranked = ranked.where(StatCounter.key.in_(keys or [""]))
            elif keys is not None:
                ranked = ranked.where(StatCounter.key.in_(candidates))
            rows = session.execute(ranked).all()
            if floor == 1:
                return [key for key, _n in rows]
            if len(rows) == limit and int(rows[-1][1]) >= floor * int(hours):
                return [key for key, _n in rows]
            # Too few keys reach the floor: look further down.  Otherwise lower it to where the
            # last ranked total is certain to beat anything left outside.
            floor = max(1, floor // 8) if len(rows) < limit else max(1, int(rows[-1][1]) // int(hours))
    return []


def _breakdown_cells(
    session: Session, campaign_id: int, dimension: str, keys: list[str] | None
) -> dict[str, dict[str, int]]:
    query = (
        select(StatCounter.key, StatCounter.metric, func.sum(StatCounter.count))
        .where(*_cells(campaign_id, dimension))
        .group_by(StatCounter.key, StatCounter.metric)
    )
    if keys is not None:
        if not keys:
            return {}
        query = query.where(StatCounter.key.in_(keys))
    result: dict[str, dict[str, int]] = {}
    for key, metric, count in session.execute(query):
        result.setdefault(key, dict.fromkeys(counters.METRICS, 0))[metric] = int(count or 0)
    return result


def _labels(session: Session, workspace_id: int, dimension: str, keys: Iterable[str]) -> dict[str, str]:
    """Names for the keys: template names, sender addresses, link URLs (domains name themselves)."""
    ids = [int(k) for k in keys if k.isdigit()]
    if dimension == "domain" or not ids:
        return {}
    if dimension == "template":
        query = select(Template.id, Template.name).where(Template.workspace_id == workspace_id)
        column = Template.id
    elif dimension == "sender":
        query = select(Sender.id, Sender.from_address).where(Sender.workspace_id == workspace_id)
        column = Sender.id
    else:
        query = select(TrackedLink.id, TrackedLink.url).where(TrackedLink.workspace_id == workspace_id)
        column = TrackedLink.id
    found = {str(i): str(name) for i, name in session.execute(query.where(column.in_(ids)))}
    deleted = {
        "template": _("(deleted template)"),
        "sender": _("(deleted sender)"),
        "link": _("(unknown link)"),
    }
    return {k: found.get(k, f"{deleted[dimension]} #{k}") for k in keys}


@dataclasses.dataclass(frozen=True)
class DayRow:
    """One day of the account table (``day`` is ``None`` on the totals row)."""

    day: dt.date | None
    total: int
    delivered: int
    failed: int
    invalid: int
    opened: int
    clicked: int
    delivery_rate: float | None
    failure_rate: float | None


#: Metrics the account table reads: total = sent, failed = bounced (soft, after retries).
_DAY_METRICS = ("sent", "delivered", "bounced", "invalid", "unique_opened", "unique_clicked")


def account_daily(
    session: Session, workspace_id: int, *, start: dt.date, end: dt.date, tz: dt.tzinfo | str | None = None
) -> tuple[list[DayRow], DayRow]:
    """One row per day of ``start..end`` (inclusive, in ``tz``) over all campaigns and trigger
    mail, newest first, and the totals row.

    The query names the workspace's campaigns (and 0, mail outside campaigns), so it seeks the
    counters' unique index (campaign, metric, dimension) per campaign instead of reading the
    per-domain cells of every campaign.
    """
    if end < start:
        start, end = end, start
    if (end - start).days >= MAX_DAYS:
        start = end - dt.timedelta(days=MAX_DAYS - 1)
    zone = ZoneInfo(tz) if isinstance(tz, str) else (tz or dt.UTC)
    since = dt.datetime.combine(start, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=zone).astimezone(dt.UTC)
    campaign_ids = [0, *session.scalars(select(Campaign.id).where(Campaign.workspace_id == workspace_id))]
    rows = session.execute(
        select(StatCounter.metric, StatCounter.bucket, func.sum(StatCounter.count))
        .where(
            StatCounter.campaign_id.in_(campaign_ids),
            StatCounter.workspace_id == workspace_id,
            StatCounter.metric.in_(_DAY_METRICS),
            StatCounter.dimension == "all",
            StatCounter.bucket >= since,
            StatCounter.bucket < until,
        )
        .group_by(StatCounter.metric, StatCounter.bucket)
    )
    per_day: dict[dt.date, dict[str, int]] = {}
    for metric, bucket, count in rows:
        day = _period_start(bucket, zone, "day").date()
        cell = per_day.setdefault(day, dict.fromkeys(_DAY_METRICS, 0))
        cell[metric] += int(count or 0)
    days = []
    day = end
    while day >= start:
        days.append(_day_row(day, per_day.get(day, dict.fromkeys(_DAY_METRICS, 0))))
        day -= dt.timedelta(days=1)
    summed = {m: sum(c[m] for c in per_day.values()) for m in _DAY_METRICS}
    return days, _day_row(None, summed)


def _day_row(day: dt.date | None, c: Mapping[str, int]) -> DayRow:
    return DayRow(
        day=day,
        total=c["sent"],
        delivered=c["delivered"],
        failed=c["bounced"],
        invalid=c["invalid"],
        opened=c["unique_opened"],
        clicked=c["unique_clicked"],
        delivery_rate=ratio(c["delivered"], c["sent"]),
        failure_rate=ratio(c["bounced"] + c["invalid"], c["sent"]),
    )


__all__ = [
    "FUNNEL",
    "RATES",
    "BreakdownRow",
    "CampaignStats",
    "DayRow",
    "Series",
    "account_daily",
    "breakdown",
    "campaign_stats",
    "metric_labels",
    "rates_of",
    "ratio",
    "time_series",
]
