"""Public endpoints under ``/m``: no login; every action there is authorized by a signed token.

* ``/o/<token>.gif`` open pixel: a 1x1 GIF, never cached, whatever the token (an invalid one
  answers 404 and records nothing).
* ``/c/<link id>/<token>`` click: 302 to the URL stored for that link of the recipient's campaign;
  anything else is a 404 page, never a redirect (no open redirect).
* ``/u/<token>`` unsubscribe: GET shows a confirmation page and changes nothing (link scanners
  and prefetchers follow GETs); POST — our form, or a mail client's RFC 8058 one-click POST with
  the body ``List-Unsubscribe=One-Click`` — suppresses the address at once.
* ``/webhooks/sendcloud/<token>`` provider events; ``/health`` for load balancers.

Every endpoint group has a per-client fixed-window rate limit (``plugin.ratelimit``); over it
the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import logging

from flask import Blueprint, Response, jsonify, render_template, request
from sqlalchemy import text

from .. import ratelimit
from ..config import Settings
from ..errors import InvalidInput, NotFound, WebhookRejected
from ..extension import get_state
from ..i18n import _

log = logging.getLogger(__name__)

#: The smallest transparent GIF (1x1).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
#: Endpoint → rate-limit group (settings ``RATE_LIMIT_<GROUP>``); others are not limited.
_GROUPS = {
    "open_pixel": "tracking",
    "click": "tracking",
    "unsubscribe": "unsubscribe",
    "sendcloud_webhook": "webhooks",
}


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_public", __name__)
    bp.add_url_rule("/health", view_func=health)
    bp.add_url_rule("/o/<token>", view_func=open_pixel, methods=["GET", "HEAD"])
    bp.add_url_rule("/c/<int:link_id>/<token>", view_func=click, methods=["GET", "HEAD"])
    bp.add_url_rule("/u/<token>", view_func=unsubscribe, methods=["GET", "POST"])
    bp.add_url_rule("/webhooks/sendcloud/<token>", view_func=sendcloud_webhook, methods=["GET", "POST"])
    bp.add_url_rule("/confirm-reply-to/<token>", view_func=confirm_reply_to, methods=["GET", "POST"])
    limiter = ratelimit.RateLimiter(settings.rate_limit_storage_url)
    limits = {
        "tracking": ratelimit.parse(settings.rate_limit_tracking),
        "unsubscribe": ratelimit.parse(settings.rate_limit_unsubscribe),
        "webhooks": ratelimit.parse(settings.rate_limit_webhooks),
    }
    bp.record_once(lambda state: state.app.extensions.setdefault("marketing_public_limiter", limiter))

    @bp.before_request
    def _rate_limit():
        group = _GROUPS.get((request.endpoint or "").rpartition(".")[2])
        if group is None:
            return None
        wait = limiter.hit(group, request.remote_addr or "-", limits[group])
        if not wait:
            return None
        response = Response(_("Too many requests. Try again later."), status=429, mimetype="text/plain")
        response.headers["Retry-After"] = str(wait)
        return response

    return bp


def _pixel(status: int = 200) -> Response:
    response = Response(PIXEL, status=status, mimetype="image/gif")
    response.headers.update(NO_CACHE)
    return response


def open_pixel(token: str):
    """Record an open and answer the GIF (404 with the same GIF for a token that is not ours)."""
    from .. import tracking

    state = get_state()
    token = token.removesuffix(".gif")
    try:
        known = tracking.record_open(
            state.session,
            state.settings,
            token,
            method=request.method,
            user_agent=request.headers.get("User-Agent"),
        )
    except InvalidInput:
        state.session.rollback()
        return _pixel(404)
    state.session.commit()
    return _pixel(200 if known else 404)


def click(link_id: int, token: str):
    """302 to the stored target of a link of the recipient's campaign; a 404 page otherwise."""
    from .. import tracking

    state = get_state()
    try:
        url = tracking.record_click(
            state.session,
            state.settings,
            link_id,
            token,
            method=request.method,
            user_agent=request.headers.get("User-Agent"),
        )
    except InvalidInput:
        url = None
    if url is None:
        state.session.rollback()
        return _public_page("invalid", status=404)
    state.session.commit()
    response = Response(status=302)
    response.headers["Location"] = url
    response.headers.update(NO_CACHE)
    return response


def _public_page(page_state: str, *, status: int = 200, **context):
    body = render_template("marketing/public/unsubscribe.html", state=page_state, **context)
    response = Response(body, status=status, mimetype="text/html")
    response.headers.update(NO_CACHE)
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _is_one_click() -> bool:
    """RFC 8058: the POST body is ``List-Unsubscribe=One-Click`` (form-encoded or multipart)."""
    return request.form.get("List-Unsubscribe") == "One-Click"


def unsubscribe(token: str):
    """GET: the confirmation page (nothing changes).  POST: unsubscribe now (form or one-click)."""
    from .. import tracking

    state = get_state()
    if request.method == "GET":
        ref = tracking.peek_unsubscribe(state.session, state.settings, token)
        state.session.rollback()
        if ref is None:
            return _public_page("invalid", status=404)
        return _public_page("done" if ref.unsubscribed else "ask", email=ref.email, token=token)
    one_click = _is_one_click()
    ref = tracking.unsubscribe(state.session, state.settings, token, via="one-click" if one_click else "page")
    if ref is None:
        state.session.rollback()
        if one_click:
            return jsonify(error="unknown unsubscribe link"), 404
        return _public_page("invalid", status=404)
    state.session.commit()
    if one_click:
        return jsonify(status="unsubscribed")
    return _public_page("done", email=ref.email)


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
        try:
            webhooks.note_refusal(state.session, workspace_id, exc.reason)
        except Exception:  # the answer stays 403 whatever happens to the note
            state.session.rollback()
            log.warning("could not note the refused webhook", exc_info=True)
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
