"""The suppression list page under ``/marketing/suppressions``.

Every role may read and export it (sales ask "why did my customer not get the mail?"); adding,
removing and importing addresses is for admins (``settings``), because a removal lets mail go to
someone who unsubscribed or complained.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from .. import suppression
from .. import suppression_list as service
from ..access import can, current_workspace
from ..config import Settings
from ..csv_export import stream_csv
from ..errors import InvalidInput
from ..extension import get_state
from ..i18n import _, user_timezone
from . import admin
from .security import guard_page

PER_PAGE = 50
DEFAULTS: dict[str, Any] = {"q": "", "reason": "", "sort": "created_at", "order": "desc", "page": 1}


class ListArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))
    reason = fields.String(load_default="", validate=validate.OneOf(["", *suppression.REASONS]))
    sort = fields.String(load_default="created_at", validate=validate.OneOf(list(service.SORTS)))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))


class AddressIn(Schema):
    class Meta:
        unknown = EXCLUDE

    email = fields.String(required=True, validate=validate.Length(min=1, max=320))


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_suppression", __name__, template_folder="../templates")
    bp.before_request(_guard)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/suppressions", endpoint="index", view_func=index)
    bp.add_url_rule("/suppressions.csv", endpoint="export", view_func=export)
    bp.add_url_rule("/suppressions/add", endpoint="add", view_func=add, methods=["POST"])
    bp.add_url_rule("/suppressions/remove", endpoint="remove", view_func=remove, methods=["POST"])
    bp.add_url_rule("/suppressions/import", endpoint="import_file", view_func=import_file, methods=["POST"])
    return bp


def _guard():
    return guard_page("settings" if request.method == "POST" else "view")


def _ws() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def _user() -> str:
    return str(current_user.get_id())


def _args(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return ListArgs().load(raw)
    except ValidationError as exc:
        for key in exc.messages:
            raw.pop(str(key), None)
        return ListArgs().load(raw)


def index():
    return _render(_args(request.args.to_dict()))


def _render(
    args: dict[str, Any], *, errors: dict[str, str] | None = None, form: Any = None, line_errors=None
):
    state = get_state()
    ws = _ws()
    page = service.list_entries(state.session, ws, per_page=PER_PAGE, **args)
    counts = service.reason_counts(state.session, ws)

    def list_url(**changes: Any) -> str:
        merged = {**args, "page": page.page, **changes}
        return url_for(
            "marketing_suppression.index", **{k: v for k, v in merged.items() if DEFAULTS.get(k) != v}
        )

    def sort_url(key: str) -> str:
        if args["sort"] == key:
            return list_url(sort=key, order="desc" if args["order"] == "asc" else "asc", page=1)
        return list_url(sort=key, order="asc" if key in ("email", "reason") else "desc", page=1)

    export_args = {k: args[k] for k in ("q", "reason") if args[k]}
    html = render_template(
        "marketing/suppressions/index.html",
        page=page,
        args=args,
        counts=counts,
        total_all=sum(counts.values()),
        reasons=suppression.REASONS,
        reason_labels=service.reason_labels(),
        source_label=service.source_label,
        sort_url=sort_url,
        page_url=lambda n: list_url(page=n),
        reason_url=lambda r: list_url(reason=r, page=1),
        export_url=url_for("marketing_suppression.export", **export_args),
        can_edit=can("settings", state.role_loader),
        errors=errors or {},
        form=form or {},
        line_errors=line_errors or [],
        max_lines=service.MAX_IMPORT_LINES,
    )
    return html, 422 if errors else 200


def export() -> Response:
    state = get_state()
    args = _args(request.args.to_dict())
    rows = service.export_rows(state.session, _ws(), q=args["q"], reason=args["reason"], tz=user_timezone())
    response = Response(stream_with_context(stream_csv(rows)), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="suppression-list.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response


def add():
    state = get_state()
    try:
        data = AddressIn().load(request.form.to_dict())
        address = service.add_by_hand(state.session, _ws(), data["email"], by=_user())
    except ValidationError as exc:
        return _render(
            _args({}), errors={"email": " ".join(exc.messages.get("email", []))}, form=request.form
        )
    except InvalidInput as exc:
        state.session.rollback()
        return _render(_args({}), errors={"email": str(exc)}, form=request.form)
    state.session.commit()
    flash(_("%(email)s will not be mailed again.", email=address), "success")
    return redirect(url_for("marketing_suppression.index"))


def remove():
    state = get_state()
    try:
        data = AddressIn().load(request.form.to_dict())
    except ValidationError:
        flash(_("Choose an address to remove."), "error")
        return redirect(url_for("marketing_suppression.index"))
    removed = service.remove(state.session, _ws(), data["email"])
    state.session.commit()
    if removed:
        flash(
            _(
                "%(email)s was removed from the suppression list and may be mailed again.",
                email=data["email"],
            ),
            "success",
        )
    else:
        flash(_("%(email)s is not on the suppression list.", email=data["email"]), "info")
    back = _args({k: v for k, v in request.form.items() if k in DEFAULTS})
    return redirect(
        url_for("marketing_suppression.index", **{k: v for k, v in back.items() if DEFAULTS.get(k) != v})
    )


def import_file():
    state = get_state()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _render(_args({}), errors={"file": _("Choose a CSV or TXT file.")})
    data = upload.read(service.MAX_IMPORT_BYTES + 1)
    try:
        result = service.import_addresses(state.session, _ws(), data, by=_user())
    except service.ImportRefused as exc:
        state.session.rollback()
        return _render(_args({}), errors={"file": str(exc)}, line_errors=exc.errors)
    state.session.commit()
    flash(
        _(
            "%(added)s addresses added to the suppression list (%(already)s were already on it).",
            added=result.added,
            already=result.already,
        ),
        "success",
    )
    return redirect(url_for("marketing_suppression.index"))
