"""Setup wizard pages under ``/marketing/setup``: admin only ("settings"), one page per step.

Views are thin: they read the form, call one ``SetupWizard`` method, commit on success or roll
back and show the error beside its field.  Secrets posted here go straight into the service
(encrypted there) and are never rendered back: a stored key shows as ``••••`` plus its last four
characters.
"""

from __future__ import annotations

import re
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from ..access import current_workspace
from ..config import Settings
from ..errors import InvalidInput, InvalidTransition, MarketingError
from ..extension import get_state
from ..i18n import _
from ..setup_wizard import REQUIRED_PURPOSES, STEPS, SetupWizard, mask_last4
from . import admin
from .security import guard_page

#: URL slug of each step.
SLUGS = {
    "domain": "domain",
    "credentials": "credentials",
    "dns": "dns",
    "api_users": "api-users",
    "senders": "senders",
    "done": "done",
}


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_setup", __name__, template_folder="../templates")
    bp.before_request(_guard)
    bp.context_processor(admin._template_context)
    bp.context_processor(_setup_context)
    bp.add_url_rule("/setup", view_func=start)
    bp.add_url_rule("/setup/domain", view_func=domain, methods=["GET", "POST"])
    bp.add_url_rule("/setup/credentials", view_func=credentials, methods=["GET", "POST"])
    bp.add_url_rule("/setup/dns", view_func=dns)
    bp.add_url_rule("/setup/dns/register", view_func=dns_register, methods=["POST"])
    bp.add_url_rule("/setup/dns/check", view_func=dns_check, methods=["POST"])
    bp.add_url_rule("/setup/dns/continue", view_func=dns_continue, methods=["POST"])
    bp.add_url_rule("/setup/api-users", view_func=api_users, methods=["GET", "POST"])
    bp.add_url_rule("/setup/senders", view_func=senders, methods=["GET", "POST"])
    bp.add_url_rule("/setup/senders/resend", view_func=senders_resend, methods=["POST"])
    bp.add_url_rule("/setup/senders/continue", view_func=senders_continue, methods=["POST"])
    bp.add_url_rule("/setup/done", view_func=done, methods=["GET", "POST"])
    bp.add_url_rule("/setup/purge", view_func=purge, methods=["POST"])
    bp.add_url_rule("/setup/sandbox-dns", view_func=sandbox_dns, methods=["POST"])
    return bp


def _guard():
    return guard_page("settings")


def current_wizard() -> SetupWizard:
    """The service for the current workspace; factories may be replaced by the host or demo."""
    state = get_state()
    ws = current_workspace(state.session, state.workspace_key)
    factories = current_app.extensions.get("marketing_setup_factories", {})
    return SetupWizard(
        state.session,
        ws.id,
        state.settings,
        state.secrets,
        client_factory=factories.get("client"),
        provider_factory=factories.get("provider"),
        resolver_factory=factories.get("resolver"),
    )


def _setup_context() -> dict[str, Any]:
    return {"setup_slugs": SLUGS, "required_purposes": REQUIRED_PURPOSES}


def _step_url(step: str) -> str:
    return url_for(f"marketing_setup.{step}")


def _open(wizard: SetupWizard, step: str):
    """A redirect to the current step when ``step`` is not reachable yet, else ``None``."""
    if not wizard.reachable(step):
        state = get_state()
        state.session.commit()
        return redirect(_step_url(wizard.current_step()))
    return None


def _render(wizard: SetupWizard, step: str, template: str, **context: Any):
    state = get_state()
    account = wizard.account()
    html = render_template(
        f"marketing/setup/{template}",
        wizard=wizard,
        step=step,
        steps=wizard.steps(),
        setup=wizard.state(),
        account=account,
        domain=wizard.domain(),
        sandbox=_sandbox_panel(wizard, step),
        **context,
    )
    state.session.commit()
    return html


def _fail(exc: MarketingError) -> dict[str, str]:
    state = get_state()
    state.session.rollback()
    errors = getattr(exc, "errors", None)
    if errors:
        return dict(errors)
    field = getattr(exc, "field", None) or "_form"
    return {field: str(exc)}


def _transition(exc: InvalidTransition, wizard: SetupWizard):
    get_state().session.rollback()
    flash(str(exc), "error")
    return redirect(_step_url(wizard.current_step()))


# -- pages --------------------------------------------------------------------------------------
def start():
    wizard = current_wizard()
    step = wizard.current_step()
    get_state().session.commit()
    return redirect(_step_url(step))


