"""Template pages under ``/marketing/templates``: list, edit with live preview, import, test send, review.

Thin views: input through ``plugin.schemas.templates``, one call into
``plugin.campaigns.templates``, render.  Everyone who may see the plugin may read templates and
preview them; changing anything (including test sends and review submissions) needs
``campaigns.write``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from marshmallow import ValidationError

from ..access import can, current_workspace
from ..campaigns import rendering
from ..campaigns import templates as service
from ..channels import provider_factory
from ..config import Settings
from ..contacts import custom_fields
from ..errors import InvalidInput, InvalidTransition, MarketingError, NotFound, ProviderError
from ..extension import get_state
from ..i18n import _, user_timezone
from ..models import Sender
from ..schemas.templates import (
    ContactSearchArgs,
    ImportFileForm,
    ImportUrlForm,
    ListArgs,
    PreviewIn,
    SendTestForm,
    TemplateForm,
)
from . import admin
from .admin import forbidden_page
from .security import guard_page

TEMPLATE_ID = "<int(min=1,max=2147483647):template_id>"
PER_PAGE = 50


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_templates", __name__, template_folder="../templates")
    bp.before_request(guard_page)
    bp.register_error_handler(403, forbidden_page)
    bp.context_processor(admin._template_context)
    rules: list[tuple[str, Any, list[str]]] = [
        ("/templates", index, ["GET"]),
        ("/templates/new", new, ["GET", "POST"]),
        (f"/templates/{TEMPLATE_ID}", edit, ["GET", "POST"]),
        (f"/templates/{TEMPLATE_ID}/duplicate", duplicate, ["POST"]),
        (f"/templates/{TEMPLATE_ID}/delete", delete, ["POST"]),
        (f"/templates/{TEMPLATE_ID}/test", send_test, ["POST"]),
        (f"/templates/{TEMPLATE_ID}/review/submit", review_submit, ["POST"]),
        (f"/templates/{TEMPLATE_ID}/review/withdraw", review_withdraw, ["POST"]),
        (f"/templates/{TEMPLATE_ID}/review/refresh", review_refresh, ["POST"]),
        ("/templates/reviews/refresh", reviews_refresh, ["POST"]),
        ("/templates/import/file", import_file, ["POST"]),
        ("/templates/import/url", import_url, ["POST"]),
        ("/templates/preview", preview, ["POST"]),
        ("/templates/contacts", contacts, ["GET"]),
    ]
    for path, view, methods in rules:
        bp.add_url_rule(path, view_func=view, methods=methods)
    return bp


# --------------------------------------------------------------------------- helpers


def _ws() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _can_write() -> bool:
    return can("campaigns.write", get_state().role_loader)


def _require_write() -> None:
    if not _can_write():
        abort(403)


def _user_id() -> str | None:
    return str(current_user.get_id()) if current_user and current_user.is_authenticated else None


def _load(schema, data) -> dict[str, Any]:
    try:
        return schema.load(data)
    except ValidationError:
        abort(400, description="malformed input")


def _clients():
    state = get_state()
    return service.client_factory(state.settings, state.secrets)


def _now_local() -> dt.datetime:
    return dt.datetime.now(user_timezone())


def review_labels() -> dict[str, str]:
    return {
        "not_submitted": _("Not submitted"),
        "pending": _("Pending review"),
        "approved": _("Approved"),
        "rejected": _("Rejected"),
    }


def variable_help(ws: int) -> list[dict[str, str]]:
    """What the editor's "Variables" panel lists: name to insert, what it is, other spellings."""
    state = get_state()
    items = [
        {"key": "name", "label": _("Contact name"), "also": "{FULLNAME} {姓名}"},
        {"key": "email", "label": _("Recipient email"), "also": "{RECIPIENTS} {邮箱}"},
        {"key": "company", "label": _("Company"), "also": "{公司}"},
        {"key": "country", "label": _("Country"), "also": "{国家}"},
        {"key": "date", "label": _("Date of sending (YYYY-MM-DD)"), "also": "{DATE}"},
        {"key": "random_number", "label": _("Random 10-digit number"), "also": "{RANDOM_NUMBER}"},
        {
            "key": "unsubscribe_url",
            "label": _("Unsubscribe link (added to the footer if missing)"),
            "also": "",
        },
    ]
    for field in custom_fields(state.session, ws):
        also = "{%s}" % field.key.upper() if field.key.startswith("var") else ""  # noqa: UP031
        items.append(
            {"key": field.key, "label": _("%(label)s (custom field)", label=field.label), "also": also}
        )
    return items


