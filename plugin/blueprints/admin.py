"""Admin pages under ``/marketing``: dashboard, language and time zone, API tokens."""

from __future__ import annotations

from zoneinfo import available_timezones

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from ..access import PERMISSIONS, can, current_role, current_workspace, issue_token
from ..account_status import account_status
from ..campaigns import lifecycle
from ..config import Settings
from ..extension import get_state
from ..i18n import SESSION_LOCALE_KEY, SESSION_TZ_KEY, _, _l, available_locales
from ..models import ApiToken, Campaign, Contact, ProviderAccount, SavedView, Tag, Template, utcnow
from ..schemas.common import MAX_BIG_ID
from .security import check_csrf, guard_page, safe_next_url


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint(
        "marketing",
        __name__,
        template_folder="../templates",
        static_folder="../static/marketing",
        static_url_path="/static",
    )
    bp.before_request(_guard)
    bp.context_processor(_template_context)
    bp.register_error_handler(403, forbidden_page)
    bp.add_url_rule("/", view_func=dashboard)
    bp.add_url_rule("/preferences", view_func=preferences, methods=["POST"])
    bp.add_url_rule("/tokens", view_func=tokens, methods=["GET", "POST"])
    bp.add_url_rule(
        f"/tokens/<int(min=1,max={MAX_BIG_ID}):token_id>/revoke", view_func=revoke_token, methods=["POST"]
    )
    return bp


def _guard():
    """Every page needs a login and a role; the static files and the language switch do not:
    the host's login page uses both, and neither touches data."""
    if request.endpoint == "marketing.static":
        return None
    if request.endpoint == "marketing.preferences":
        check_csrf()  # the language switch is on the host's login page too
        return None
    return guard_page()


def _account_status():
    """The header's balance and quota; computed once per request, only for plugin pages."""
    if "_marketing_account_status" not in g:
        workspace = g.get("_marketing_workspace")
        g._marketing_account_status = (
            account_status(get_state().session, workspace.id, get_state().settings)
            if workspace is not None
            else None
        )
    return g._marketing_account_status


#: The plugin's navigation: endpoint, label, permission.  An entry shows only when its endpoint
#: exists (a host may leave a part out) and the user's role may use it.
NAV: tuple[tuple[str, str, str], ...] = (
    ("marketing.dashboard", _l("Overview"), "view"),
    ("marketing_campaigns.index", _l("Campaigns"), "view"),
    ("marketing_templates.index", _l("Templates"), "view"),
    ("marketing_trigger.index", _l("Trigger mail"), "view"),
    ("marketing_stats.index", _l("Statistics"), "view"),
    ("marketing_quota.index", _l("Quota"), "view"),
    ("marketing_suppression.index", _l("Suppression list"), "view"),
    ("marketing_senders.index", _l("Senders"), "settings"),
    ("marketing_smtp.index", _l("SMTP accounts"), "settings"),
    ("marketing_replies.index", _l("Reply mailbox"), "settings"),
    ("marketing_setup.start", _l("Setup"), "settings"),
)


def _nav() -> list[dict[str, object]]:
    state = get_state()
    current = request.endpoint or ""
    # A campaign's own statistics and recipients belong to that campaign: its section is
    # Campaigns, where the user came from, not the Statistics overview.
    current_section = current.split(".", 1)[0]
    if current_section == "marketing_stats" and "campaign_id" in (request.view_args or {}):
        current_section = "marketing_campaigns"
    items = []
    for endpoint, label, permission in NAV:
        if endpoint not in current_app.view_functions or not can(permission, state.role_loader):
            continue
        section = endpoint.split(".", 1)[0]
        active = current == endpoint if section == "marketing" else current_section == section
        items.append({"url": url_for(endpoint), "label": str(label), "active": active})
    return items


def _template_context() -> dict:
    state = get_state()
    role = g.get("_marketing_role")
    return {
        "mkt": {
            "base_template": state.settings.base_template,
            "role": role,
            "locales": available_locales(),
            "can": lambda permission: can(permission, state.role_loader),
            "workspace": g.get("_marketing_workspace"),
            "account": _account_status(),
            "nav": _nav,
        }
    }


