"""Aggregated statistics: one row per (campaign, metric, dimension, key, hour), bumped as facts arrive.

Why counters instead of counting events or recipients per page view: a campaign of a million
recipients produces millions of events, and its stats page must render in well under a second.
Each fact is added once, when it happens (the runner at record time, :mod:`plugin.events` per
stored event), with one ``INSERT ... ON CONFLICT DO UPDATE count = count + n`` per cell on both
databases, so concurrent workers never lose an increment and never need a lock.

A bump writes the campaign-wide cell (``dimension='all'``, ``key=''``) plus one cell for every
dimension it was given (template, sender, link, recipient domain).  ``bucket`` is the UTC hour,
which is enough for per-hour and per-day series in any time zone with whole-hour offsets.
``campaign_id`` 0 holds mail outside campaigns (trigger mail).
"""

from __future__ import annotations

import collections
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import bulk_sql
from .models import StatCounter

METRICS = (
    "submitted",
    "sent",
    "delivered",
    "opened",
    "unique_opened",
    "machine_opened",
    "clicked",
    "unique_clicked",
    "replied",
    "bounced",
    "soft_bounced",
    "invalid",
    "unsubscribed",
    "complained",
)
DIMENSIONS = ("all", "template", "sender", "link", "domain")
_METRICS = frozenset(METRICS)
_TABLE = StatCounter.__table__