def _senders(ws: int) -> list[Sender]:
    from sqlalchemy import select

    return list(
        get_state().session.scalars(
            select(Sender).where(Sender.workspace_id == ws).order_by(Sender.is_default.desc(), Sender.id)
        )
    )


def _editor(
    *,
    template=None,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    test: dict[str, Any] | None = None,
    test_errors: dict[str, str] | None = None,
    status: int = 200,
):
    state = get_state()
    ws = _ws()
    if values is None:
        values = {
            "name": template.name if template else "",
            "subject": template.subject if template else "",
            "html": template.html if template else "",
            "text": (template.text or "") if template else "",
        }
    initial = service.preview(
        state.session,
        ws,
        service.Draft(values["subject"], values["html"], values.get("text") or None),
        contact=None,
        sender=service.default_sender(state.session, ws),
        now=_now_local(),
    )
    editor_data = {
        "previewUrl": url_for("marketing_templates.preview"),
        "contactsUrl": url_for("marketing_templates.contacts"),
        "largeBytes": service.LARGE_BYTES,
        "text": {
            "kb": _("KB"),
            "large": _("Over 100 KB: Gmail clips the message and hides the rest (and the unsubscribe link)."),
            "unknown": _("Unknown variables:"),
            "failed": _("The preview could not be updated; it will retry on the next change."),
            "noContact": _("No contact found."),
            "nobody": _("Fallback values (no contact)"),
        },
    }
    return render_template(
        "marketing/templates/edit.html",
        template=template,
        values=values,
        errors=errors or {},
        preview=initial,
        variables=variable_help(ws),
        review_labels=review_labels(),
        can_write=_can_write(),
        accounts=service.accounts_for_test(state.session, ws) if template else [],
        senders=_senders(ws) if template else [],
        has_sendcloud=service.sendcloud_account(state.session, ws) is not None,
        test=test or {"addresses": "", "account_id": None, "sender_id": None},
        test_errors=test_errors or {},
        editor_data=editor_data,
        large_bytes=service.LARGE_BYTES,
    ), status


def _get(template_id: int):
    try:
        return service.get_template(get_state().session, _ws(), template_id)
    except NotFound:
        abort(404)


# --------------------------------------------------------------------------- list and import


def index(
    import_errors: dict[str, str] | None = None, import_values: dict[str, str] | None = None, status=200
):
    state = get_state()
    ws = _ws()
    try:
        args = ListArgs().load(request.args.to_dict())
    except ValidationError:
        args = ListArgs().load({})
    result = service.list_templates(
        state.session,
        ws,
        q=args["q"],
        sort=args["sort"],
        order=args["order"],
        page=args["page"],
        per_page=PER_PAGE,
    )
    total_all = result.total if not args["q"] else service.count_templates(state.session, ws)

    def list_url(**changes: Any) -> str:
        merged = {**args, "page": result.page, **changes}
        defaults = {"q": "", "sort": "updated_at", "order": "desc", "page": 1}
        return url_for(
            "marketing_templates.index", **{k: v for k, v in merged.items() if defaults.get(k) != v}
        )

    def sort_url(key: str) -> str:
        if args["sort"] == key:
            return list_url(sort=key, order="desc" if args["order"] == "asc" else "asc", page=1)
        return list_url(sort=key, order="asc" if key in ("name", "review_state") else "desc", page=1)

    return render_template(
        "marketing/templates/list.html",
        rows=result.items,
        total=result.total,
        total_all=total_all,
        page=result.page,
        pages=result.pages,
        args=args,
        sort_url=sort_url,
        page_url=lambda n: list_url(page=n),
        review_labels=review_labels(),
        can_write=_can_write(),
        has_sendcloud=service.sendcloud_account(state.session, ws) is not None,
        import_errors=import_errors or {},
        import_values=import_values or {},
        max_kb=state.settings.template_max_bytes // 1024,
        large_bytes=service.LARGE_BYTES,
    ), status


