"""JSON error bodies of the API: ``{"code", "status", "message"?, "errors"?}``, where ``errors``
names the field at fault (``{"json": {"email": ["..."]}}``)."""

from __future__ import annotations

from flask import jsonify
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ...errors import InvalidInput, MarketingError, NotFound, PermissionDenied
from ...extension import get_state


def error_response(code: int, status: str, *, message: str | None = None, errors=None, headers=None):
    body: dict = {"code": code, "status": status}
    if message:
        body["message"] = message
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = code
    for name, value in headers or ():
        response.headers.add(name, value)
    if code == 401 and "WWW-Authenticate" not in response.headers:
        # RFC 6750: tell clients which scheme to use; the session is the other way in.
        response.headers["WWW-Authenticate"] = 'Bearer realm="marketing"'
    return response


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


#: Errors any operation can answer, documented on every operation (the rest fall under
#: ``default``): bad JSON or a missing CSRF header, no or a bad token, a role that may not, a
#: record that is not in the caller's workspace.
DOCUMENTED_ERRORS: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
}


class ApiBlueprint(Blueprint):
    """flask-smorest Blueprint whose operations document the shared error responses."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.insert(0, self._document_errors)

    @staticmethod
    def _document_errors(doc, doc_info, **_):
        responses = doc_info.setdefault("response", {}).setdefault("responses", {})
        for code, ref in DOCUMENTED_ERRORS.items():
            responses.setdefault(code, [ref])
        return doc


def api_blueprint(name: str, description: str) -> Blueprint:
    """A resource blueprint with the plugin's error handlers attached before any registration."""
    blp = ApiBlueprint(name, __name__, description=description)
    blp.register_error_handler(MarketingError, domain_error)
    blp.register_error_handler(ValidationError, validation_error)
    return blp
