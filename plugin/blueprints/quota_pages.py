"""Quota pages: on-demand sync, history chart, allocation of the daily quota (admin)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from marshmallow import ValidationError
from sqlalchemy import select

from .. import account_status, allocation, quota, quota_sync
from ..access import can, current_workspace
from ..channels import provider_factory
from ..config import Settings
from ..errors import InvalidInput, NotFound
from ..extension import get_state
from ..forecast import forecast
from ..i18n import _, chart_day, format_datetime
from ..models import ProviderAccount, utcnow
from ..schemas.common import MAX_ID
from ..schemas.quota import CapForm, CapListArgs, ForecastArgs, ShareForm
from . import admin
from .admin import forbidden_page
from .security import guard_page, safe_next_url

#: Days of history in the chart.
HISTORY_DAYS = 30


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_quota", __name__, template_folder="../templates")
    bp.before_request(guard_page)
    bp.register_error_handler(403, forbidden_page)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/quota", view_func=index)
    bp.add_url_rule("/quota/refresh", view_func=refresh, methods=["POST"])
    bp.add_url_rule("/quota/forecast", view_func=forecast_json)
    bp.add_url_rule("/quota/share", view_func=save_share, methods=["POST"])
    bp.add_url_rule("/quota/caps", view_func=add_cap, methods=["POST"])
    bp.add_url_rule(f"/quota/caps/<int(min=1,max={MAX_ID}):cap_id>", view_func=edit_cap, methods=["POST"])
    bp.add_url_rule(
        f"/quota/caps/<int(min=1,max={MAX_ID}):cap_id>/delete", view_func=delete_cap, methods=["POST"]
    )
    return bp


def _needs(permission: str) -> Callable:
    """A stricter role check than the blueprint's "view" for one endpoint."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            refused = guard_page(permission)
            return refused if refused is not None else view(*args, **kwargs)

        return wrapper

    return decorate


