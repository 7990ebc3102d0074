"""SMTP accounts ("my mailbox" sending): list, form, test connection, DKIM key (admin only).

Thin views: the form is loaded with ``SmtpAccountIn``, one ``plugin.smtp_accounts`` call does the
work, errors are shown beside their field.  Secrets go from the form straight into the service
(encrypted there); the pages only ever show ``••••`` plus the last four characters, and the
password inputs are always rendered empty.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError

from .. import smtp_accounts as service
from ..access import current_workspace
from ..config import Settings
from ..errors import InvalidInput, InvalidTransition, NotFound
from ..extension import get_state
from ..i18n import _
from ..schemas.common import MAX_ID
from ..schemas.smtp_accounts import DEFAULT_DAILY_LIMIT, MAX_DKIM_KEY_BYTES, SECURITY_CHOICES, SmtpAccountIn
from . import admin
from .admin import forbidden_page
from .security import guard_page

ACCOUNT = f"/smtp/<int(min=1,max={MAX_ID}):account_id>"
#: Fields the form shows again after an error (never the password or the key).
_ECHOED = (
    "name",
    "host",
    "port",
    "security",
    "username",
    "from_address",
    "daily_limit",
    "send_rate",
    "dkim_selector",
)


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_smtp", __name__, template_folder="../templates")
    bp.before_request(lambda: guard_page("settings"))
    bp.register_error_handler(403, forbidden_page)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/smtp", endpoint="index", view_func=index)
    bp.add_url_rule("/smtp/new", endpoint="new", view_func=new, methods=["GET", "POST"])
    bp.add_url_rule(ACCOUNT, endpoint="edit", view_func=edit, methods=["GET", "POST"])
    bp.add_url_rule(f"{ACCOUNT}/test", endpoint="test", view_func=test, methods=["POST"])
    bp.add_url_rule(f"{ACCOUNT}/delete", endpoint="delete", view_func=delete, methods=["POST"])
    return bp


def _workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _no_store(page: str, status: int = 200):
    # The form pages hint at stored secrets; keep them out of shared caches.
    return page, status, {"Cache-Control": "no-store"}


def index():
    state = get_state()
    accounts = service.list_accounts(state.session, _workspace_id())
    rows = [
        {
            "account": account,
            "password_hint": service.password_hint(account, state.secrets),
            "dkim": bool(account.dkim_selector and account.dkim_private_key_encrypted),
            "rate": account.send_rate if account.send_rate is not None else state.settings.smtp_send_rate,
        }
        for account in accounts
    ]
    return _no_store(render_template("marketing/smtp/index.html", rows=rows))


def _form_data() -> dict[str, Any]:
    """The posted form, with an uploaded key file read into ``dkim_private_key``."""
    data: dict[str, Any] = request.form.to_dict()
    upload = request.files.get("dkim_key_file")
    if upload is not None and upload.filename:
        raw = upload.read(MAX_DKIM_KEY_BYTES + 1)
        if len(raw) > MAX_DKIM_KEY_BYTES:
            raise InvalidInput(_("The key file is too large for a private key."), field="dkim_private_key")
        data["dkim_private_key"] = raw.decode("ascii", "replace")
    return data


def _errors(exc: ValidationError | InvalidInput) -> dict[str, str]:
    if isinstance(exc, InvalidInput):
        return {exc.field or "_schema": str(exc)}
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return {
        str(key): " ".join(map(str, value)) if isinstance(value, list) else str(value)
        for key, value in messages.items()
    }


def _render_form(account, values: dict[str, Any], errors: dict[str, str], status: int = 200):
    state = get_state()
    dkim = None
    if account is not None:
        try:
            dkim = service.dkim_info(account, state.secrets)
        except InvalidInput:  # a key stored by an older version that no longer loads
            dkim = None
    page = render_template(
        "marketing/smtp/form.html",
        account=account,
        values=values,
        errors=errors,
        securities=SECURITY_CHOICES,
        password_hint=service.password_hint(account, state.secrets) if account is not None else "",
        dkim=dkim,
        default_rate=state.settings.smtp_send_rate,
    )
    return _no_store(page, status)


def _values_of(account) -> dict[str, Any]:
    return {
        "name": account.name,
        "host": account.smtp_host,
        "port": account.smtp_port,
        "security": account.smtp_security or "starttls",
        "username": account.smtp_username or "",
        "from_address": account.from_address or "",
        "daily_limit": account.daily_limit,
        "send_rate": account.send_rate if account.send_rate is not None else "",
        "dkim_selector": account.dkim_selector or "",
    }


def _save(account_id: int | None):
    """Validate and store the posted form; the form again with errors beside fields on failure."""
    state = get_state()
    ws = _workspace_id()
    account = service.get_account(state.session, ws, account_id) if account_id else None
    posted = request.form.to_dict()
    try:
        data = SmtpAccountIn().load(_form_data())
        if account_id is None:
            account = service.create_account(state.session, ws, data, secrets=state.secrets)
        else:
            account = service.update_account(state.session, ws, account_id, data, secrets=state.secrets)
        state.session.commit()
    except (ValidationError, InvalidInput) as exc:
        state.session.rollback()
        if account_id is not None:
            account = service.get_account(state.session, ws, account_id)
        values = {key: posted.get(key, "") for key in _ECHOED}
        return _render_form(account, values, _errors(exc), 422)
    flash(_("SMTP account %(name)s saved.", name=account.name), "success")
    if request.form.get("then") == "test":
        return _run_test(account)
    return redirect(url_for("marketing_smtp.edit", account_id=account.id))


def new():
    if request.method == "POST":
        return _save(None)
    values = {"security": "starttls", "port": 587, "daily_limit": DEFAULT_DAILY_LIMIT, "send_rate": ""}
    return _render_form(None, values, {})


def edit(account_id: int):
    if request.method == "POST":
        try:
            return _save(account_id)
        except NotFound:
            abort(404)
    state = get_state()
    try:
        account = service.get_account(state.session, _workspace_id(), account_id)
    except NotFound:
        abort(404)
    return _render_form(account, _values_of(account), {})


def _run_test(account):
    state = get_state()
    ok, message = service.test_account(account, secrets=state.secrets, settings=state.settings)
    if ok:
        flash(_("Connection test passed: %(message)s", message=message), "success")
    else:
        flash(_("Connection test failed: %(message)s", message=message), "error")
    return redirect(url_for("marketing_smtp.edit", account_id=account.id))


def test(account_id: int):
    state = get_state()
    try:
        account = service.get_account(state.session, _workspace_id(), account_id)
    except NotFound:
        abort(404)
    return _run_test(account)


def delete(account_id: int):
    state = get_state()
    try:
        account = service.get_account(state.session, _workspace_id(), account_id)
        name = account.name
        service.delete_account(state.session, account.workspace_id, account_id)
        state.session.commit()
    except NotFound:
        abort(404)
    except InvalidTransition as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("marketing_smtp.edit", account_id=account_id))
    flash(_("SMTP account %(name)s deleted.", name=name), "success")
    return redirect(url_for("marketing_smtp.index"))
