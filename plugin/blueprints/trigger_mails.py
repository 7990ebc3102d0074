"""The trigger-mail log: every transactional mail the host asked for, searchable, with status.

Everybody with a marketing role may read it (support staff answer "did my customer get the
code?"); the variables a mail was sent with are never shown, since they may hold codes.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request, url_for
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import select

from .. import trigger_mail as service
from ..access import current_workspace
from ..config import Settings
from ..extension import get_state
from ..models import ProviderAccount
from . import admin
from .admin import forbidden_page
from .security import guard_page

PER_PAGE = 50
DEFAULTS: dict[str, Any] = {"q": "", "status": "", "sort": "created_at", "order": "desc", "page": 1}


class LogArgs(Schema):
    """The page's query string; unknown parameters are ignored, bad values fall back to defaults."""

    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))
    status = fields.String(load_default="", validate=validate.OneOf(["", *service.STATUSES]))
    sort = fields.String(load_default="created_at", validate=validate.OneOf(list(service.SORTS)))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_trigger", __name__, template_folder="../templates")
    bp.before_request(guard_page)
    bp.register_error_handler(403, forbidden_page)
    bp.context_processor(admin._template_context)
    bp.add_url_rule("/trigger-mail", endpoint="index", view_func=index)
    return bp


def _args() -> dict[str, Any]:
    raw = request.args.to_dict()
    try:
        return LogArgs().load(raw)
    except ValidationError as exc:
        # Keep the valid parts of a hand-edited URL, drop the rest.
        for key in exc.messages:
            raw.pop(str(key), None)
        return LogArgs().load(raw)


def index():
    state = get_state()
    ws = current_workspace(state.session, state.workspace_key).id
    args = _args()
    page = service.list_mails(
        state.session,
        ws,
        q=args["q"] or None,
        status=args["status"] or None,
        sort=args["sort"],
        order=args["order"],
        page=args["page"],
        per_page=PER_PAGE,
    )
    counts = service.status_counts(state.session, ws)
    account_ids = {m.account_id for m in page.items if m.account_id}
    accounts = (
        dict(
            state.session.execute(
                select(ProviderAccount.id, ProviderAccount.name).where(
                    ProviderAccount.workspace_id == ws, ProviderAccount.id.in_(account_ids)
                )
            ).all()
        )
        if account_ids
        else {}
    )

    def list_url(**changes: Any) -> str:
        merged = {**args, "page": page.page, **changes}
        return url_for("marketing_trigger.index", **{k: v for k, v in merged.items() if DEFAULTS.get(k) != v})

    def sort_url(key: str) -> str:
        if args["sort"] == key:
            return list_url(sort=key, order="desc" if args["order"] == "asc" else "asc", page=1)
        return list_url(sort=key, order="asc" if key == "to" else "desc", page=1)

    return render_template(
        "marketing/trigger/index.html",
        page=page,
        args=args,
        counts=counts,
        total_all=sum(counts.values()),
        statuses=service.STATUSES,
        accounts=accounts,
        sort_url=sort_url,
        page_url=lambda n: list_url(page=n),
        status_url=lambda s: list_url(status=s, page=1),
        api_url=f"{state.settings.api_prefix}/trigger-mails",
    )
