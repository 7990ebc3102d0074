"""JSON error bodies of the API: ``{"code", "status", "message"?, "errors"?}``, where ``errors``
names the field at fault (``{"json": {"email": ["..."]}}``)."""

from __future__ import annotations

from flask import jsonify
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ...errors import InvalidInput, MarketingError, NotFound, PermissionDenied
from ...extension import get_state


def error_response(code: int, status: str, *, message: str | None = None, errors=None):
    body: dict = {"code": code, "status": status}
    if message:
        body["message"] = message
    if errors is not None:
        body["errors"] = errors
    return jsonify(body), code


def domain_error(error: MarketingError):
    get_state().session.rollback()
    if isinstance(error, NotFound):
        return error_response(404, "Not Found", message=f"{error} does not exist")
    if isinstance(error, PermissionDenied):
        return error_response(403, "Forbidden", message=f"your role may not do this ({error})")
    if isinstance(error, InvalidInput):
        field = error.field or "_schema"
        return error_response(422, "Unprocessable Entity", errors={"json": {field: [str(error)]}})
    return error_response(409, "Conflict", message=str(error))


def validation_error(error: ValidationError):
    get_state().session.rollback()
    return error_response(422, "Unprocessable Entity", errors={"json": error.messages})


def api_blueprint(name: str, description: str) -> Blueprint:
    """A resource blueprint with the plugin's error handlers attached before any registration."""
    blp = Blueprint(name, __name__, description=description)
    blp.register_error_handler(MarketingError, domain_error)
    blp.register_error_handler(ValidationError, validation_error)
    return blp
