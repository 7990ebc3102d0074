"""Statistics pages: a campaign's funnel, outcomes, time series and breakdowns; the account's
daily table with CSV export; and (views in :mod:`.campaign_recipients`) the recipients drill-down.

Every role reads statistics (``view``).  The pages only call :mod:`plugin.stats`, which reads the
aggregated counters, so they stay fast for campaigns of any size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from babel.numbers import format_percent
from flask import Blueprint, Response, abort, render_template, request, stream_with_context, url_for
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import i18n, stats
from ..access import current_workspace
from ..campaigns import lifecycle
from ..config import Settings
from ..csv_export import stream_csv
from ..errors import NotFound
from ..extension import get_state
from ..i18n import _, current_locale, user_timezone
from ..models import Campaign, StatCounter
from ..schemas.common import MAX_ID
from . import admin, campaign_recipients
from .security import guard_page

CAMPAIGN = f"/campaigns/<int(min=1,max={MAX_ID}):campaign_id>"
#: How many recent campaigns the account page lists.
RECENT_CAMPAIGNS = 20


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_stats", __name__, template_folder="../templates")
    bp.before_request(_guard)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/stats", endpoint="index", view_func=account)
    bp.add_url_rule(f"{CAMPAIGN}/stats", endpoint="campaign", view_func=campaign_page)
    campaign_recipients.register(bp, CAMPAIGN)
    return bp


def _guard():
    return guard_page(campaign_recipients.permission_for(request))


def _ws() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def percent(value: float | None) -> str:
    """A rate as the user's locale writes percentages; a dash when there is nothing to divide."""
    if value is None:
        return "—"
    return format_percent(value, "#,##0.0%", locale=current_locale())


# -- campaign ------------------------------------------------------------------------------------
class CampaignArgs(Schema):
    """``by``: the timeline's period; unset, per day once the campaign's activity spans two days
    or more, per hour before (a campaign read on the day it went out would otherwise show one
    lone point per metric)."""

    class Meta:
        unknown = EXCLUDE

    by = fields.String(load_default=None, validate=validate.OneOf(["day", "hour"]))


def campaign_page(campaign_id: int):
    state = get_state()
    ws = _ws()
    try:
        args = CampaignArgs().load(request.args.to_dict())
    except ValidationError:
        args = CampaignArgs().load({})
    tz = user_timezone()
    try:
        summary = stats.campaign_stats(state.session, ws, campaign_id)
    except NotFound:
        abort(404)
    campaign = state.session.get(Campaign, campaign_id)
    by, series = _timeline(state.session, ws, campaign_id, args["by"], tz)
    tables = {
        "template": stats.breakdown(state.session, ws, campaign_id, "template"),
        "sender": stats.breakdown(state.session, ws, campaign_id, "sender"),
        "link": stats.breakdown(state.session, ws, campaign_id, "link", limit=50),
        "domain": stats.breakdown(state.session, ws, campaign_id, "domain", limit=stats.DOMAIN_ROWS),
    }
    labels = stats.metric_labels()
    period_labels = [i18n.chart_day(p) if by == "day" else i18n.chart_hour(p) for p in series.periods]
    chart = {
        "funnel": {
            "labels": [labels[m] for m, _n, _s in summary.funnel],
            "values": [n for _m, n, _s in summary.funnel],
        },
        "outcomes": {
            "keys": list(summary.outcomes),
            "labels": [labels[k] for k in summary.outcomes],
            "values": list(summary.outcomes.values()),
        },
        "series": {
            "labels": period_labels,
            "datasets": [{"key": m, "label": labels[m], "data": v} for m, v in series.values.items()],
        },
    }
    return render_template(
        "marketing/stats/campaign.html",
        campaign=campaign,
        summary=summary,
        series=series,
        period_labels=period_labels,
        tables=tables,
        labels=labels,
        chart=chart,
        by=by,
        percent=percent,
        status_label=lifecycle.status_label,
        has_data=any(summary.totals.values()),
        drill=lambda f: url_for("marketing_stats.recipients", campaign_id=campaign_id, filter=f),
    )


def _timeline(
    session: Session, workspace_id: int, campaign_id: int, asked: str | None, tz: dt.tzinfo
) -> tuple[str, stats.Series]:
    """The period and series the page opens on (see ``CampaignArgs``): days unless the user asked
    otherwise or the days are a single one, when its hours tell more."""
    by = asked or "day"
    series = stats.time_series(session, workspace_id, campaign_id, by=by, tz=tz)
    if asked is None and len(series.periods) == 1:
        by = "hour"
        series = stats.time_series(session, workspace_id, campaign_id, by=by, tz=tz)
    return by, series


