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
    from . import contacts, me, tags, views

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
    for module in (contacts, tags, views, me):
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
        return authenticate()

    previous = app.error_handler_spec.get(None, {}).get(None, {}).get(HTTPException)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if _in_api(settings):
            data = getattr(error, "data", None) or {}
            errors = data.get("errors") or data.get("messages")
            return _error(error.code or 500, error.name, message=error.description, errors=errors)
        if previous is not None:
            return previous(error)
        return error

    return blueprints


def authenticate():
    """Resolve the caller: bearer token, else the host session (CSRF-checked on writes)."""
    state = get_state()
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = find_token(state.session, header[7:].strip())
        login_manager = getattr(current_app, "login_manager", None)
        loader = getattr(login_manager, "_user_callback", None)
        user = loader(token.user_id) if token is not None and loader is not None else None
        if user is None:
            return _error(401, "Unauthorized", message="invalid or revoked API token")
        g._login_user = user  # Flask-Login's per-request user, as its request loaders set it
        g._marketing_token_workspace = token.workspace
        state.session.commit()
    elif current_user and current_user.is_authenticated:
        check_csrf()
    else:
        return _error(401, "Unauthorized", message="log in or send Authorization: Bearer <token>")
    if state.role_loader(current_user._get_current_object()) is None:
        return _error(403, "Forbidden", message="your account has no marketing role")
    current_workspace(state.session, state.workspace_key)
    return None
