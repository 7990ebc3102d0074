"""Campaign pages under ``/marketing/campaigns``: list, creation form, progress page and controls.

Everyone with a role reads; ``campaigns.write`` (marketers, admins) posts; approving a campaign
above the approval threshold is for admins (``settings``).  Views are thin: the schema reads the
form, one service call decides, the view commits and renders, and errors land beside their field.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from marshmallow import ValidationError
from sqlalchemy import select

from ..access import can, current_workspace
from ..campaigns import lifecycle
from ..campaigns import service as campaigns
from ..config import Settings
from ..errors import InvalidInput, InvalidTransition, NotFound
from ..extension import get_state
from ..i18n import _, preferred_timezone, user_timezone
from ..models import Campaign, ProviderAccount, Sender, Template
from ..schemas import campaigns as schemas
from ..schemas.common import MAX_ID
from . import admin
from .admin import forbidden_page
from .security import guard_page

CAMPAIGN = f"/campaigns/<int(min=1,max={MAX_ID}):campaign_id>"
#: Endpoints only admins may post to.
APPROVAL_ENDPOINTS = frozenset({"marketing_campaigns.approve", "marketing_campaigns.reject"})


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_campaigns", __name__, template_folder="../templates")
    bp.before_request(_guard)
    bp.register_error_handler(403, forbidden_page)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/campaigns", view_func=index)
    bp.add_url_rule("/campaigns/new", view_func=new, methods=["GET", "POST"])
    bp.add_url_rule("/campaigns/audience-count", view_func=audience_count)
    bp.add_url_rule(CAMPAIGN, view_func=show)
    bp.add_url_rule(f"{CAMPAIGN}/status", view_func=status)
    bp.add_url_rule(f"{CAMPAIGN}/edit", view_func=edit, methods=["GET", "POST"])
    for action in ("submit", "approve", "reject", "pause", "resume", "cancel", "duplicate", "delete"):
        bp.add_url_rule(f"{CAMPAIGN}/{action}", endpoint=action, view_func=_ACTIONS[action], methods=["POST"])
    return bp


def _guard():
    """Reading is for every role; posting needs ``campaigns.write``, approving ``settings``."""
    if request.method == "POST":
        return guard_page("settings" if request.endpoint in APPROVAL_ENDPOINTS else "campaigns.write")
    return guard_page("view")


def _ws() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _user_id() -> str:
    return str(current_user.get_id())


def _team() -> str | None:
    team = getattr(current_user, "team", None)
    return str(team) if team else None


def _campaign(campaign_id: int) -> Campaign:
    try:
        return campaigns.get_campaign(get_state().session, _ws(), campaign_id)
    except NotFound:
        abort(404)


# -- list ---------------------------------------------------------------------------------------
def index():
    state = get_state()
    try:
        args = schemas.list_args.load(request.args.to_dict())
    except ValidationError:
        args = schemas.list_args.load({})
    result = campaigns.list_campaigns(state.session, _ws(), per_page=state.settings.page_size, **args)
    defaults = {"q": "", "status": "", "sort": "created_at", "order": "desc", "page": 1}

    def list_url(**changes: Any) -> str:
        merged = {**args, "page": result.page, **changes}
        return url_for(
            "marketing_campaigns.index", **{k: v for k, v in merged.items() if defaults.get(k) != v}
        )

    def sort_url(key: str) -> str:
        if args["sort"] == key:
            return list_url(sort=key, order="desc" if args["order"] == "asc" else "asc", page=1)
        return list_url(sort=key, order="asc" if key == "name" else "desc", page=1)

    return render_template(
        "marketing/campaigns/index.html",
        result=result,
        args=args,
        statuses=[(s, lifecycle.status_label(s)) for s in lifecycle.STATUSES],
        status_label=lifecycle.status_label,
        sort_url=sort_url,
        page_url=lambda n: list_url(page=n),
        can_write=can("campaigns.write", state.role_loader),
    )


# -- form ---------------------------------------------------------------------------------------
def _choices(ws: int) -> dict[str, Any]:
    state = get_state()
    s = state.session
    return {
        "templates": s.scalars(
            select(Template).where(Template.workspace_id == ws).order_by(Template.name)
        ).all(),
        "senders": s.scalars(
            select(Sender)
            .where(Sender.workspace_id == ws)
            .order_by(Sender.is_default.desc(), Sender.from_address)
        ).all(),
        "accounts": s.scalars(
            select(ProviderAccount)
            .where(ProviderAccount.workspace_id == ws)
            .order_by((ProviderAccount.kind == "sendcloud").desc(), ProviderAccount.name)
        ).all(),
        "tags": state.directory.tags(s, ws),
        "views": state.directory.views(s, ws),
    }


def _form_values(spec: campaigns.CampaignSpec, *, send_mode: str | None = None) -> dict[str, Any]:
    local = campaigns.utc_to_local(spec.send_at, user_timezone())
    values = {f: getattr(spec, f) for f in campaigns.CampaignSpec.__dataclass_fields__}
    values["send_mode"] = send_mode or ("at" if spec.send_at else "now")
    values["send_at"] = local.strftime("%Y-%m-%dT%H:%M") if local else ""
    values["custom_count"] = bool(spec.skip_count or spec.max_count)
    return values


def _new_spec(ws: int) -> campaigns.CampaignSpec:
    """A fresh form: the default sender and the usual channel preselected."""
    s = get_state().session
    sender = s.scalar(
        select(Sender.id)
        .where(Sender.workspace_id == ws)
        .order_by(Sender.is_default.desc(), Sender.id)
        .limit(1)
    )
    account = campaigns.default_account(s, ws)
    return campaigns.CampaignSpec(
        name="", sender_ids=(sender,) if sender else (), account_id=account.id if account else None
    )


def _render_form(
    campaign: Campaign | None, values: dict[str, Any], errors: dict[str, str], status: int = 200, **extra: Any
):
    ws = _ws()
    state = get_state()
    html = render_template(
        "marketing/campaigns/form.html",
        errors=_placed(errors),
        campaign=campaign,
        form=values,
        timezone=preferred_timezone(),
        default_rate=state.settings.send_rate,
        approval_threshold=state.settings.approval_threshold,
        templates_url=_url_if_exists("marketing_templates.index"),
        _name=lambda item: item.name,
        _count=lambda item: item.count,
        _sender_label=_sender_label,
        **_choices(ws),
        **extra,
    )
    return html, status


#: Fields the form shows errors beside; any other error goes to the top of the form.
PLACED = frozenset(schemas.CampaignIn().fields) | {"include", "exclude", "name"}


def _placed(errors: dict[str, str]) -> dict[str, str]:
    result = {k: v for k, v in errors.items() if k in PLACED}
    stray = [f"{k}: {v}" if not k.startswith("_") else v for k, v in errors.items() if k not in PLACED]
    if stray:
        result["_form"] = " ".join(stray)
    return result


def _url_if_exists(endpoint: str) -> str | None:
    return url_for(endpoint) if endpoint in current_app.view_functions else None


def _sender_label(sender: Sender) -> str:
    label = f"{sender.from_name} <{sender.from_address}>" if sender.from_name else sender.from_address
    if not (sender.postal_address or "").strip():
        label += " — " + _("no postal address")
    return label


def _raw_values(data: dict[str, Any]) -> dict[str, Any]:
    """What the user posted, for re-showing a form the schema refused."""
    values = {f: data.get(f) for f in campaigns.CampaignSpec.__dataclass_fields__}
    for key in schemas.LIST_FIELDS:
        values[key] = [int(v) for v in (data.get(key) or []) if str(v).isdigit()]
    values["send_mode"] = data.get("send_mode") or "now"
    values["send_at"] = data.get("send_at") or ""
    values["custom_count"] = bool(data.get("skip_count") not in (None, "", "0", 0) or data.get("max_count"))
    values["tracking"] = data.get("tracking", True)
    values["spread_over_days"] = data.get("spread_over_days", True)
    return values


def _field_errors(exc: ValidationError | InvalidInput) -> dict[str, str]:
    if isinstance(exc, InvalidInput):
        return dict(getattr(exc, "errors", None) or {exc.field or "_form": str(exc)})
    messages = exc.messages if isinstance(exc.messages, dict) else {"_form": exc.messages}
    result = {}
    for key, value in messages.items():
        if isinstance(value, dict):
            value = [m for sub in value.values() for m in (sub if isinstance(sub, list) else [sub])]
        result[str(key)] = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return result


def new():
    ws = _ws()
    if request.method == "GET":
        if not can("campaigns.write", get_state().role_loader):
            abort(403)
        return _render_form(None, _form_values(_new_spec(ws)), {})
    return _save(None)


def edit(campaign_id: int):
    campaign = _campaign(campaign_id)
    if campaign.status not in lifecycle.EDITABLE:
        if request.method == "POST":
            abort(409)
        flash(
            _(
                "A campaign that is %(status)s cannot be edited.",
                status=lifecycle.status_label(campaign.status),
            ),
            "error",
        )
        return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))
    if request.method == "GET":
        if not can("campaigns.write", get_state().role_loader):
            abort(403)
        return _render_form(campaign, _form_values(campaigns.spec_of(campaign)), {})
    return _save(campaign)


def _save(campaign: Campaign | None):
    """Store the form as a draft; with "submit", check it and send it on its way.

    The draft is committed before the launch checks, so a refused launch loses nothing: the page
    comes back as the draft's edit form with every problem beside its field.
    """
    state = get_state()
    ws = _ws()
    raw = schemas.form_data(request.form)
    try:
        data = schemas.campaign_in.load(raw)
    except ValidationError as exc:
        errors = _field_errors(exc)
        if raw.get("action") == "submit" and not raw.get("include_tags") and not raw.get("include_views"):
            # Said now with the rest, not after the user fixed those and submitted again.
            errors.setdefault("include", _("Choose at least one tag or view to send to."))
        return _render_form(campaign, _raw_values(raw), errors, 422)
    spec = campaigns.spec_from_input(data, tz=user_timezone())
    try:
        saved = campaigns.save_draft(
            state.session,
            ws,
            spec,
            user_id=_user_id(),
            team=_team(),
            campaign_id=campaign.id if campaign else None,
        )
    except InvalidTransition as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_campaigns.index"))
    except InvalidInput as exc:
        state.session.rollback()
        return _render_form(campaign, _raw_values(raw), _field_errors(exc), 422)
    state.session.commit()
    if data["action"] != "submit":
        flash(_("Draft saved."), "success")
        return redirect(url_for("marketing_campaigns.show", campaign_id=saved.id))
    timed_values = _form_values(spec, send_mode=data["send_mode"])
    return _launch(
        saved,
        send_now=data["send_mode"] == "now",
        on_error=lambda errors: _render_form(saved, timed_values, errors, 422, saved_note=True),
    )


def _launch(campaign: Campaign, *, send_now: bool, on_error):
    state = get_state()
    try:
        result = campaigns.submit(
            state.session,
            _ws(),
            campaign.id,
            directory=state.directory,
            settings=state.settings,
            send_now=send_now,
        )
    except InvalidInput as exc:
        state.session.rollback()
        return on_error(_field_errors(exc))
    except InvalidTransition as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_campaigns.show", campaign_id=campaign.id))
    state.session.commit()
    _announce(campaign, result)
    return redirect(url_for("marketing_campaigns.show", campaign_id=campaign.id))


def _announce(campaign: Campaign, result: campaigns.Submitted) -> None:
    if result.status == lifecycle.AWAITING_APPROVAL:
        flash(
            _(
                "The campaign is larger than %(n)s recipients and waits for an admin's approval.",
                n=get_state().settings.approval_threshold,
            ),
            "info",
        )
    elif result.start_now:
        _start(campaign.id)
    else:
        flash(_("Scheduled."), "success")


def _start(campaign_id: int) -> None:
    """Start a campaign due now: the scheduler's own start (``runner.start`` freezes the audience,
    then the execution backend takes it) under the lock its tick uses, so a click and a tick
    cannot both freeze.  If it does not start here, it stays scheduled and the next tick starts
    it: the user is told, not refused."""
    from .. import scheduler

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if scheduler.start_campaign(app, campaign_id):
        flash(_("Sending started."), "success")
    else:
        flash(_("The campaign is scheduled to start now; it will begin within a few seconds."), "info")


# -- JSON for the form and the progress bar ------------------------------------------------------
def audience_count():
    """Live counts for the form (and the forecast when a channel is chosen)."""
    state = get_state()
    ws = _ws()
    raw = {key: request.args.getlist(key) for key in schemas.LIST_FIELDS[2:]}
    for key in ("skip_count", "max_count", "account_id"):
        value = request.args.get(key, "")
        if value != "":
            raw[key] = value
    try:
        data = schemas.audience_query.load(raw)
    except ValidationError as exc:
        return jsonify(errors=_field_errors(exc)), 422
    spec = campaigns.CampaignSpec(
        name="",
        include_tags=tuple(data["include_tags"]),
        include_views=tuple(data["include_views"]),
        exclude_tags=tuple(data["exclude_tags"]),
        exclude_views=tuple(data["exclude_views"]),
        skip_count=data["skip_count"],
        max_count=data["max_count"],
    )
    if not spec.include_tags and not spec.include_views:
        return jsonify(
            counts=None, errors={"include": _("Choose at least one tag or view to send to.")}, forecast=None
        )
    counts = campaigns.count(state.session, ws, spec, directory=state.directory)
    errors = campaigns._why_nobody(spec, counts) if counts.final == 0 else {}
    account = campaigns._account(state.session, ws, data["account_id"])
    forecast = (
        campaigns.forecast_for(
            state.session, ws, account, counts.final, state.settings, owner_id=_user_id(), team=_team()
        )
        if counts.final
        else None
    )
    state.session.commit()
    forecast_data = forecast.as_dict() if forecast else None
    if forecast_data is not None and account is not None:
        forecast_data["channel"] = account.kind  # an SMTP mailbox costs nothing per mail
    return jsonify(counts=counts.as_dict(), errors=errors, forecast=forecast_data)


def status(campaign_id: int):
    campaign = _campaign(campaign_id)
    state = get_state()
    payload = campaigns.status_of(
        state.session, campaign, default_pace=state.settings.send_rate, settings=state.settings
    )
    get_state().session.commit()
    return jsonify(schemas.status_out.dump(payload)), 200, {"Cache-Control": "no-store"}


# -- campaign page ------------------------------------------------------------------------------
def show(campaign_id: int):
    state = get_state()
    ws = _ws()
    campaign = _campaign(campaign_id)
    s = state.session
    verdict = None
    if campaign.status in (lifecycle.DRAFT, lifecycle.MISSED):
        verdict = campaigns.check(
            s,
            ws,
            campaigns.spec_of(campaign),
            directory=state.directory,
            settings=state.settings,
            timed=campaign.status == lifecycle.DRAFT,
        )
    elif campaign.frozen_at is None and campaign.status in (lifecycle.SCHEDULED, lifecycle.AWAITING_APPROVAL):
        spec = campaigns.spec_of(campaign)
        problems = campaigns.segment_problems(s, ws, spec, state.directory)
        if problems:  # a tag or view was deleted after scheduling: say so, the page still opens
            verdict = campaigns.Check(errors=problems, warnings=[], counts=None, forecast=None)
        else:
            counts = campaigns.count(s, ws, spec, directory=state.directory)
            account = campaigns._account(s, ws, campaign.account_id)
            verdict = campaigns.Check(
                errors={},
                warnings=[],
                counts=counts,
                forecast=campaigns.forecast_for(s, ws, account, counts.final, state.settings),
            )
    names = {
        "templates": s.scalars(
            select(Template.name).where(
                Template.workspace_id == ws, Template.id.in_(campaign.template_ids or [])
            )
        ).all(),
        "senders": s.scalars(
            select(Sender.from_address).where(
                Sender.workspace_id == ws, Sender.id.in_(campaign.sender_ids or [])
            )
        ).all(),
        "tags": {t.id: t.name for t in state.directory.tags(s, ws)},
        "views": {v.id: v.name for v in state.directory.views(s, ws)},
    }
    account = s.get(ProviderAccount, campaign.account_id) if campaign.account_id else None
    html = render_template(
        "marketing/campaigns/show.html",
        campaign=campaign,
        progress=campaigns.status_of(
            s, campaign, default_pace=state.settings.send_rate, settings=state.settings
        ),
        verdict=verdict,
        names=names,
        account=account if account is not None and account.workspace_id == ws else None,
        lifecycle=lifecycle,
        can_write=can("campaigns.write", state.role_loader),
        can_approve=can("settings", state.role_loader),
        stats_url=_optional_url("marketing_stats.campaign", campaign_id=campaign.id),
        recipients_url=_optional_url("marketing_stats.recipients", campaign_id=campaign.id),
        replies_url=_optional_url("marketing_replies.campaign", campaign_id=campaign.id),
    )
    s.commit()
    return html


def _optional_url(endpoint: str, **values: object) -> str | None:
    """A link to another part of the plugin, or ``None`` when the host left that part out."""
    if endpoint not in current_app.view_functions:
        return None
    return url_for(endpoint, **values)


# -- actions ------------------------------------------------------------------------------------
def _act(campaign_id: int, action, done: str):
    state = get_state()
    _campaign(campaign_id)
    try:
        action()
    except (InvalidTransition, InvalidInput) as exc:
        state.session.rollback()
        flash(str(exc), "error")
    else:
        state.session.commit()
        flash(done, "success")
    return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))


def submit(campaign_id: int):
    campaign = _campaign(campaign_id)

    def back(errors: dict[str, str]):
        for message in errors.values():
            flash(message, "error")
        return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))

    return _launch(campaign, send_now=request.form.get("send_now") == "1", on_error=back)


def approve(campaign_id: int):
    state = get_state()
    campaign = _campaign(campaign_id)
    try:
        result = campaigns.approve(state.session, _ws(), campaign_id, by=_user_id())
    except InvalidTransition as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))
    state.session.commit()
    flash(_("Approved."), "success")
    _announce(campaign, result)
    return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))


def reject(campaign_id: int):
    state = get_state()
    try:
        data = schemas.reject_in.load({"note": request.form.get("note", "")})
    except ValidationError as exc:
        flash(" ".join(_field_errors(exc).values()), "error")
        return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))
    return _act(
        campaign_id,
        lambda: campaigns.reject(state.session, _ws(), campaign_id, by=_user_id(), note=data["note"]),
        _("Sent back to its author as a draft."),
    )


def pause(campaign_id: int):
    return _act(
        campaign_id,
        lambda: campaigns.pause(get_state().session, _ws(), campaign_id, by=_user_id()),
        _("Paused."),
    )


def resume(campaign_id: int):
    def run() -> None:
        campaigns.resume(get_state().session, _ws(), campaign_id)
        from .. import tasks

        tasks.get_executor(current_app._get_current_object()).submit(campaign_id)  # type: ignore[attr-defined]

    return _act(campaign_id, run, _("Resumed."))


def cancel(campaign_id: int):
    return _act(
        campaign_id, lambda: campaigns.cancel(get_state().session, _ws(), campaign_id), _("Cancelled.")
    )


def duplicate(campaign_id: int):
    state = get_state()
    _campaign(campaign_id)
    copy = campaigns.duplicate(state.session, _ws(), campaign_id, user_id=_user_id(), team=_team())
    state.session.commit()
    flash(_("Copied as a new draft."), "success")
    return redirect(url_for("marketing_campaigns.edit", campaign_id=copy.id))


def delete(campaign_id: int):
    state = get_state()
    _campaign(campaign_id)
    try:
        campaigns.delete_draft(state.session, _ws(), campaign_id)
    except InvalidTransition as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_campaigns.show", campaign_id=campaign_id))
    state.session.commit()
    flash(_("Draft deleted."), "success")
    return redirect(url_for("marketing_campaigns.index"))


_ACTIONS = {
    "submit": submit,
    "approve": approve,
    "reject": reject,
    "pause": pause,
    "resume": resume,
    "cancel": cancel,
    "duplicate": duplicate,
    "delete": delete,
}
