"""The recipients drill-down of a campaign (views of the ``marketing_stats`` blueprint).

Reading and exporting need ``view``; tagging contacts ``tags.assign`` (sales may tag the people
who replied); starting a follow-up campaign ``campaigns.write``.  Bulk actions apply to the
checked rows or to everyone matching the filter.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import (
    Blueprint,
    Request,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from .. import recipients as service
from .. import stats
from ..access import can, current_workspace
from ..csv_export import stream_csv
from ..errors import InvalidInput, NotFound
from ..extension import get_state
from ..i18n import _, user_timezone
from ..schemas.common import MAX_BIG_ID

PER_PAGE = 50
DEFAULTS: dict[str, Any] = {"filter": "", "reason": "", "q": "", "sort": "email", "order": "asc", "page": 1}
#: Bulk action -> permission it needs.
ACTIONS = {
    "add_tag": "tags.assign",
    "remove_tag": "tags.assign",
    "export": "view",
    "follow_up": "campaigns.write",
}


class ListArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    filter = fields.String(load_default="", validate=validate.OneOf(["", *service.FILTERS]))
    reason = fields.String(load_default="", validate=validate.Length(max=255))
    q = fields.String(load_default="", validate=validate.Length(max=200))
    sort = fields.String(load_default="email", validate=validate.OneOf(list(service.SORTS)))
    order = fields.String(load_default="asc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))


class BulkIn(ListArgs):
    action = fields.String(required=True, validate=validate.OneOf(list(ACTIONS)))
    scope = fields.String(load_default="selected", validate=validate.OneOf(["selected", "all"]))
    ids = fields.List(fields.Integer(validate=validate.Range(min=1, max=MAX_BIG_ID)), load_default=list)
    tag = fields.String(load_default="", validate=validate.Length(max=100))


def register(bp: Blueprint, campaign_rule: str) -> None:
    bp.add_url_rule(f"{campaign_rule}/recipients", endpoint="recipients", view_func=index)
    bp.add_url_rule(
        f"{campaign_rule}/recipients", endpoint="recipients_bulk", view_func=bulk, methods=["POST"]
    )
    bp.add_url_rule(f"{campaign_rule}/recipients.csv", endpoint="recipients_export", view_func=export)


def permission_for(req: Request) -> str:
    """What a request to the ``marketing_stats`` blueprint needs (checked before the view)."""
    if req.method == "POST" and req.endpoint == "marketing_stats.recipients_bulk":
        return ACTIONS.get(req.form.get("action", ""), "campaigns.write")
    return "view"


def _ws() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _list_args(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return ListArgs().load(raw)
    except ValidationError as exc:
        for key in exc.messages:  # keep the valid parts of a hand-edited URL
            raw.pop(str(key), None)
        return ListArgs().load(raw)


def _criteria(args: dict[str, Any], ids: list[int] | None = None) -> service.Criteria:
    return service.Criteria(
        filter=args["filter"],
        reason=args["reason"] if args["filter"] == "skipped" else "",
        q=args["q"],
        ids=tuple(ids) if ids is not None else None,
    )


def index(campaign_id: int):
    return _render(campaign_id, _list_args(request.args.to_dict()))


def _render(
    campaign_id: int, args: dict[str, Any], *, errors: dict[str, str] | None = None, bulk: Any = None
):
    state = get_state()
    ws = _ws()
    try:
        page = service.list_recipients(
            state.session,
            ws,
            campaign_id,
            _criteria(args),
            sort=args["sort"],
            order=args["order"],
            page=args["page"],
            per_page=PER_PAGE,
        )
        summary = stats.campaign_stats(state.session, ws, campaign_id)
    except NotFound:
        abort(404)
    campaign = service.get_campaign(state.session, ws, campaign_id)
    reasons = service.skip_reasons(state.session, ws, campaign_id) if args["filter"] == "skipped" else []

    def list_url(**changes: Any) -> str:
        merged = {**args, "page": page.page, **changes}
        if merged.get("filter") != "skipped":
            merged["reason"] = ""
        kept = {k: v for k, v in merged.items() if DEFAULTS.get(k) != v}
        return url_for("marketing_stats.recipients", campaign_id=campaign_id, **kept)

    def sort_url(key: str) -> str:
        if args["sort"] == key:
            return list_url(sort=key, order="desc" if args["order"] == "asc" else "asc", page=1)
        return list_url(sort=key, order="asc" if key in ("email", "status") else "desc", page=1)

    export_args = {k: args[k] for k in ("filter", "reason", "q") if args[k]}
    html = render_template(
        "marketing/stats/recipients.html",
        campaign=campaign,
        page=page,
        args=args,
        chips=_chips(summary),
        reasons=reasons,
        labels=stats.metric_labels(),
        list_url=list_url,
        sort_url=sort_url,
        page_url=lambda n: list_url(page=n),
        filter_url=lambda f: list_url(filter=f, page=1, reason=""),
        export_url=url_for("marketing_stats.recipients_export", campaign_id=campaign_id, **export_args),
        errors=errors or {},
        bulk=bulk or {},
        tags=state.directory.tags(state.session, ws),
        can_tag=can("tags.assign", state.role_loader),
        can_follow_up=can("campaigns.write", state.role_loader),
    )
    return html, 422 if errors else 200


def _chips(summary: stats.CampaignStats) -> list[tuple[str, int | None]]:
    """Filter chips with the counters' figures (no count query per chip)."""
    t, o = summary.totals, summary.outcomes
    return [
        ("delivered", t["delivered"]),
        ("opened", t["unique_opened"]),
        ("not_opened", None),
        ("clicked", t["unique_clicked"]),
        ("replied", t["replied"]),
        ("bounced", t["bounced"]),
        ("invalid", t["invalid"]),
        ("unsubscribed", t["unsubscribed"]),
        ("complained", t["complained"]),
        ("machine_opened", None),
        ("failed", o["failed"]),
        ("skipped", o["skipped"]),
        ("in_flight", o["in_flight"]),
        ("pending", o["pending"]),
    ]


