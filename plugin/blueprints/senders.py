"""Senders page under ``/marketing/senders`` (admin only): list, add, edit, make default, delete,
and the Reply-To confirmation mail.

Thin views: one ``plugin.senders`` call each, errors beside their field.  The confirmation mail
goes through the setup wizard's trigger API_USER, as the wizard's own sender's does; when it
cannot go (no trigger API_USER yet, the provider down) the sender is still saved and the page
says why, with a button to send it again.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from .. import senders as service
from ..access import current_workspace
from ..config import Settings
from ..errors import InvalidInput, InvalidTransition, MarketingError, NotFound
from ..extension import get_state
from ..i18n import _
from ..schemas.common import MAX_ID
from . import admin
from .admin import forbidden_page
from .security import guard_page
from .setup import current_wizard

SENDER = f"/senders/<int(min=1,max={MAX_ID}):sender_id>"
FIELDS = ("from_address", "from_name", "reply_to", "company_name", "postal_address")


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_senders", __name__, template_folder="../templates")
    bp.before_request(lambda: guard_page("settings"))
    bp.register_error_handler(403, forbidden_page)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/senders", endpoint="index", view_func=index)
    bp.add_url_rule("/senders/new", endpoint="new", view_func=new, methods=["GET", "POST"])
    bp.add_url_rule(SENDER, endpoint="edit", view_func=edit, methods=["GET", "POST"])
    bp.add_url_rule(f"{SENDER}/default", endpoint="make_default", view_func=make_default, methods=["POST"])
    bp.add_url_rule(f"{SENDER}/resend", endpoint="resend", view_func=resend, methods=["POST"])
    bp.add_url_rule(f"{SENDER}/delete", endpoint="delete", view_func=delete, methods=["POST"])
    return bp


def _workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _sender(sender_id: int):
    try:
        return service.get_sender(get_state().session, _workspace_id(), sender_id)
    except NotFound:
        abort(404)


def index():
    state = get_state()
    ws = _workspace_id()
    rows = service.list_senders(state.session, ws)
    page = render_template(
        "marketing/senders/index.html",
        senders=rows,
        domains=service.sending_domains(state.session, ws),
        setup_url=admin._endpoint_url("marketing_setup.start"),
    )
    state.session.commit()
    return page


def _render_form(sender, values: dict[str, Any], errors: dict[str, str], status: int = 200):
    state = get_state()
    domains = service.sending_domains(state.session, _workspace_id())
    page = render_template(
        "marketing/senders/form.html", sender=sender, values=values, errors=errors, domains=domains
    )
    state.session.commit()
    return page, status


def _save(sender_id: int | None):
    state = get_state()
    ws = _workspace_id()
    posted = {name: request.form.get(name, "") for name in FIELDS}
    try:
        sender = service.save_sender(state.session, ws, posted, sender_id=sender_id)
        state.session.commit()
    except service.SenderErrors as exc:
        state.session.rollback()
        return _render_form(_sender(sender_id) if sender_id else None, posted, exc.errors, 422)
    except NotFound:
        state.session.rollback()
        abort(404)
    flash(_("Sender %(address)s saved.", address=sender.from_address), "success")
    if service.needs_confirmation_mail(sender):
        _send_confirmation(sender)
    return redirect(url_for("marketing_senders.index"))


def _send_confirmation(sender) -> None:
    """Mail the Reply-To confirmation link; a failure is shown, the sender stays saved."""
    state = get_state()
    wizard = current_wizard()
    try:
        wizard.send_reply_to_confirmation(sender)
        state.session.commit()
    except (InvalidTransition, MarketingError) as exc:
        state.session.rollback()
        flash(
            _(
                "The confirmation mail to %(address)s could not be sent: %(reason)s",
                address=sender.reply_to,
                reason=str(exc),
            ),
            "error",
        )
        return
    flash(_("We sent a confirmation link to %(address)s.", address=sender.reply_to), "info")


def new():
    if request.method == "POST":
        return _save(None)
    state = get_state()
    if not service.sending_domains(state.session, _workspace_id()):  # the list says what to do first
        return redirect(url_for("marketing_senders.index"))
    values = dict.fromkeys(FIELDS, "")
    default = next(iter(service.list_senders(state.session, _workspace_id())), None)
    if default is not None:  # the footer is usually the company's: start from the default's
        values.update(company_name=default.company_name, postal_address=default.postal_address)
    return _render_form(None, values, {})


def edit(sender_id: int):
    if request.method == "POST":
        return _save(sender_id)
    sender = _sender(sender_id)
    values = {name: getattr(sender, name) or "" for name in FIELDS}
    return _render_form(sender, values, {})


def make_default(sender_id: int):
    state = get_state()
    try:
        sender = service.make_default(state.session, _workspace_id(), sender_id)
        state.session.commit()
    except NotFound:
        abort(404)
    except InvalidTransition as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_senders.index"))
    flash(_("%(address)s is now the default sender.", address=sender.from_address), "success")
    return redirect(url_for("marketing_senders.index"))


def resend(sender_id: int):
    sender = _sender(sender_id)
    if sender.reply_to_verified_at is None and sender.reply_to:
        sender.reply_to_verification_sent_at = None
        _send_confirmation(sender)
    return redirect(url_for("marketing_senders.index"))


def delete(sender_id: int):
    state = get_state()
    sender = _sender(sender_id)
    address = sender.from_address
    try:
        service.delete_sender(state.session, _workspace_id(), sender_id)
        state.session.commit()
    except (InvalidTransition, InvalidInput) as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_senders.index"))
    flash(_("Sender %(address)s deleted.", address=address), "success")
    return redirect(url_for("marketing_senders.index"))