def domain():
    wizard = current_wizard()
    errors: dict[str, str] = {}
    review = None
    value = wizard.state().domain_name or ""
    if request.method == "POST":
        value = (request.form.get("domain") or "").strip()
        acknowledged = (request.form.get("acknowledged") or "") == value.lower()
        try:
            review = wizard.submit_domain(
                value, confirmed=bool(request.form.get("confirm")), warnings_acknowledged=acknowledged
            )
        except InvalidTransition as exc:
            return _transition(exc, wizard)
        except InvalidInput as exc:
            errors = _fail(exc)
            if errors.get("confirm") and "domain" not in errors:
                review = _safe_review(wizard, value)
        else:
            if review.saved:
                get_state().session.commit()
                return redirect(_step_url("credentials"))
    elif value:
        review = None
    return _render(
        wizard,
        "domain",
        "domain.html",
        value=value,
        review=review,
        errors=errors,
        locked=wizard.domain_locked(),
    )


def _safe_review(wizard: SetupWizard, value: str):
    try:
        return wizard.review_domain(value)
    except MarketingError:
        return None


def credentials():
    wizard = current_wizard()
    if (redirect_to := _open(wizard, "credentials")) is not None:
        return redirect_to
    errors: dict[str, str] = {}
    account = wizard.account()
    api_user = account.api_user if account else ""
    if request.method == "POST":
        api_user = (request.form.get("api_user") or "").strip()
        try:
            wizard.submit_credentials(api_user, request.form.get("api_key"))
        except InvalidTransition as exc:
            return _transition(exc, wizard)
        except InvalidInput as exc:
            errors = _fail(exc)
        else:
            get_state().session.commit()
            _register_and_check(wizard)
            return redirect(_step_url("dns"))
    return _render(
        wizard,
        "credentials",
        "credentials.html",
        api_user=api_user,
        key_hint=_key_hint(wizard),
        errors=errors,
        notes=(wizard.state().notes or {}).get("account"),
    )


def _key_hint(wizard: SetupWizard) -> str:
    account = wizard.account()
    if account is None or not account.api_key_encrypted:
        return ""
    try:
        return mask_last4(get_state().secrets.decrypt(account.api_key_encrypted))
    except MarketingError:
        return "••••"


def _register_and_check(wizard: SetupWizard) -> None:
    """After credentials: register the domain and check DNS once, so step 3 opens with data."""
    state = get_state()
    try:
        wizard.register_domain()
        wizard.check_dns()
    except MarketingError as exc:
        state.session.rollback()
        flash(str(exc), "error")
    else:
        state.session.commit()


def dns():
    wizard = current_wizard()
    if (redirect_to := _open(wizard, "dns")) is not None:
        return redirect_to
    return _render(
        wizard,
        "dns",
        "dns.html",
        rows=_rows(wizard),
        ready=wizard.dns_ready(),
        recheck_seconds=get_state().settings.dns_recheck_seconds,
        errors={},
    )


def dns_register():
    wizard = current_wizard()
    if (redirect_to := _open(wizard, "dns")) is not None:
        return redirect_to
    _register_and_check(wizard)
    return redirect(_step_url("dns"))


def _wants_json() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


def dns_check():
    wizard = current_wizard()
    state = get_state()
    if not wizard.reachable("dns"):
        state.session.rollback()
        if _wants_json():
            return jsonify(error=_("Finish the earlier steps first.")), 409
        return redirect(_step_url(wizard.current_step()))
    try:
        wizard.check_dns()
    except MarketingError as exc:
        state.session.rollback()
        if _wants_json():
            return jsonify(error=str(exc)), 502
        flash(str(exc), "error")
        return redirect(_step_url("dns"))
    rows = _rows(wizard)
    ready = wizard.dns_ready()
    checked_at = wizard.domain().checked_at
    state.session.commit()
    if _wants_json():
        return jsonify(rows=rows, ready=ready, checked_at=checked_at.isoformat() if checked_at else None)
    return redirect(_step_url("dns"))


def dns_continue():
    wizard = current_wizard()
    try:
        wizard.finish_dns()
    except InvalidTransition as exc:
        return _transition(exc, wizard)
    except InvalidInput as exc:
        errors = _fail(exc)
        return _render(
            wizard,
            "dns",
            "dns.html",
            rows=_rows(wizard),
            ready=wizard.dns_ready(),
            recheck_seconds=get_state().settings.dns_recheck_seconds,
            errors=errors,
        )
    get_state().session.commit()
    return redirect(_step_url("api_users"))