def export(campaign_id: int):
    args = _list_args(request.args.to_dict())
    ids = [int(i) for i in request.args.getlist("ids") if i.isdigit() and 0 < int(i) <= MAX_BIG_ID]
    return _export(campaign_id, _criteria(args, ids or None))


def _export(campaign_id: int, criteria: service.Criteria) -> Response:
    state = get_state()
    ws = _ws()
    try:
        campaign = service.get_campaign(state.session, ws, campaign_id)
    except NotFound:
        abort(404)
    rows = service.export_rows(state.session, ws, campaign_id, criteria, tz=user_timezone())
    response = Response(stream_with_context(stream_csv(rows)), mimetype="text/csv")
    name = f"campaign-{campaign.id}-{criteria.filter or 'all'}-recipients.csv"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def bulk(campaign_id: int):
    """A bulk action on the checked rows or on all matching the filter; back to the same list."""
    state = get_state()
    raw: dict[str, Any] = request.form.to_dict()
    raw["ids"] = request.form.getlist("ids")
    try:
        data = BulkIn().load(raw)
    except ValidationError as exc:
        fallback = _list_args({k: v for k, v in raw.items() if k in DEFAULTS})
        errors = {str(k): " ".join(map(str, v)) for k, v in exc.messages.items() if isinstance(v, list)}
        return _render(campaign_id, fallback, errors=errors or {"action": _("Choose an action.")}, bulk=raw)
    if data["scope"] == "selected" and not data["ids"]:
        return _render(
            campaign_id,
            data,
            errors={"selection": _("Check some recipients first, or choose all.")},
            bulk=raw,
        )
    criteria = _criteria(data, data["ids"] if data["scope"] == "selected" else None)
    if data["action"] == "export":
        return _export(campaign_id, criteria)
    ws = _ws()
    try:
        if data["action"] == "follow_up":
            draft = service.follow_up(
                state.session,
                state.directory,
                ws,
                campaign_id,
                criteria,
                user_id=str(current_user.get_id()),
                team=(str(current_user.team) if getattr(current_user, "team", None) else None),
                today=_today(),
            )
            state.session.commit()
            flash(_("Follow-up draft created for the selected recipients: check it and send it."), "success")
            return redirect(url_for("marketing_campaigns.edit", campaign_id=draft.id))
        result = service.tag(
            state.session,
            state.directory,
            ws,
            campaign_id,
            criteria,
            data["tag"],
            remove=data["action"] == "remove_tag",
        )
    except NotFound:
        state.session.rollback()
        abort(404)
    except InvalidInput as exc:
        state.session.rollback()
        return _render(campaign_id, data, errors={exc.field or "action": str(exc)}, bulk=raw)
    state.session.commit()
    name = " ".join(data["tag"].split())
    if data["action"] == "remove_tag":
        message = _("Tag “%(tag)s” removed from %(n)s contacts.", tag=name, n=result.changed)
    else:
        message = _(
            "%(n)s contacts tagged “%(tag)s” (%(new)s newly).",
            n=result.contacts,
            tag=name,
            new=result.changed,
        )
    flash(message, "success")
    kept = {k: data[k] for k in DEFAULTS if data.get(k) != DEFAULTS[k]}
    return redirect(url_for("marketing_stats.recipients", campaign_id=campaign_id, **kept))


def _today() -> dt.date:
    return dt.datetime.now(user_timezone()).date()