def hour_bucket(at: dt.datetime) -> dt.datetime:
    """The UTC hour ``at`` falls in (aware)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def cells(
    *,
    template_id: int | None = None,
    sender_id: int | None = None,
    domain: str | None = None,
    link_id: int | None = None,
) -> list[tuple[str, str]]:
    """``(dimension, key)`` pairs a bump writes: always ``("all", "")``, then each given dimension."""
    out = [("all", "")]
    if template_id is not None:
        out.append(("template", str(template_id)))
    if sender_id is not None:
        out.append(("sender", str(sender_id)))
    if link_id is not None:
        out.append(("link", str(link_id)))
    if domain:
        out.append(("domain", domain.strip().lower()[:255]))
    return out


def bump(
    session: Session,
    *,
    workspace_id: int,
    campaign_id: int,
    metric: str,
    at: dt.datetime,
    n: int = 1,
    template_id: int | None = None,
    sender_id: int | None = None,
    domain: str | None = None,
    link_id: int | None = None,
) -> None:
    """Add ``n`` to ``metric`` in every cell the arguments name.  Does not commit."""
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if n == 0:
        return
    bucket = hour_bucket(at)
    rows = [
        _cell(workspace_id, campaign_id, metric, dimension, key, bucket, n)
        for dimension, key in cells(
            template_id=template_id, sender_id=sender_id, domain=domain, link_id=link_id
        )
    ]
    add_rows(session, rows)


def _cell(
    workspace_id: int, campaign_id: int, metric: str, dimension: str, key: str, bucket: dt.datetime, n: int
) -> dict:
    """One prepared cell of ``add_rows``."""
    return {
        "workspace_id": workspace_id,
        "campaign_id": campaign_id,
        "metric": metric,
        "dimension": dimension,
        "key": key,
        "bucket": bucket,
        "count": n,
    }


def add_rows(session: Session, rows: Iterable[dict]) -> None:
    """Upsert prepared cells (``workspace_id, campaign_id, metric, dimension, key, bucket, count``).

    Rows are sorted so that two transactions bumping the same cells take their row locks in the
    same order (PostgreSQL would otherwise be able to deadlock two concurrent workers).
    """
    merged: dict[tuple, list] = {}  # cell -> [workspace_id, count]
    for row in rows:
        key = (row["campaign_id"], row["metric"], row["dimension"], row["key"], row["bucket"])
        cell = merged.get(key)
        if cell is None:
            merged[key] = [row["workspace_id"], row["count"]]
        else:
            cell[1] += row["count"]
    _upsert_merged(session, merged)


def _upsert_merged(session: Session, merged: dict[tuple, list]) -> None:
    """Upsert cells keyed ``(campaign_id, metric, dimension, key, bucket)`` → ``[workspace_id,
    count]``, in key order (see :func:`add_rows`)."""
    if not merged:
        return
    ordered = sorted(merged)  # buckets are aware UTC hours (``hour_bucket``): they order as times
    to_db = bulk_sql.to_db(session, _TABLE.c.bucket)
    buckets = {}
    for at in {k[4] for k in ordered}:
        value = to_db(at)  # PostgreSQL's JSON rows take the text: convert once, not once per cell
        buckets[at] = value.isoformat() if isinstance(value, dt.datetime) else value
    values = [(merged[k][0], *k[:4], buckets[k[4]], merged[k][1]) for k in ordered]
    bulk_sql.executemany(session, _UPSERT, values, postgres_sql=_UPSERT_PG)


#: One statement for both databases (``ON CONFLICT ... DO UPDATE`` and ``excluded`` are common
#: to SQLite and PostgreSQL), run through the driver's executemany (see ``plugin.bulk_sql``).
_COLUMNS = '(workspace_id, campaign_id, metric, dimension, "key", bucket, count)'
_ADD_ON_CONFLICT = (
    'ON CONFLICT (workspace_id, campaign_id, metric, dimension, "key", bucket) '
    "DO UPDATE SET count = marketing_stat_counters.count + excluded.count"
)
_UPSERT = (
    f"INSERT INTO marketing_stat_counters {_COLUMNS} "  # noqa: S608 (constant fragments, no input)
    f"VALUES (?, ?, ?, ?, ?, ?, ?) {_ADD_ON_CONFLICT}"
)
#: The same for PostgreSQL, all cells in one statement (``bulk_sql.executemany``'s JSON form).
_UPSERT_PG = (
    f"INSERT INTO marketing_stat_counters {_COLUMNS} "  # noqa: S608 (constant fragments, no input)
    "SELECT (e->>0)::integer, (e->>1)::integer, e->>2, e->>3, e->>4, (e->>5)::timestamptz, "
    f"(e->>6)::integer FROM jsonb_array_elements(?::jsonb) AS e {_ADD_ON_CONFLICT}"
)


def send_rows(
    *,
    workspace_id: int,
    campaign_id: int,
    at: dt.datetime,
    template_id: int | None,
    sender_id: int | None,
    outcomes: Iterable[tuple[str, bool]],
) -> list[dict]:
    """Cells for ``submitted`` (every address handed over) and ``sent`` (accepted) of one batch,
    as :func:`add_rows` takes them (a caller adding other cells in the same upsert)."""
    merged = _send_cells(workspace_id, campaign_id, at, template_id, sender_id, outcomes)
    return [
        _cell(ws, c, metric, dim, key, bucket, n) for (c, metric, dim, key, bucket), (ws, n) in merged.items()
    ]


def add_send_counts(
    session: Session,
    *,
    workspace_id: int,
    campaign_id: int,
    at: dt.datetime,
    template_id: int | None,
    sender_id: int | None,
    outcomes: Iterable[tuple[str, bool]],
) -> None:
    """``add_rows(send_rows(...))`` without a dict per cell: the runner counts every batch this
    way (a hundred outcomes, a hundred cells with the per-domain ones), in the transaction that
    records it, so the counts are exactly the recorded results.  Does not commit."""
    _upsert_merged(session, _send_cells(workspace_id, campaign_id, at, template_id, sender_id, outcomes))


def _send_cells(
    workspace_id: int,
    campaign_id: int,
    at: dt.datetime,
    template_id: int | None,
    sender_id: int | None,
    outcomes: Iterable[tuple[str, bool]],
) -> dict[tuple, list]:
    bucket = hour_bucket(at)
    # Count per domain first, then write each cell once: a batch has 100 outcomes but only a few
    # cells (the campaign's, its template's and sender's, one per domain), and a row per outcome
    # and cell cost more than the upsert they collapse into.
    submitted: collections.Counter[str | None] = collections.Counter()
    sent: collections.Counter[str | None] = collections.Counter()
    for email, accepted in outcomes:
        domain = email.rpartition("@")[2].strip().lower()[:255] or None
        submitted[domain] += 1
        if accepted:
            sent[domain] += 1
    common = cells(template_id=template_id, sender_id=sender_id)
    merged: dict[tuple, list] = {}
    for metric, by_domain in (("submitted", submitted), ("sent", sent)):
        total = sum(by_domain.values())
        if not total:
            continue
        for dimension, key in common:
            merged[(campaign_id, metric, dimension, key, bucket)] = [workspace_id, total]
        for domain, n in by_domain.items():
            if domain:
                merged[(campaign_id, metric, "domain", domain, bucket)] = [workspace_id, n]
    return merged


def count_outside_campaigns(session: Session, workspace_id: int, address: str, *, accepted: bool) -> None:
    """Count one mail sent outside campaigns (campaign 0: trigger mail, the wizard's reply-to
    confirmation) as campaigns count theirs: submitted, and sent when accepted.  Their delivery
    and bounce events already count there, and the account's daily table adds campaign 0 in:
    without the send side it showed more mails delivered than sent.  Does not commit."""
    rows = send_rows(
        workspace_id=workspace_id,
        campaign_id=0,
        at=dt.datetime.now(dt.UTC),
        template_id=None,
        sender_id=None,
        outcomes=[(address, accepted)],
    )
    add_rows(session, rows)


def totals(session: Session, campaign_id: int) -> dict[str, int]:
    """Every metric's campaign total (missing metrics are 0)."""
    result = dict.fromkeys(METRICS, 0)
    rows = session.execute(
        select(StatCounter.metric, func.sum(StatCounter.count))
        .where(StatCounter.campaign_id == campaign_id, StatCounter.dimension == "all")
        .group_by(StatCounter.metric)
    )
    for metric, count in rows:
        result[metric] = int(count or 0)
    return result