def import_file():
    _require_write()
    state = get_state()
    data = _load(ImportFileForm(), request.form)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return index({"file": _("Choose a file to import.")}, status=422)
    raw = upload.stream.read(state.settings.template_max_bytes + 1)
    try:
        template = service.import_file(
            state.session,
            _ws(),
            filename=upload.filename,
            data=raw,
            settings=state.settings,
            user_id=_user_id(),
            name=data.get("name"),
        )
    except InvalidInput as exc:
        state.session.rollback()
        return index({"file": str(exc)}, status=422)
    state.session.commit()
    flash(_("Template imported from %(file)s. Check it, then save.", file=upload.filename), "success")
    return redirect(url_for("marketing_templates.edit", template_id=template.id))


def import_url():
    _require_write()
    state = get_state()
    data = _load(ImportUrlForm(), request.form)
    try:
        template = service.import_url(
            state.session,
            _ws(),
            url=data["url"],
            settings=state.settings,
            user_id=_user_id(),
            name=data.get("name"),
        )
    except InvalidInput as exc:
        state.session.rollback()
        return index({"url": str(exc)}, {"url": data["url"]}, status=422)
    state.session.commit()
    flash(_("Template imported from the web page. Check it, then save."), "success")
    return redirect(url_for("marketing_templates.edit", template_id=template.id))


def reviews_refresh():
    _require_write()
    state = get_state()
    try:
        changed = service.refresh_reviews(state.session, _ws(), clients=_clients())
    except MarketingError as exc:
        state.session.rollback()
        flash(_("The review states could not be refreshed: %(error)s", error=str(exc)), "error")
    else:
        state.session.commit()
        flash(_("Review states refreshed; %(n)s changed.", n=changed), "success")
    return redirect(url_for("marketing_templates.index"))


# --------------------------------------------------------------------------- editor


def _form_values() -> dict[str, Any]:
    data = _load(TemplateForm(), request.form)
    data["text"] = data.get("text") or ""
    return data


def new():
    _require_write()
    if request.method == "GET":
        return _editor()
    state = get_state()
    values = _form_values()
    try:
        template = service.create_template(
            state.session,
            _ws(),
            name=values["name"],
            subject=values["subject"],
            html=values["html"],
            text=values["text"],
            user_id=_user_id(),
            settings=state.settings,
        )
    except service.TemplateInvalid as exc:
        state.session.rollback()
        return _editor(values=values, errors=exc.errors, status=422)
    state.session.commit()
    flash(_("Template “%(name)s” saved.", name=template.name), "success")
    return redirect(url_for("marketing_templates.edit", template_id=template.id))


def edit(template_id: int):
    template = _get(template_id)
    if request.method == "GET":
        return _editor(template=template)
    _require_write()
    state = get_state()
    values = _form_values()
    try:
        service.update_template(
            state.session,
            _ws(),
            template_id,
            name=values["name"],
            subject=values["subject"],
            html=values["html"],
            text=values["text"],
            settings=state.settings,
        )
    except service.TemplateInvalid as exc:
        state.session.rollback()
        return _editor(template=_get(template_id), values=values, errors=exc.errors, status=422)
    except InvalidTransition as exc:
        state.session.rollback()
        return _editor(template=_get(template_id), values=values, errors={"form": str(exc)}, status=409)
    state.session.commit()
    flash(_("Template saved."), "success")
    return redirect(url_for("marketing_templates.edit", template_id=template_id))


def duplicate(template_id: int):
    _require_write()
    state = get_state()
    _get(template_id)
    copy = service.duplicate_template(state.session, _ws(), template_id, user_id=_user_id())
    state.session.commit()
    flash(_("Copied as “%(name)s”.", name=copy.name), "success")
    return redirect(url_for("marketing_templates.edit", template_id=copy.id))


def delete(template_id: int):
    _require_write()
    state = get_state()
    template = _get(template_id)
    name = template.name
    try:
        service.delete_template(state.session, _ws(), template_id)
    except InvalidTransition as exc:
        state.session.rollback()
        flash(_("The template was not deleted. %(reason)s", reason=str(exc)), "error")
        return redirect(url_for("marketing_templates.edit", template_id=template_id))
    state.session.commit()
    flash(_("Template “%(name)s” deleted.", name=name), "success")
    return redirect(url_for("marketing_templates.index"))