def _rows(wizard: SetupWizard) -> list[dict[str, Any]]:
    """One row per record: what to publish, what DNS answers, and what to do about it."""
    domain = wizard.domain()
    if domain is None:
        return []
    checks = list(domain.last_check or [])
    rows = []
    for index, record in enumerate(domain.dns_records or []):
        check = _match_check(record, checks, index)
        status = (check or {}).get("status") or "unknown"
        value = record.get("value", "")
        if record.get("type", "").upper() == "MX" and record.get("priority") is not None:
            shown_value = f"{record['priority']} {value}"
        else:
            shown_value = value
        rows.append(
            {
                "index": index,
                "purpose": record.get("purpose", ""),
                "required": record.get("purpose") in REQUIRED_PURPOSES,
                "type": record.get("type", ""),
                "host": record.get("host", ""),
                "value": shown_value,
                "copy_value": value,
                "found": list((check or {}).get("found") or []),
                "status": status,
                "message": _message(check),
                "hint": _hint(check),
            }
        )
    return rows


def _match_check(record: dict[str, Any], checks: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    for check in checks:
        if (
            check.get("purpose") == record.get("purpose")
            and (check.get("host") or "").rstrip(".").lower()
            == (record.get("host") or "").rstrip(".").lower()
        ):
            return check
    return checks[index] if index < len(checks) else None


#: Short explanations per record purpose, shown when a record does not pass.
def _purpose_hint(purpose: str) -> str:
    return {
        "ownership": _("Proves to SendCloud that the domain is yours."),
        "spf": _(
            "Lets receivers accept SendCloud's servers as senders for this domain. "
            "Keep exactly one SPF record: merge include:spf.sendcloud.org into an existing one."
        ),
        "dkim": _("Signs every mail; without it most mailboxes put the mail in spam."),
        "mx": _("Receives bounces for the domain."),
        "dmarc": _("Advised: tells mailboxes what to do with mail that fails SPF and DKIM."),
        "cname": _("Needed only for click tracking on your own domain."),
    }.get(purpose, "")


def _message(check: dict[str, Any] | None) -> str:
    if not check:
        return _("Not checked yet.")
    status = check.get("status")
    if status == "pass":
        return _("Published correctly.")
    return check.get("message") or ""


def _hint(check: dict[str, Any] | None) -> str:
    if not check or check.get("status") == "pass":
        return ""
    return check.get("hint") or _purpose_hint(check.get("purpose", ""))


def api_users():
    wizard = current_wizard()
    if (redirect_to := _open(wizard, "api_users")) is not None:
        return redirect_to
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            wizard.finish_api_users(request.form.get("app_key"))
        except InvalidTransition as exc:
            return _transition(exc, wizard)
        except InvalidInput as exc:
            errors = _fail(exc)
        else:
            get_state().session.commit()
            flash(_("API_USERs are bound to the domain and the webhook is registered."), "success")
            # after setup (say, to enter the APP KEY again) back to the summary, not step 5
            return redirect(_step_url("done" if wizard.is_completed() else "senders"))
    account = wizard.account()
    return _render(
        wizard,
        "api_users",
        "api_users.html",
        errors=errors,
        webhook_url=wizard.webhook_url(),
        app_key_stored=bool(account and account.webhook_app_key_encrypted),
        prefix=wizard.api_user_prefix(),
    )


def senders():
    wizard = current_wizard()
    if (redirect_to := _open(wizard, "senders")) is not None:
        return redirect_to
    errors: dict[str, str] = {}
    sender = wizard.sender()
    form = {
        "from_address": sender.from_address if sender else f"news@{wizard.state().domain_name or ''}",
        "from_name": sender.from_name if sender else "",
        "reply_to": (sender.reply_to or "") if sender else "",
        "company_name": sender.company_name if sender else "",
        "postal_address": sender.postal_address if sender else "",
    }
    if request.method == "POST":
        form = {key: (request.form.get(key) or "").strip() for key in form}
        try:
            wizard.submit_sender(**form)
        except InvalidTransition as exc:
            return _transition(exc, wizard)
        except InvalidInput as exc:
            errors = _fail(exc)
        else:
            get_state().session.commit()
            flash(_("Sender saved."), "success")
            return redirect(_step_url("senders"))
    return _render(wizard, "senders", "senders.html", errors=errors, form=form, sender=wizard.sender())


def senders_resend():
    wizard = current_wizard()
    try:
        sender = wizard.sender()
        if sender is not None:
            sender.reply_to_verification_sent_at = None
        wizard.send_reply_to_confirmation(sender)
    except InvalidTransition as exc:
        return _transition(exc, wizard)
    except InvalidInput as exc:
        get_state().session.rollback()
        flash(str(exc), "error")
    else:
        get_state().session.commit()
        flash(_("The confirmation mail was sent again."), "success")
    return redirect(_step_url("senders"))


def senders_continue():
    wizard = current_wizard()
    try:
        wizard.finish_senders()
    except InvalidTransition as exc:
        return _transition(exc, wizard)
    except InvalidInput as exc:
        errors = _fail(exc)
        sender = wizard.sender()
        form = {
            "from_address": sender.from_address if sender else "",
            "from_name": sender.from_name if sender else "",
            "reply_to": (sender.reply_to or "") if sender else "",
            "company_name": sender.company_name if sender else "",
            "postal_address": sender.postal_address if sender else "",
        }
        return _render(wizard, "senders", "senders.html", errors=errors, form=form, sender=sender)
    get_state().session.commit()
    _finish(wizard)
    return redirect(_step_url("done"))


def _finish(wizard: SetupWizard) -> bool:
    state = get_state()
    try:
        wizard.finish()
    except MarketingError as exc:
        state.session.rollback()
        flash(str(exc), "error")
        return False
    state.session.commit()
    return True


def done():
    wizard = current_wizard()
    if (redirect_to := _open(wizard, "done")) is not None:
        return redirect_to
    if request.method == "POST":
        if _finish(wizard):
            flash(_("Account synced."), "success")
        return redirect(_step_url("done"))
    return _render(
        wizard,
        "done",
        "done.html",
        snapshot=wizard.latest_snapshot(),
        notes=wizard.state().notes or {},
        sender=wizard.sender(),
    )


def purge():
    wizard = current_wizard()
    try:
        wizard.purge(request.form.get("confirm_name") or "")
    except InvalidInput as exc:
        get_state().session.rollback()
        flash(str(exc), "error")
        return redirect(_step_url(wizard.current_step()))
    get_state().session.commit()
    flash(_("The binding was removed. You can set up a new one."), "success")
    return redirect(_step_url("domain"))


# -- demo sandbox ------------------------------------------------------------------------------
def _sandbox_panel(wizard: SetupWizard, step: str) -> dict[str, Any] | None:
    """Demo only: what the "sandbox DNS" panel and the simulator's webhook key hint need."""
    state = get_state()
    if not state.settings.sandbox or "sandbox_dns" not in current_app.extensions:
        return None
    simulator = current_app.extensions.get("sandbox_sendcloud")
    app_key = None
    if step == "api_users" and simulator is not None:
        app_key = getattr(getattr(simulator, "simulator", simulator), "webhook_app_key", None)
    confirm_link = None
    sender = wizard.sender() if step == "senders" else None
    if (
        sender is not None
        and sender.reply_to
        and sender.reply_to_verified_at is None
        and simulator is not None
    ):
        confirm_link = _simulated_confirmation_link(
            getattr(simulator, "simulator", simulator), sender.reply_to
        )
    return {
        "simulator_url": getattr(simulator, "root", None),
        "confirm_link": confirm_link,
        "can_publish": step == "dns" and wizard.domain() is not None,
        "simulator_app_key": app_key,
        "demo_account": current_app.config.get("MARKETING_SANDBOX_ACCOUNT"),
    }


def _simulated_confirmation_link(simulator: Any, address: str) -> str | None:
    """The newest reply-to confirmation link the simulator "delivered" to ``address``."""
    for mail in reversed(list(getattr(simulator, "outbox", []) or [])):
        if getattr(mail, "recipient", "").lower() != address.lower():
            continue
        match = _CONFIRM_LINK.search(getattr(mail, "html", "") or "")
        if match:
            return match.group(1)
    return None


_CONFIRM_LINK = re.compile(r'href="([^"]+/confirm-reply-to/[^"]+)"')


def sandbox_dns():
    """Demo only: publish the domain's records in the in-process DNS responder."""
    state = get_state()
    responder = current_app.extensions.get("sandbox_dns")
    if not state.settings.sandbox or responder is None:
        abort(404)
    wizard = current_wizard()
    domain = wizard.domain()
    if domain is None:
        abort(409)
    responder.publish(wizard.records())
    state.session.commit()
    flash(_("Sandbox DNS: the records are published. Checking again..."), "success")
    try:
        wizard.check_dns()
    except MarketingError as exc:
        state.session.rollback()
        flash(str(exc), "error")
    else:
        state.session.commit()
    return redirect(_step_url("dns"))


__all__ = ["STEPS", "create_blueprint"]
