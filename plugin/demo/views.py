"""Pages of the demo CRM: login, the contact list with bulk actions, and the contact form.

Further pages live in sibling modules (``pages_*.py``) and join the same ``crm`` blueprint.  The
views stay thin: they parse the request with a marshmallow schema, call the services of
``plugin.contacts`` (which scope everything by workspace) and render.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from marshmallow import EXCLUDE, ValidationError, fields, validate, validates_schema
from sqlalchemy import select

from .. import contacts as service
from ..access import can, current_workspace, require
from ..blueprints.security import safe_next_url
from ..errors import InvalidInput, NotFound, PermissionDenied
from ..extension import get_state
from ..i18n import _
from ..schemas.common import MAX_BIG_ID, StrictSchema
from ..schemas.contacts import ContactIn, ContactListArgs
from .models import User, db

bp = Blueprint("crm", __name__, template_folder="templates", url_prefix="/crm")

PER_PAGE = 50
#: Query parameters of the contact list that survive a bulk action or a sort/page click.
LIST_KEYS = ("q", "tag_id", "view_id", "sort", "order", "page")
COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        user = db.session.scalar(select(User).where(User.username == request.form.get("username", "")))
        if user is None or not user.check_password(request.form.get("password", "")):
            error = _("Wrong user name or password.")
        else:
            login_user(user)
            return redirect(safe_next_url(request.args.get("next"), url_for("crm.contacts")))
    return render_template("demo/login.html", error=error), (401 if error else 200)


@bp.post("/logout")
@login_required
def logout():
    logout_user()
    flash(_("You are logged out."), "info")
    return redirect(url_for("crm.login"))


# -- helpers shared by the demo's pages ----------------------------------------------------------


def require_permission(permission: str) -> None:
    """Abort with 403 unless the current user's role allows ``permission``."""
    try:
        require(permission, get_state().role_loader)
    except PermissionDenied:
        abort(403)


def user_can(permission: str) -> bool:
    return can(permission, get_state().role_loader)


def workspace_id() -> int:
    """The current organization's workspace id (every service call is scoped by it)."""
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def field_errors(exc: ValidationError | InvalidInput, default: str = "_schema") -> dict[str, str]:
    """An input error as one line per field, for display beside it.

    Marshmallow's nested messages are flattened; a service's ``InvalidInput`` lands on its own
    field, or on ``default`` when it names none.
    """
    if isinstance(exc, InvalidInput):
        return {exc.field or default: str(exc)}
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    result: dict[str, str] = {}
    for key, value in messages.items():
        if isinstance(value, dict):
            value = [f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in value.items()]
        result[str(key)] = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return result


# -- contact list ----------------------------------------------------------------------------


class ListArgs(ContactListArgs):
    """The list's query string; unknown parameters are ignored (bookmarks, tracking tags)."""

    class Meta:
        unknown = EXCLUDE