def preview():
    """The editor's live preview: rendered subject/HTML/text, size and unknown variables (JSON)."""
    state = get_state()
    ws = _ws()
    data = _load(PreviewIn(), request.get_json(silent=True) or {})
    contact = None
    if data.get("contact_id"):
        try:
            contact = service.find_contact(state.session, state.directory, ws, data["contact_id"])
        except NotFound:
            abort(404)
    sender = None
    if data.get("sender_id"):
        sender = next((s for s in _senders(ws) if s.id == data["sender_id"]), None)
    result = service.preview(
        state.session,
        ws,
        service.Draft(data["subject"], data["html"], data.get("text")),
        contact=contact,
        sender=sender or service.default_sender(state.session, ws),
        now=_now_local(),
    )
    return jsonify(
        subject=result.subject,
        html=result.html,
        text=result.text,
        size_bytes=result.size_bytes,
        large=result.large,
        unknown=result.unknown,
        unknown_message={
            f: rendering.unknown_message(names, result.written) for f, names in result.unknown.items()
        },
        variables=result.variables,
        contact=(
            {"id": contact.id, "email": contact.email, "name": contact.name or ""}
            if contact is not None
            else None
        ),
    )


def contacts():
    """Contacts matching an email, name or company fragment, for "preview as" (JSON)."""
    args = _load(ContactSearchArgs(), request.args.to_dict())
    rows = service.search_contacts(get_state().session, _ws(), args["q"], limit=10)
    return jsonify(items=[{"id": c.id, "email": c.email, "name": c.name or ""} for c in rows])


# --------------------------------------------------------------------------- test send and review


def send_test(template_id: int):
    _require_write()
    state = get_state()
    template = _get(template_id)
    data = _load(SendTestForm(), request.form)
    factory = provider_factory(current_app.extensions, secrets=state.secrets, settings=state.settings)
    try:
        results = service.send_test(
            state.session,
            _ws(),
            template_id,
            addresses=data["addresses"],
            account_id=data.get("account_id"),
            sender_id=data.get("sender_id"),
            contact_id=data.get("contact_id"),
            settings=state.settings,
            provider_factory=factory,
            directory=state.directory,
        )
    except InvalidInput as exc:
        field = exc.field if exc.field in {"addresses", "account_id", "sender_id"} else "addresses"
        return _editor(template=template, test=data, test_errors={field: str(exc)}, status=422)
    except (ProviderError, MarketingError) as exc:
        return _editor(
            template=template,
            test=data,
            test_errors={"form": _("The test was not sent: %(error)s", error=str(exc))},
            status=502,
        )
    state.session.commit()  # the test mails' counts (mail outside campaigns)
    accepted = [r.recipient for r in results if r.status == "accepted"]
    refused = [f"{r.recipient} ({r.error or r.status})" for r in results if r.status != "accepted"]
    if accepted:
        flash(_("Test sent to %(addresses)s.", addresses=", ".join(accepted)), "success")
    if refused:
        flash(_("Not sent to %(addresses)s.", addresses=", ".join(refused)), "error")
    return redirect(url_for("marketing_templates.edit", template_id=template_id) + "#test-send")


def _review_action(template_id: int, action, done: str):
    _require_write()
    state = get_state()
    _get(template_id)
    try:
        action(state.session, _ws(), template_id, clients=_clients())
    except (InvalidInput, InvalidTransition) as exc:
        state.session.rollback()
        flash(str(exc), "error")
    except ProviderError as exc:
        state.session.rollback()
        flash(_("SendCloud answered: %(error)s", error=str(exc)), "error")
    else:
        state.session.commit()
        flash(done, "success")
    return redirect(url_for("marketing_templates.edit", template_id=template_id) + "#review")


def review_submit(template_id: int):
    return _review_action(
        template_id,
        service.submit_for_review,
        _("Submitted to SendCloud for review (usually 1-3 working days)."),
    )


def review_withdraw(template_id: int):
    return _review_action(
        template_id, service.withdraw_review, _("Submission withdrawn; the template can be edited.")
    )


def review_refresh(template_id: int):
    return _review_action(template_id, service.refresh_review, _("Review state refreshed."))


__all__ = ["create_blueprint"]
