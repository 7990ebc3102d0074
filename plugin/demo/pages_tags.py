"""Demo CRM page for tags: list with member counts, create, rename/recolor inline, delete.

One URL (``crm.tags``) answers GET and POST; the POST's ``action`` says what to do, so every form
on the page posts back to it and errors are shown beside the field of the row they belong to.
"""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import login_required
from marshmallow import ValidationError

from .. import contacts as service
from ..errors import InvalidInput, NotFound
from ..extension import get_state
from ..i18n import _
from ..schemas.contacts import TagIn
from .views import COLOR_RE, bp, field_errors, require_permission, user_can, workspace_id

__all__ = ["bp"]

ACTIONS = ("create", "rename", "delete")
DEFAULT_COLOR = "#5b8def"


def _tag_input() -> dict[str, Any]:
    data: dict[str, Any] = {"name": request.form.get("name", "")}
    if request.form.get("color"):
        data["color"] = request.form["color"]
    return data


def _tag_id() -> int | None:
    raw = request.form.get("tag_id", "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def _apply(action: str, ws: int) -> str:
    """Run one action; returns the success message.  Raises ValidationError/InvalidInput/NotFound."""
    session = get_state().session
    if action == "create":
        data = TagIn().load(_tag_input())
        tag = service.create_tag(session, ws, data["name"], data.get("color"))
        return _("Tag “%(name)s” created.", name=tag.name)
    tag_id = _tag_id()
    if tag_id is None:
        raise NotFound("tag")
    if action == "rename":
        data = TagIn().load(_tag_input())
        tag = service.rename_tag(session, ws, tag_id, data["name"], data.get("color"))
        return _("Tag “%(name)s” saved.", name=tag.name)
    tag = service.get_tag(session, ws, tag_id)
    name, members = tag.name, service.tag_count(session, ws, tag_id)
    service.delete_tag(session, ws, tag_id)
    return _("Tag “%(name)s” deleted; %(n)s contacts lost it.", name=name, n=members)


@bp.route("/tags", methods=["GET", "POST"])
@login_required
def tags():
    require_permission("contacts.read")
    session = get_state().session
    ws = workspace_id()
    errors: dict[str, str] = {}
    #: Which form the errors belong to: "create" or the id of the row being renamed.
    error_target: str | int | None = None
    status = 200
    if request.method == "POST":
        require_permission("tags.write")
        action = request.form.get("action", "")
        if action not in ACTIONS:
            flash(_("Unknown action."), "error")
            return redirect(url_for("crm.tags"))
        try:
            message = _apply(action, ws)
            session.commit()
        except (ValidationError, InvalidInput) as exc:
            session.rollback()
            errors = field_errors(exc, default="name")
        except NotFound:
            session.rollback()
            flash(_("That tag does not exist (any more)."), "error")
            return redirect(url_for("crm.tags"))
        else:
            flash(message, "success")
            return redirect(url_for("crm.tags"))
        error_target = "create" if action == "create" else _tag_id()
        status = 400
    rows = service.list_tags(session, ws)
    for row in rows:  # only plain #rrggbb reaches a style attribute
        row["color"] = row["color"] if COLOR_RE.match(row["color"] or "") else DEFAULT_COLOR
    return render_template(
        "demo/tags.html",
        tags=rows,
        errors=errors,
        error_target=error_target,
        form=request.form,
        can_write=user_can("tags.write"),
    ), status
