"""Reply pages: the reply mailbox settings (admins) and a campaign's replies (everyone).

Thin views: ``ReplyMailboxIn`` loads the form, one ``plugin.replies`` call does the work, errors
land beside their field.  The mailbox password goes from the form into the service (encrypted
there) and is never rendered back — not even masked: the page only says that one is stored.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError

from .. import replies as service
from ..access import current_workspace
from ..campaigns import service as campaigns
from ..config import Settings
from ..errors import InvalidInput, NotFound
from ..extension import get_state
from ..i18n import _
from ..schemas.common import MAX_ID
from ..schemas.replies import ReplyListArgs, ReplyMailboxIn
from . import admin
from .security import guard_page

PER_PAGE = 25
#: Fields the form shows again after an error (never the password).
_ECHOED = ("host", "port", "security", "username", "folder", "tag_name", "match_window_days")
#: Pages for everyone with a role; the rest of the blueprint is mailbox settings (admins).
_READ_ENDPOINTS = frozenset({"marketing_replies.campaign"})


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_replies", __name__, template_folder="../templates")
    bp.before_request(_guard)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/replies/mailbox", endpoint="index", view_func=index, methods=["GET", "POST"])
    bp.add_url_rule("/replies/mailbox/test", endpoint="test", view_func=test, methods=["POST"])
    bp.add_url_rule("/replies/mailbox/poll", endpoint="poll", view_func=poll, methods=["POST"])
    bp.add_url_rule("/replies/mailbox/delete", endpoint="delete", view_func=delete, methods=["POST"])
    bp.add_url_rule(
        f"/campaigns/<int(min=1,max={MAX_ID}):campaign_id>/replies", endpoint="campaign", view_func=campaign
    )
    return bp


def _guard():
    return guard_page("view" if request.endpoint in _READ_ENDPOINTS else "settings")


def _workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _no_store(page: str, status: int = 200):
    return page, status, {"Cache-Control": "no-store"}


def _errors(exc: ValidationError | InvalidInput) -> dict[str, str]:
    if isinstance(exc, InvalidInput):
        return {exc.field or "_schema": str(exc)}
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return {
        str(key): " ".join(map(str, value)) if isinstance(value, list) else str(value)
        for key, value in messages.items()
    }


def _values_of(mailbox) -> dict[str, Any]:
    if mailbox is None:
        return {
            "host": "",
            "port": 993,
            "security": "ssl",
            "username": "",
            "folder": "INBOX",
            "tag_name": "",
            "match_window_days": service.DEFAULT_WINDOW_DAYS,
            "notify_owner": True,
            "enabled": True,
        }
    return {
        "host": mailbox.imap_host,
        "port": mailbox.imap_port,
        "security": mailbox.security,
        "username": mailbox.username,
        "folder": mailbox.folder,
        "tag_name": mailbox.tag_name,
        "match_window_days": mailbox.match_window_days,
        "notify_owner": mailbox.notify_owner,
        "enabled": mailbox.enabled,
    }


def _render(mailbox, values: dict[str, Any], errors: dict[str, str], status: int = 200):
    page = render_template(
        "marketing/replies/settings.html",
        mailbox=mailbox,
        values=values,
        errors=errors,
        securities=service.SECURITY_CHOICES,
    )
    return _no_store(page, status)


def index():
    state = get_state()
    ws = _workspace_id()
    if request.method == "GET":
        mailbox = service.get_mailbox(state.session, ws)
        return _render(mailbox, _values_of(mailbox), {})
    posted = request.form.to_dict()
    try:
        data = ReplyMailboxIn().load(posted)
        mailbox = service.save_mailbox(state.session, ws, data, secrets=state.secrets)
        state.session.commit()
    except (ValidationError, InvalidInput) as exc:
        state.session.rollback()
        values = {key: posted.get(key, "") for key in _ECHOED}
        values["notify_owner"] = "notify_owner" in posted
        values["enabled"] = "enabled" in posted
        return _render(service.get_mailbox(state.session, ws), values, _errors(exc), 422)
    flash(_("Reply mailbox saved."), "success")
    if request.form.get("then") == "test":
        return _run_test(mailbox)
    return redirect(url_for("marketing_replies.index"))


def _stored_mailbox():
    state = get_state()
    mailbox = service.get_mailbox(state.session, _workspace_id())
    if mailbox is None:
        abort(404)
    return mailbox


def _run_test(mailbox):
    ok, message = service.check_connection(mailbox, secrets=get_state().secrets)
    if ok:
        flash(_("Connection test passed: %(message)s", message=message), "success")
    else:
        flash(_("Connection test failed: %(message)s", message=message), "error")
    return redirect(url_for("marketing_replies.index"))


def test():
    return _run_test(_stored_mailbox())


def poll():
    state = get_state()
    mailbox = _stored_mailbox()
    report = service.poll(state.session, mailbox.workspace_id, secrets=state.secrets)
    if report.error:
        flash(_("Reading the mailbox failed: %(message)s", message=report.error), "error")
    elif report.skipped:
        flash(_("The mailbox is switched off; switch it on to read replies."), "info")
    else:
        flash(
            _(
                "%(fetched)s new messages read: %(stored)s replies stored, %(auto)s auto-replies and "
                "%(bounces)s bounces skipped, %(unmatched)s not about a campaign.",
                fetched=report.fetched,
                stored=report.stored,
                auto=report.auto_replies,
                bounces=report.bounces,
                unmatched=report.unmatched,
            ),
            "success",
        )
    return redirect(url_for("marketing_replies.index"))


def delete():
    state = get_state()
    try:
        service.delete_mailbox(state.session, _workspace_id())
        state.session.commit()
    except NotFound:
        abort(404)
    flash(_("Reply mailbox removed; its password is erased. Stored replies stay."), "success")
    return redirect(url_for("marketing_replies.index"))


def _args() -> dict[str, Any]:
    raw = request.args.to_dict()
    try:
        return ReplyListArgs().load(raw)
    except ValidationError as exc:
        for key in exc.messages:
            raw.pop(str(key), None)
        return ReplyListArgs().load(raw)


def campaign(campaign_id: int):
    state = get_state()
    ws = _workspace_id()
    try:
        row = campaigns.get_campaign(state.session, ws, campaign_id)
    except NotFound:
        abort(404)
    args = _args()
    page = service.list_replies(
        state.session,
        ws,
        campaign_id,
        q=args["q"] or None,
        sort=args["sort"],
        order=args["order"],
        page=args["page"],
        per_page=PER_PAGE,
    )
    if page.items == [] and page.total and args["page"] > page.pages:
        return redirect(url_for("marketing_replies.campaign", campaign_id=campaign_id, **{**args, "page": 1}))
    total_all = (
        page.total
        if not args["q"]
        else service.list_replies(state.session, ws, campaign_id, per_page=1).total
    )

    def query(**changes: Any) -> dict[str, Any]:
        merged = {**args, **changes}
        return {k: v for k, v in merged.items() if v not in ("", None) and not (k == "page" and v == 1)}

    def sort_url(key: str) -> str:
        order = "asc" if args["sort"] == key and args["order"] == "desc" else "desc"
        return url_for(
            "marketing_replies.campaign", campaign_id=campaign_id, **query(sort=key, order=order, page=1)
        )

    return render_template(
        "marketing/replies/campaign.html",
        campaign=row,
        page=page,
        args=args,
        total_all=total_all,
        mailbox=service.get_mailbox(state.session, ws),
        sort_url=sort_url,
        page_url=lambda n: url_for("marketing_replies.campaign", campaign_id=campaign_id, **query(page=n)),
    )