def forbidden_page(error: HTTPException):
    """A page the user's role may not open answers inside the plugin's layout, in the user's language,
    with the way back, instead of the bare server "Forbidden" page.

    Register it on page blueprints (``bp.register_error_handler(403, forbidden_page)``); JSON callers
    and users without any marketing role keep the plain answer.
    """
    state = get_state()
    role = current_role(state.role_loader)
    wants_json = request.accept_mimetypes.best == "application/json" or request.is_json
    if role is None or wants_json:
        return error
    g._marketing_role = role
    current_workspace(state.session, state.workspace_key)
    return render_template("marketing/forbidden.html", role=role), 403


def _workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


#: How many campaigns the overview lists (the newest first; the campaign list has the rest).
RECENT_CAMPAIGNS = 5


def dashboard():
    """The overview: what is in the CRM, what is sending now, and where to start.

    Small on purpose: the newest campaigns with their progress, the channels that can send, and
    links to the two things users come here to do (a new campaign, a new template)."""
    state = get_state()
    ws = _workspace_id()
    s = state.session
    counts = {
        "contacts": s.scalar(select(func.count()).where(Contact.workspace_id == ws)) or 0,
        "tags": s.scalar(select(func.count()).where(Tag.workspace_id == ws)) or 0,
        "views": s.scalar(select(func.count()).where(SavedView.workspace_id == ws)) or 0,
        "templates": s.scalar(select(func.count()).where(Template.workspace_id == ws)) or 0,
    }
    recent = s.scalars(
        select(Campaign)
        .where(Campaign.workspace_id == ws)
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(RECENT_CAMPAIGNS)
    ).all()
    accounts = s.scalars(
        select(ProviderAccount).where(ProviderAccount.workspace_id == ws).order_by(ProviderAccount.id)
    ).all()
    return render_template(
        "marketing/dashboard.html",
        counts=counts,
        recent=recent,
        accounts=accounts,
        lifecycle=lifecycle,
        campaigns_url=_endpoint_url("marketing_campaigns.index"),
        new_campaign_url=_endpoint_url("marketing_campaigns.new"),
        new_template_url=_endpoint_url("marketing_templates.new"),
        smtp_url=_endpoint_url("marketing_smtp.index"),
    )


def _endpoint_url(endpoint: str, **values: object) -> str | None:
    """A link to a part of the plugin, or ``None`` when the host left that part out."""
    return url_for(endpoint, **values) if endpoint in current_app.view_functions else None


def preferences():
    state = get_state()
    locale = request.form.get("locale")
    tz = request.form.get("timezone")
    if locale:
        if locale not in state.settings.locales:
            abort(400, description="unknown locale")
        session[SESSION_LOCALE_KEY] = locale
    if tz:
        if tz not in available_timezones():
            abort(400, description="unknown time zone")
        session[SESSION_TZ_KEY] = tz
    return redirect(safe_next_url(request.form.get("next"), url_for("marketing.dashboard")))


def tokens():
    state = get_state()
    ws = _workspace_id()
    user_id = str(current_user.get_id())
    new_token = error = None
    name = ""
    if request.method == "POST":
        name = " ".join((request.form.get("name") or "").split())
        if not name or len(name) > 120 or "\x00" in name:
            error = _("Give the token a name of 1 to 120 characters.")
        else:
            new_token = issue_token(state.session, workspace_id=ws, user_id=user_id, name=name)
            state.session.commit()
            name = ""
    rows = state.session.scalars(
        select(ApiToken)
        .where(ApiToken.workspace_id == ws, ApiToken.user_id == user_id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    ).all()
    page = render_template("marketing/tokens.html", tokens=rows, new_token=new_token, error=error, name=name)
    # The new token is in this page only: keep it out of every cache.
    return page, (422 if error else 200), {"Cache-Control": "no-store"}


def revoke_token(token_id: int):
    state = get_state()
    row = state.session.scalar(
        select(ApiToken).where(
            ApiToken.id == token_id,
            ApiToken.workspace_id == _workspace_id(),
            ApiToken.user_id == str(current_user.get_id()),
        )
    )
    if row is None:
        abort(404)
    row.revoked_at = utcnow()
    state.session.commit()
    flash(_("Token revoked."), "success")
    return redirect(url_for("marketing.tokens"))


__all__ = ["PERMISSIONS", "create_blueprint"]
