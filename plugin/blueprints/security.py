"""Login, role and CSRF checks shared by the plugin's blueprints.

The plugin checks CSRF on its own forms itself (Flask-WTF's token functions), so it works whether
or not the host runs ``CSRFProtect``; if the host does, the plugin's blueprints are exempted from
it because API calls with a bearer token carry no CSRF token and public one-click unsubscribe
posts come from mail clients.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, g, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from wtforms import ValidationError as WTFValidationError

from ..access import current_workspace, require
from ..errors import PermissionDenied
from ..extension import get_state

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def check_csrf() -> None:
    """Refuse an unsafe request without a valid token (form field or X-CSRFToken header)."""
    if request.method not in UNSAFE_METHODS:
        return
    token = request.form.get("csrf_token") or request.headers.get("X-CSRFToken")
    try:
        validate_csrf(token)
    except (WTFValidationError, CSRFError) as exc:
        abort(400, description=f"CSRF check failed: {exc}")


def safe_next_url(target: str | None, fallback: str) -> str:
    """``target`` if it is a path on this site, else ``fallback`` (no open redirect).

    Refused: absolute and protocol-relative URLs (``https://x``, ``//x``), backslashes (browsers
    read ``/\\x`` as ``//x``), and any control character or whitespace, because browsers drop
    tabs and newlines from URLs, turning ``/\\t/evil.example`` into ``//evil.example``.
    """
    target = target or ""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return fallback
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return fallback
    return target


def guard_page(permission: str = "view"):
    """Before-request check for pages: logged in (else the host's login), allowed, CSRF-valid.

    Returns a response to short-circuit the request (the host's login redirect), else ``None``.
    """
    if not current_user or not current_user.is_authenticated:
        login_manager = getattr(current_app, "login_manager", None)
        if login_manager is not None:
            return login_manager.unauthorized()
        abort(401)
    state = get_state()
    try:
        g._marketing_role = require(permission, state.role_loader)
    except PermissionDenied:
        abort(403)
    current_workspace(state.session, state.workspace_key)
    check_csrf()
    return None


def install_template_globals(app: Flask) -> None:
    """Globals every page needs, the host's included: our translations, CSRF, dates, numbers."""
    from .. import i18n
    from ..providers.sendcloud import account_type_label

    env = app.jinja_env
    env.globals.setdefault("csrf_token", generate_csrf)
    env.globals.update(
        mkt_=i18n.gettext,
        mkt_ngettext=i18n.ngettext,
        mkt_locale=i18n.preferred_locale,
        mkt_locales=i18n.available_locales,
        mkt_timezone=i18n.shown_timezone,
        mkt_timezones=i18n.timezone_choices,
    )
    env.filters["mkt_datetime"] = i18n.format_datetime
    env.filters["mkt_date"] = i18n.format_day
    env.filters["mkt_money"] = i18n.format_money
    env.filters["mkt_number"] = i18n.format_number
    env.filters["mkt_label"] = i18n.label
    env.filters["mkt_account_type"] = account_type_label


def exempt_from_host_csrf(app: Flask, blueprints: Iterable[Blueprint]) -> None:
    csrf = app.extensions.get("csrf")
    if csrf is None:
        return
    for bp in blueprints:
        csrf.exempt(bp)
