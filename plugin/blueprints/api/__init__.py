"""The JSON API under ``/marketing/api/v1``: flask-smorest resources with an OpenAPI document.

Authentication: the host's session (with the CSRF header on unsafe calls) or a per-user bearer
token.  Every error answers JSON naming the field at fault; the handlers are scoped to the API's
URL prefix so the host's own error pages stay untouched.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, g, request
from flask_login import current_user
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from ...access import current_workspace, find_token
from ...config import Settings
from ...extension import get_state
from ...models import Workspace
from ..security import check_csrf
from .errors import error_response as _error

API_TITLE = "CRM marketing plugin API"


class MarketingApi(Api):
    """flask-smorest's Api, minus its app-wide error handler (the host keeps its own pages)."""

    def _register_error_handlers(self) -> None:
        return None


def _in_api(settings: Settings) -> bool:
    return request.path == settings.api_prefix or request.path.startswith(settings.api_prefix + "/")


def register_api(app: Flask, settings: Settings) -> list[Blueprint]:
    from . import contacts, me, tags, trigger_mails, views

    prefix = settings.api_prefix
    app.config.setdefault("MARKETING_API_TITLE", API_TITLE)
    app.config.setdefault("MARKETING_API_VERSION", "v1")
    app.config.setdefault("MARKETING_OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("MARKETING_OPENAPI_URL_PREFIX", prefix)
    app.config.setdefault("MARKETING_OPENAPI_JSON_PATH", "openapi.json")
    api = MarketingApi(
        app,
        config_prefix="MARKETING_",
        spec_kwargs={
            "servers": [{"url": "/"}],
            "components": {
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "session": {"type": "apiKey", "in": "cookie", "name": "session"},
                }
            },
            "security": [{"bearer": []}, {"session": []}],
        },
    )
    blueprints = []
    for module in (contacts, tags, views, me, trigger_mails):
        bp = module.blp
        api.register_blueprint(bp, url_prefix=f"{prefix}{module.URL}")
        blueprints.append(bp)
    doc_bp = app.blueprints.get("marketing-api-docs")
    if doc_bp is not None:
        blueprints.append(doc_bp)

    openapi_path = f"{prefix}/openapi.json"

    @app.before_request
    def _authenticate_api():
        if not _in_api(settings) or request.path == openapi_path:
            return None
        return authenticate() or _require_json_body()

    previous = app.error_handler_spec.get(None, {}).get(None, {}).get(HTTPException)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if _in_api(settings):
            data = getattr(error, "data", None) or {}
            errors = data.get("errors") or data.get("messages")
            # Keep what the exception says about itself (Allow on 405, ...), minus its HTML type.
            headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
            headers += list((data.get("headers") or {}).items())
            return _error(
                error.code or 500, error.name, message=error.description, errors=errors, headers=headers
            )
        if previous is not None:
            return previous(error)
        return error

    return blueprints


def authenticate():
    """Resolve the caller: bearer token, else the host session (CSRF-checked on writes).

    A token acts only in the workspace it was issued in, and only while its user still belongs
    to that workspace (the host's workspace hook, asked with the token's user as current user,
    must agree), so moving a user to another organization retires their old tokens there.
    """
    state = get_state()
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        refused = _authenticate_token(state, credentials.strip())
        if refused is not None:
            return refused
    elif current_user and current_user.is_authenticated:
        check_csrf()
    else:
        return _error(401, "Unauthorized", message="log in or send Authorization: Bearer <token>")
    if state.role_loader(current_user._get_current_object()) is None:
        return _error(403, "Forbidden", message="your account has no marketing role")
    current_workspace(state.session, state.workspace_key)
    return None


def _require_json_body():
    """Every write of the API takes a JSON object: anything else is refused before parsing,
    instead of being read as an empty body (which a PATCH would take for "change nothing")."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    if request.routing_exception is not None:  # 404/405 say more than 415
        return None
    if not request.is_json:
        return _error(
            415,
            "Unsupported Media Type",
            message="send the body as JSON with Content-Type: application/json",
        )
    try:
        request.get_json(silent=True)  # syntax errors are left to the parser's 400 below
    except RecursionError:
        return _error(400, "Bad Request", message="the JSON body is nested too deeply")
    return None


def _authenticate_token(state, credentials: str):
    """Log the token's user in for this request only; an error response if that cannot be."""
    token = find_token(state.session, credentials) if credentials else None
    login_manager = getattr(current_app, "login_manager", None)
    loader = getattr(login_manager, "_user_callback", None)
    user = loader(token.user_id) if token is not None and loader is not None else None
    workspace = state.session.get(Workspace, token.workspace_id) if user is not None else None
    if user is None or workspace is None:
        state.session.rollback()
        return _error(401, "Unauthorized", message="invalid or revoked API token")
    g._login_user = user  # Flask-Login's per-request user, as its request loaders set it
    if state.workspace_key() != workspace.key:
        g.pop("_login_user", None)
        state.session.rollback()
        return _error(401, "Unauthorized", message="this token belongs to another workspace")
    g._marketing_token_workspace = workspace
    state.session.commit()  # keeps last_used_at
    return None