# -- account -------------------------------------------------------------------------------------
class AccountArgs(Schema):
    """The date range (days in the user's time zone); the default is the last 7 days."""

    class Meta:
        unknown = EXCLUDE

    start = fields.Date(load_default=None)
    end = fields.Date(load_default=None)
    format = fields.String(load_default="html", validate=validate.OneOf(["html", "csv"]))

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("start"), data.get("end")
        if start and end and end < start:
            raise ValidationError(_("The end date is before the start date."), "end")
        if start and end and (end - start).days >= stats.MAX_DAYS:
            raise ValidationError(_("Choose at most %(n)s days.", n=stats.MAX_DAYS), "end")


def account():
    state = get_state()
    ws = _ws()
    tz = user_timezone()
    today = dt.datetime.now(tz).date()
    errors: dict[str, str] = {}
    raw = request.args.to_dict()
    try:
        args = AccountArgs().load(raw)
    except ValidationError as exc:
        errors = {
            k: " ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in exc.messages.items()
        }
        args = {"start": None, "end": None, "format": raw.get("format", "html")}
    end = args["end"] or today
    start = args["start"] or end - dt.timedelta(days=6)
    days, total = stats.account_daily(state.session, ws, start=start, end=end, tz=tz)
    if args["format"] == "csv" and not errors:
        return _daily_csv(days, total, start, end)
    campaigns = _recent_campaigns(ws)
    chronological = list(reversed(days))
    chart = {
        "labels": [i18n.chart_day(d.day) for d in chronological],
        "total": [d.total for d in chronological],
        "delivered": [d.delivered for d in chronological],
        "failed": [d.failed + d.invalid for d in chronological],
        "names": {"total": _("Total"), "delivered": _("Delivered"), "failed": _("Failed or invalid")},
    }
    html = render_template(
        "marketing/stats/account.html",
        days=days,
        total=total,
        start=start,
        end=end,
        today=today,
        errors=errors,
        form={"start": raw.get("start", start.isoformat()), "end": raw.get("end", end.isoformat())},
        chart=chart,
        campaigns=campaigns,
        percent=percent,
        status_label=lifecycle.status_label,
        csv_url=url_for("marketing_stats.index", start=start.isoformat(), end=end.isoformat(), format="csv"),
        range_url=lambda n: url_for(
            "marketing_stats.index",
            start=(today - dt.timedelta(days=n - 1)).isoformat(),
            end=today.isoformat(),
        ),
    )
    return html, 422 if errors else 200


def _recent_campaigns(ws: int) -> list[dict[str, Any]]:
    """The latest campaigns that started sending, with their headline figures (one counter query)."""
    s = get_state().session
    rows = s.scalars(
        select(Campaign)
        .where(Campaign.workspace_id == ws, Campaign.started_at.is_not(None))
        .order_by(Campaign.started_at.desc(), Campaign.id.desc())
        .limit(RECENT_CAMPAIGNS)
    ).all()
    if not rows:
        return []
    metrics = ("sent", "delivered", "unique_opened", "unique_clicked", "replied")
    sums: dict[int, dict[str, int]] = {c.id: dict.fromkeys(metrics, 0) for c in rows}
    for campaign_id, metric, count in s.execute(
        select(StatCounter.campaign_id, StatCounter.metric, func.sum(StatCounter.count))
        .where(
            StatCounter.campaign_id.in_(list(sums)),
            StatCounter.metric.in_(metrics),
            StatCounter.dimension == "all",
        )
        .group_by(StatCounter.campaign_id, StatCounter.metric)
    ):
        sums[campaign_id][metric] = int(count or 0)
    return [{"campaign": c, "counts": sums[c.id], "rates": stats.rates_of(sums[c.id])} for c in rows]


def _daily_csv(days: list[stats.DayRow], total: stats.DayRow, start: dt.date, end: dt.date) -> Response:
    header = [
        _("Date"),
        _("Total"),
        _("Delivered"),
        _("Failed"),
        _("Invalid"),
        _("Opened"),
        _("Clicked"),
        _("Delivery rate"),
        _("Failure rate"),
    ]

    def rows() -> Iterator[list[Any]]:
        yield header
        for d in [*days, total]:
            yield [
                d.day.isoformat() if d.day else _("Total"),
                d.total,
                d.delivered,
                d.failed,
                d.invalid,
                d.opened,
                d.clicked,
                _rate_cell(d.delivery_rate),
                _rate_cell(d.failure_rate),
            ]

    return csv_response(rows(), f"stats-{start.isoformat()}-{end.isoformat()}.csv")


def _rate_cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def csv_response(rows: Iterator[list[Any]], filename: str) -> Response:
    """A streamed CSV download, UTF-8 with a BOM so Excel opens Chinese text correctly."""
    response = Response(stream_with_context(stream_csv(rows)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response