def series(
    session: Session,
    campaign_id: int,
    metric: str,
    *,
    by: str = "hour",
    tz: dt.tzinfo | str | None = None,
) -> list[tuple[dt.datetime, int]]:
    """``(start of hour or day in tz, count)`` in time order, only periods with a count."""
    if by not in ("hour", "day"):
        raise ValueError("by must be 'hour' or 'day'")
    zone = ZoneInfo(tz) if isinstance(tz, str) else (tz or dt.UTC)
    rows = session.execute(
        select(StatCounter.bucket, func.sum(StatCounter.count))
        .where(
            StatCounter.campaign_id == campaign_id,
            StatCounter.metric == metric,
            StatCounter.dimension == "all",
        )
        .group_by(StatCounter.bucket)
    )
    folded: dict[dt.datetime, int] = defaultdict(int)
    for bucket, count in rows:
        local = bucket.astimezone(zone)
        start = local.replace(minute=0, second=0, microsecond=0)
        if by == "day":
            start = start.replace(hour=0)
        folded[start] += int(count or 0)
    return sorted(folded.items())


def breakdown(session: Session, campaign_id: int, dimension: str) -> dict[str, dict[str, int]]:
    """``{key: {metric: count}}`` for one dimension (template, sender, link or domain)."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}")
    result: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(StatCounter.key, StatCounter.metric, func.sum(StatCounter.count))
        .where(StatCounter.campaign_id == campaign_id, StatCounter.dimension == dimension)
        .group_by(StatCounter.key, StatCounter.metric)
    )
    for key, metric, count in rows:
        result.setdefault(key, dict.fromkeys(METRICS, 0))[metric] = int(count or 0)
    return result


__all__ = [
    "DIMENSIONS",
    "METRICS",
    "add_rows",
    "add_send_counts",
    "breakdown",
    "bump",
    "cells",
    "hour_bucket",
    "send_rows",
    "series",
    "totals",
]