def _list_args(raw: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Parsed list parameters; invalid ones are dropped and reported instead of failing the page."""
    raw = {k: v for k, v in raw.items() if k in LIST_KEYS and v != ""}
    try:
        return ListArgs().load(raw), {}
    except ValidationError as exc:
        errors = field_errors(exc)
        cleaned = {k: v for k, v in raw.items() if k not in errors}
        return ListArgs().load(cleaned), errors


def _query_of(args: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The list's query parameters, minus defaults, with ``changes`` applied."""
    merged = {**args, **changes}
    defaults = {"sort": "created_at", "order": "desc", "page": 1}
    return {
        k: v for k, v in merged.items() if k in LIST_KEYS and v not in (None, "") and defaults.get(k) != v
    }


def _sort_url(args: dict[str, Any], key: str) -> str:
    if args["sort"] == key:
        order = "asc" if args["order"] == "desc" else "desc"
    else:
        order = "desc" if key == "created_at" else "asc"
    return url_for("crm.contacts", **_query_of(args, sort=key, order=order, page=1))


@bp.get("/contacts")
@login_required
def contacts():
    require_permission("contacts.read")
    state = get_state()
    ws = workspace_id()
    args, arg_errors = _list_args(request.args.to_dict())
    for key, message in arg_errors.items():
        flash(_("Ignored the %(param)s parameter: %(error)s", param=key, error=message), "warning")
    try:
        page = service.list_contacts(
            state.session,
            ws,
            search=args.get("q"),
            tag_id=args.get("tag_id"),
            view_id=args.get("view_id"),
            sort=args["sort"],
            descending=args["order"] == "desc",
            page=args["page"],
            per_page=PER_PAGE,
        )
    except NotFound:
        flash(_("That tag or view does not exist (any more); the filter was removed."), "warning")
        return redirect(url_for("crm.contacts", **_query_of(args, tag_id=None, view_id=None, page=1)))
    if page.total and args["page"] > page.pages:
        return redirect(url_for("crm.contacts", **_query_of(args, page=page.pages)))
    tags = service.list_tags(state.session, ws)
    filtered = bool(args.get("q") or args.get("tag_id") or args.get("view_id"))
    return render_template(
        "demo/contacts.html",
        page=page,
        args=args,
        tags=tags,
        views=[(v.id, v.name) for v, _count in service.list_views(state.session, ws)],
        contact_tags=service.tags_of(state.session, [c.id for c in page.items]),
        colors={t["name"]: t["color"] for t in tags if COLOR_RE.match(t["color"] or "")},
        filtered=filtered,
        back=request.query_string.decode("latin-1"),
        sort_url=lambda key: _sort_url(args, key),
        page_url=lambda n: url_for("crm.contacts", **_query_of(args, page=n)),
        can_write=user_can("contacts.write"),
        can_tag=user_can("tags.assign"),
    )


class BulkForm(StrictSchema):
    """The bulk bar's form: which action, on which contact ids, with which tag."""

    class Meta:
        unknown = EXCLUDE

    action = fields.String(
        required=True, validate=validate.OneOf(["add_tag", "remove_tag", "delete"], error="unknown action")
    )
    ids = fields.List(
        fields.Integer(validate=validate.Range(min=1, max=2**62)),
        required=True,
        validate=validate.Length(min=1, max=10_000, error="select between 1 and 10000 contacts"),
    )
    tag_name = fields.String(load_default=None, validate=validate.Length(max=100))
    tag_id = fields.Integer(load_default=None, validate=validate.Range(min=1, max=2**62))

    @validates_schema
    def _tag_for_action(self, data: dict[str, Any], **_kw: Any) -> None:
        if data["action"] == "add_tag" and not " ".join((data.get("tag_name") or "").split()):
            raise ValidationError("type or pick the tag to add", "tag_name")
        if data["action"] == "remove_tag" and not data.get("tag_id"):
            raise ValidationError("pick the tag to remove", "tag_id")


def _back_to_list():
    """Redirect to the list with the query string it was on (only known keys: no open redirect)."""
    pairs = parse_qsl(request.form.get("back", ""), keep_blank_values=False)
    kept = {k: v for k, v in pairs if k in LIST_KEYS}
    return redirect(url_for("crm.contacts", **kept))


@bp.post("/contacts/bulk")
@login_required
def contacts_bulk():
    raw = {
        "action": request.form.get("action", ""),
        "ids": request.form.getlist("ids"),
        "tag_name": request.form.get("tag_name") or None,
        "tag_id": request.form.get("tag_id") or None,
    }
    require_permission("contacts.write" if raw["action"] == "delete" else "tags.assign")
    try:
        data = BulkForm().load({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        problems = field_errors(exc)
        if "ids" in problems:
            problems["ids"] = (
                _("The selection contains an invalid contact id.")
                if raw["ids"]
                else _("Select at least one contact.")
            )
        flash(" ".join(problems.values()), "error")
        return _back_to_list()
    state = get_state()
    ws = workspace_id()
    session = state.session
    try:
        if data["action"] == "add_tag":
            name = " ".join(data["tag_name"].split())
            added = state.directory.add_tags(session, ws, data["ids"], [name])
            message = _("Tag “%(tag)s” added to %(n)s contacts.", tag=name, n=added)
        elif data["action"] == "remove_tag":
            tag = service.get_tag(session, ws, data["tag_id"])
            removed = state.directory.remove_tags(session, ws, data["ids"], [tag.name])
            message = _("Tag “%(tag)s” removed from %(n)s contacts.", tag=tag.name, n=removed)
        else:
            deleted = service.delete_contacts(session, ws, data["ids"])
            message = _("%(n)s contacts deleted.", n=deleted)
        session.commit()
    except NotFound:
        session.rollback()
        flash(_("That tag does not exist (any more)."), "error")
        return _back_to_list()
    except Exception:
        session.rollback()
        raise
    flash(message, "success")
    return _back_to_list()


# -- contact form ----------------------------------------------------------------------------


def _owner_choices(current_owner: str | None) -> list[tuple[str, str]]:
    """Users of the current organization; an unknown stored owner stays selectable."""
    users = db.session.scalars(
        select(User).where(User.organization == current_user.organization).order_by(User.display_name)
    ).all()
    choices = [(str(u.id), u.display_name) for u in users]
    if current_owner and current_owner not in {value for value, _label in choices}:
        choices.append((current_owner, _("Unknown user %(id)s", id=current_owner)))
    return choices


def _form_input(custom_keys: list[str]) -> dict[str, Any]:
    """The submitted form as the ``ContactIn`` schema expects it."""
    form = request.form
    tags = [t for t in form.getlist("tags") if t.strip()]
    new_tag = " ".join(form.get("new_tag", "").split())
    if new_tag and new_tag not in tags:
        tags.append(new_tag)
    return {
        "email": form.get("email", "").strip(),
        "name": form.get("name", ""),
        "company": form.get("company", ""),
        "country": form.get("country", ""),
        "owner_id": form.get("owner_id") or None,
        "custom": {key: form.get(f"custom.{key}", "").strip() for key in custom_keys},
        "tags": tags or None,
    }


def _save_contact(ws: int, contact_id: int | None, data: dict[str, Any]) -> int:
    """Create or update in one transaction, including the tag changes; returns the contact id."""
    state = get_state()
    session = state.session
    if contact_id is None:
        return service.create_contact(session, ws, data).id
    contact = service.update_contact(session, ws, contact_id, data)
    wanted = set(data.get("tags") or [])
    have = set(service.tags_of(session, [contact.id])[contact.id])
    if wanted - have:
        state.directory.add_tags(session, ws, [contact.id], sorted(wanted - have))
    if have - wanted:
        state.directory.remove_tags(session, ws, [contact.id], sorted(have - wanted))
    return contact.id


def _contact_form(contact_id: int | None):
    state = get_state()
    session = state.session
    ws = workspace_id()
    contact = None
    if contact_id is not None:
        try:
            contact = service.get_contact(session, ws, contact_id)
        except NotFound:
            abort(404)
    custom_defs = service.custom_fields(session, ws)
    can_write = user_can("contacts.write")
    errors: dict[str, str] = {}
    if contact is not None:
        values: dict[str, Any] = {
            "email": contact.email,
            "name": contact.name or "",
            "company": contact.company or "",
            "country": contact.country or "",
            "owner_id": contact.owner_id,
            "custom": dict(contact.custom or {}),
            "tags": service.tags_of(session, [contact.id])[contact.id],
        }
    else:
        values = {"email": "", "name": "", "company": "", "country": "", "owner_id": None, "custom": {}}
        values["tags"] = []
    if request.method == "POST":
        require_permission("contacts.write")
        values = _form_input([f.key for f in custom_defs])
        owners = {value for value, _label in _owner_choices(contact.owner_id if contact else None)}
        payload = {k: v for k, v in values.items() if not (k == "tags" and v is None)}
        try:
            data = ContactIn().load(payload)
            if data.get("owner_id") and data["owner_id"] not in owners:
                raise ValidationError({"owner_id": ["pick a user from the list"]})
            saved_id = _save_contact(ws, contact_id, data)
            session.commit()
        except (ValidationError, InvalidInput) as exc:
            session.rollback()
            errors = field_errors(exc)
        else:
            flash(_("Contact saved."), "success")
            return redirect(url_for("crm.contact_edit", contact_id=saved_id))
        values["tags"] = values.get("tags") or []
    status = 400 if errors else 200
    return render_template(
        "demo/contact_form.html",
        contact=contact,
        values=values,
        errors=errors,
        custom_defs=custom_defs,
        all_tags=service.list_tags(session, ws),
        owners=_owner_choices(values.get("owner_id")),
        can_write=can_write,
        **_reply_history(ws, contact.id if contact is not None else None),
    ), status


def _reply_history(ws: int, contact_id: int | None) -> dict[str, Any]:
    """The contact's replies to campaigns (the "Replies" section of the contact page)."""
    from .. import replies
    from ..models import Campaign

    if contact_id is None:
        return {"replies": [], "reply_campaigns": {}}
    session = get_state().session
    found = replies.contact_replies(session, ws, contact_id)
    ids = {r.campaign_id for r in found if r.campaign_id}
    names = (
        dict(
            session.execute(
                select(Campaign.id, Campaign.name).where(Campaign.workspace_id == ws, Campaign.id.in_(ids))
            ).all()
        )
        if ids
        else {}
    )
    return {"replies": found, "reply_campaigns": names}


@bp.route("/contacts/new", methods=["GET", "POST"])
@login_required
def contact_new():
    require_permission("contacts.write")
    return _contact_form(None)


@bp.route(f"/contacts/<int(min=1,max={MAX_BIG_ID}):contact_id>", methods=["GET", "POST"])
@login_required
def contact_edit(contact_id: int):
    require_permission("contacts.read")
    return _contact_form(contact_id)


@bp.post(f"/contacts/<int(min=1,max={MAX_BIG_ID}):contact_id>/delete")
@login_required
def contact_delete(contact_id: int):
    require_permission("contacts.write")
    session = get_state().session
    deleted = service.delete_contacts(session, workspace_id(), [contact_id])
    if not deleted:
        session.rollback()
        abort(404)
    session.commit()
    flash(_("Contact deleted."), "success")
    return redirect(url_for("crm.contacts"))
