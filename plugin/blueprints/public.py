"""Public endpoints under ``/m``: no login; every action there is authorized by a signed token.

Tracking, unsubscribe and provider webhooks are added here by the engagement work; the health
check lets a load balancer or the demo's launcher see that the plugin is mounted.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, render_template, request
from sqlalchemy import text

from ..config import Settings
from ..errors import InvalidInput, NotFound, WebhookRejected
from ..extension import get_state
from ..i18n import _

log = logging.getLogger(__name__)


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_public", __name__)
    bp.add_url_rule("/health", view_func=health)
    bp.add_url_rule("/webhooks/sendcloud/<token>", view_func=sendcloud_webhook, methods=["GET", "POST"])
    bp.add_url_rule("/confirm-reply-to/<token>", view_func=confirm_reply_to, methods=["GET", "POST"])
    return bp


def health():
    """Answers 200 when the database is reachable, 503 otherwise."""
    state = get_state()
    try:
        state.session.execute(text("SELECT 1"))
    except Exception:
        state.session.rollback()
        return jsonify(status="unavailable"), 503
    return jsonify(status="ok")


def sendcloud_webhook(token: str):
    """SendCloud event notifications for the workspace in ``token``.

    200 for a stored event, a repeat (so SendCloud stops retrying) and the URL check (GET, or a
    POST without event fields); 403 JSON for a forged or stale post; 404 for an unknown token.
    """
    from .. import webhooks

    state = get_state()
    try:
        workspace_id = webhooks.workspace_from_token(state.settings, token)
    except NotFound:
        return jsonify(error="unknown webhook address"), 404
    if request.method == "GET" or webhooks.is_url_check(request.form):
        return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}
    try:
        outcome = webhooks.receive_sendcloud(
            state.session, state.settings, state.secrets, workspace_id, request.form
        )
    except NotFound:
        state.session.rollback()
        return jsonify(error="unknown webhook address"), 404
    except WebhookRejected as exc:
        state.session.rollback()
        log.warning("refused a SendCloud webhook for workspace %s: %s", workspace_id, exc)
        return jsonify(error=str(exc)), 403
    return jsonify(status=outcome)


def confirm_reply_to(token: str):
    """The link in the reply-to confirmation mail: GET asks, POST confirms (link scanners that
    prefetch GET do not confirm anything)."""
    from .. import setup_wizard

    state = get_state()
    address = setup_wizard.peek_reply_to(state.settings, token)
    if address is None:
        return render_template(
            "marketing/setup/confirm_reply_to.html",
            state="invalid",
            message=_("The link is incomplete or has expired. Ask for a new one on the setup page."),
        ), 404
    if request.method == "GET":
        return render_template("marketing/setup/confirm_reply_to.html", state="ask", address=address)
    try:
        sender = setup_wizard.confirm_reply_to(state.session, state.settings, token)
    except (NotFound, InvalidInput) as exc:
        state.session.rollback()
        message = (
            str(exc)
            if isinstance(exc, InvalidInput)
            else _("This address is no longer the reply-to address of the sender.")
        )
        return render_template("marketing/setup/confirm_reply_to.html", state="invalid", message=message), 404
    state.session.commit()
    return render_template(
        "marketing/setup/confirm_reply_to.html", state="confirmed", address=sender.reply_to
    )