def _workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _form(schema: type, *, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Form fields for ``schema`` (CSRF and navigation fields are not input)."""
    data = {k: v for k, v in request.form.items() if k not in ("csrf_token", "next", *extra)}
    return schema().load(data)


def _errors(exc: ValidationError | InvalidInput) -> dict[str, str]:
    if isinstance(exc, InvalidInput):
        return {exc.field or "_schema": str(exc)}
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return {str(k): " ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in messages.items()}


# --------------------------------------------------------------------------- page


def index(*, share_errors=None, share_form=None, cap_errors=None, cap_form=None, status: int = 200):
    state = get_state()
    ws = _workspace_id()
    session = state.session
    args = _list_args()
    accounts = list(
        session.scalars(
            select(ProviderAccount).where(ProviderAccount.workspace_id == ws).order_by(ProviderAccount.id)
        )
    )
    names = {a.id: a.name for a in accounts}
    history = quota_sync.history(session, ws, days=HISTORY_DAYS)
    # Every day of the window, a day without a sync left empty: the chart shows the period it
    # names (its first days otherwise stretched over the whole width).
    today = quota.provider_day(utcnow())
    days = [today - dt.timedelta(days=n) for n in range(HISTORY_DAYS - 1, -1, -1)]
    by_day = {p.day: p for p in history}
    points = [by_day.get(day) for day in days]
    history = [p for p in points if p is not None]  # the window's days that have a sync
    chart = {
        "labels": [chart_day(day) for day in days],
        "used": [p.used_today if p else None for p in points],
        "quota": [p.daily_quota if p else None for p in points],
        "balance": [None if p is None or p.balance is None else float(p.balance) for p in points],
        "names": {"used": _("Used"), "quota": _("Daily quota"), "balance": _("Balance (¥)")},
    }
    share = allocation.get_share(session, ws)
    latest = quota_sync.latest_snapshot(session, ws)
    share_amount = (
        allocation.trigger_share(session, ws, latest.daily_quota)
        if latest is not None and latest.daily_quota is not None
        else None
    )
    # The header's figure: the provider's count at the last sync, or the ledger if higher (the
    # snapshot alone lags behind a campaign sending since the sync).
    used_now = account_status.used_today(session, latest.account_id, latest) if latest is not None else None
    # The provider's own count beside it, when it speaks of today (an older sync says nothing).
    synced_today = (
        latest.used_today if latest is not None and quota.provider_day(latest.fetched_at) == today else None
    )
    caps, total, pages = _caps_page(session, ws, args)
    users, teams = allocation.known_owners(session, ws)
    page = render_template(
        "marketing/quota/index.html",
        accounts=accounts,
        account_names=names,
        latest=latest,
        used_now=used_now,
        synced_today=synced_today,
        chart=chart,
        history=history,
        recent=quota_sync.recent_syncs(session, ws, limit=10),
        ledgers=quota_sync.today_ledgers(session, ws),
        share=share,
        share_amount=share_amount,
        share_errors=share_errors or {},
        share_form=share_form or _share_form_values(share),
        caps=caps,
        caps_total=total,
        pages=pages,
        args=args,
        cap_errors=cap_errors or {},
        cap_form=cap_form or {},
        known_users=users,
        known_teams=teams,
        can_allocate=can("settings", state.role_loader),
    )
    return page, status


def _list_args() -> dict[str, Any]:
    try:
        return CapListArgs().load(dict(request.args.items()))
    except ValidationError:
        return CapListArgs().load({})


def _caps_page(session, ws: int, args: dict[str, Any]):
    rows = allocation.list_caps(session, ws)
    needle = args["q"].strip().casefold()
    if needle:
        rows = [r for r in rows if needle in r.subject.casefold()]
    key, reverse = args["sort"].lstrip("-"), args["sort"].startswith("-")
    sort_key = {
        "subject": lambda r: (r.subject.casefold(), r.scope),
        "limit": lambda r: (r.daily_limit or 0, r.subject.casefold()),
        "scope": lambda r: (r.scope, r.subject.casefold()),
    }[key]
    rows.sort(key=sort_key, reverse=reverse)
    per_page = get_state().settings.page_size
    pages = max(1, -(-len(rows) // per_page))
    start = (min(args["page"], pages) - 1) * per_page
    return rows[start : start + per_page], len(rows), pages


def _share_form_values(share: allocation.Share | None) -> dict[str, str]:
    if share is None:
        return {"mode": "percent", "value": "0"}
    if share.percent is not None:
        return {"mode": "percent", "value": f"{share.percent:g}"}
    return {"mode": "absolute", "value": str(share.daily_limit)}


# --------------------------------------------------------------------------- refresh


@_needs("quota.refresh")
def refresh():
    """Sync every account of the workspace now and go back to the page the user came from."""
    state = get_state()
    factory = provider_factory(current_app.extensions, secrets=state.secrets, settings=state.settings)
    outcomes = quota_sync.sync_workspace(state.session, _workspace_id(), factory=factory)
    failed = [o for o in outcomes if o.error]
    if not outcomes:
        flash(_("No sending account is bound yet."), "warning")
    elif failed:
        for outcome in failed:
            flash(
                _(
                    "Could not sync %(account)s: %(error)s. "
                    "The figures shown are from the last successful sync.",
                    account=outcome.account_name,
                    error=outcome.error,
                ),
                "error",
            )
    else:
        flash(
            _("Balance and quota synced at %(time)s.", time=format_datetime(outcomes[0].snapshot.fetched_at)),
            "success",
        )
    return redirect(safe_next_url(request.form.get("next"), url_for("marketing_quota.index")))


# --------------------------------------------------------------------------- forecast


def forecast_json():
    state = get_state()
    ws = _workspace_id()
    try:
        args = ForecastArgs().load(dict(request.args.items()))
    except ValidationError as exc:
        return jsonify({"errors": _errors(exc)}), 422
    query = select(ProviderAccount).where(
        ProviderAccount.workspace_id == ws, ProviderAccount.status == "active"
    )
    if args["account_id"] is not None:
        query = query.where(ProviderAccount.id == args["account_id"])
    else:
        query = query.order_by((ProviderAccount.kind != "sendcloud"), ProviderAccount.id)
    account = state.session.scalar(query.limit(1))
    if account is None:
        return jsonify({"errors": {"account_id": _("No such sending account in this workspace.")}}), 404
    result = forecast(
        state.session,
        ws,
        account,
        args["recipients"],
        state.settings,
        owner_id=str(current_user.get_id()),
        team=args["team"],
    )
    return jsonify({"account_id": account.id, **result.as_dict()})


# --------------------------------------------------------------------------- allocation (admin)


@_needs("settings")
def save_share():
    state = get_state()
    ws = _workspace_id()
    values = {k: request.form.get(k, "") for k in ("mode", "value")}
    try:
        data = _form(ShareForm)
        if data["mode"] == "percent":
            allocation.set_share(state.session, ws, percent=float(data["value"]))
        else:
            if data["value"] != data["value"].to_integral_value():
                raise InvalidInput(_("Enter a whole number of mails."), field="value")
            allocation.set_share(state.session, ws, daily_limit=int(data["value"]))
    except (ValidationError, InvalidInput) as exc:
        state.session.rollback()
        return index(share_errors=_errors(exc), share_form=values, status=422)
    state.session.commit()
    quota_sync.rebalance(state.session, ws)
    flash(_("Trigger-mail share saved."), "success")
    return redirect(url_for("marketing_quota.index") + "#allocation")


@_needs("settings")
def add_cap():
    state = get_state()
    ws = _workspace_id()
    values = {k: request.form.get(k, "") for k in ("scope", "subject", "daily_limit")}
    try:
        data = _form(CapForm)
        allocation.add_cap(state.session, ws, **data)
    except (ValidationError, InvalidInput) as exc:
        state.session.rollback()
        return index(cap_errors=_errors(exc), cap_form=values, status=422)
    state.session.commit()
    quota_sync.rebalance(state.session, ws)
    flash(_("Cap added."), "success")
    return redirect(url_for("marketing_quota.index") + "#caps")


@_needs("settings")
def edit_cap(cap_id: int):
    state = get_state()
    ws = _workspace_id()
    values = {k: request.form.get(k, "") for k in ("scope", "subject", "daily_limit")}
    try:
        data = _form(CapForm)
        allocation.update_cap(state.session, ws, cap_id, **data)
    except NotFound:
        abort(404)
    except (ValidationError, InvalidInput) as exc:
        state.session.rollback()
        values["id"] = str(cap_id)
        return index(cap_errors=_errors(exc), cap_form=values, status=422)
    state.session.commit()
    quota_sync.rebalance(state.session, ws)
    flash(_("Cap saved."), "success")
    return redirect(url_for("marketing_quota.index") + "#caps")


@_needs("settings")
def delete_cap(cap_id: int):
    state = get_state()
    ws = _workspace_id()
    try:
        allocation.remove_cap(state.session, ws, cap_id)
    except NotFound:
        abort(404)
    state.session.commit()
    flash(_("Cap removed."), "success")
    return redirect(url_for("marketing_quota.index") + "#caps")
