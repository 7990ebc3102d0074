"""Demo CRM pages for saved views: the list with live member counts, a click-built rule editor
with a live match count, save, delete, and "show the contacts of this view".

The editor keeps its state in the browser (``view_editor.js``) and posts the rules tree as JSON in
a hidden field, so a failed save re-renders the page with exactly what the user built plus the
errors, each beside the rule it belongs to.  Rules are validated only by ``plugin.filters``
(through the services): the page never decides on its own what a valid rule is.
"""

from __future__ import annotations

import json
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from .. import contacts as service
from ..errors import InvalidInput, NotFound
from ..extension import get_state
from ..filters import BUILTIN_FIELDS, CUSTOM_PREFIX, MAX_DEPTH
from ..i18n import _, lazy_gettext
from .views import bp, require_permission, user_can, workspace_id

__all__ = ["PRESETS", "bp", "summarize"]

VIEW_ID = "<int(min=1,max=2147483647):view_id>"
PER_PAGE = 50
SORTS = ("name", "count", "created_at")

#: Quick starts from the product documents (联系人视图): the two views people build first to
#: exclude addresses from a campaign.  Each is one rule, so a click gives a working view.
PRESETS: dict[str, dict[str, Any]] = {
    "domestic": {
        "name": lazy_gettext("Domestic free mailboxes"),
        "description": lazy_gettext("Chinese free mailbox domains, to exclude from foreign-trade campaigns."),
        "rules": {
            "match": "all",
            "rules": [
                {
                    "field": "email_domain",
                    "op": "in",
                    "value": [
                        "qq.com",
                        "163.com",
                        "126.com",
                        "sina.com",
                        "sina.cn",
                        "sohu.com",
                        "foxmail.com",
                        "yeah.net",
                        "139.com",
                        "aliyun.com",
                    ],
                }
            ],
        },
    },
    "role": {
        "name": lazy_gettext("Role addresses"),
        "description": lazy_gettext("Addresses of a function, not a person (no one replies), to exclude."),
        "rules": {
            "match": "all",
            "rules": [
                {
                    "field": "email_local",
                    "op": "in",
                    "value": [
                        "noreply",
                        "no-reply",
                        "donotreply",
                        "support",
                        "ticket",
                        "info",
                        "service",
                        "help",
                        "postmaster",
                        "webmaster",
                    ],
                }
            ],
        },
    },
}

EMPTY_RULES: dict[str, Any] = {"match": "all", "rules": []}


# -- labels (translated here so the JavaScript needs no catalogue of its own) --------------------


def field_labels() -> dict[str, str]:
    return {
        "email": _("Email"),
        "email_domain": _("Email domain (after @)"),
        "email_local": _("Email prefix (before @)"),
        "name": _("Name"),
        "company": _("Company"),
        "country": _("Country"),
        "owner": _("Owner (user id)"),
        "created_at": _("Created on"),
    }


def op_labels() -> dict[str, str]:
    return {
        "eq": _("is"),
        "ne": _("is not"),
        "contains": _("contains"),
        "not_contains": _("does not contain"),
        "starts_with": _("starts with"),
        "ends_with": _("ends with"),
        "in": _("is one of"),
        "not_in": _("is none of"),
        "empty": _("is empty"),
        "not_empty": _("is not empty"),
        "before": _("before"),
        "after": _("after"),
        "between": _("between"),
    }


def editor_fields(ws: int) -> list[dict[str, str]]:
    """Every field the editor offers: built-in ones, then the workspace's custom fields."""
    labels = field_labels()
    result = [
        {"key": key, "label": labels.get(key, key), "kind": "date" if kind == "datetime" else "text"}
        for key, kind in BUILTIN_FIELDS.items()
    ]
    for custom in service.custom_fields(get_state().session, ws):
        result.append(
            {
                "key": CUSTOM_PREFIX + custom.key,
                "label": _("%(label)s (custom)", label=custom.label),
                "kind": "custom_date" if custom.kind == "date" else "custom",
            }
        )
    return result


def summarize(rules: Any, labels: dict[str, str] | None = None, ops: dict[str, str] | None = None) -> str:
    """One line a person reads: ``Email domain is one of qq.com, 163.com +8 AND (…)``."""
    labels = labels or field_labels()
    ops = ops or op_labels()
    if not isinstance(rules, dict) or not rules.get("rules"):
        return _("every contact") if (rules or {}).get("match", "all") == "all" else _("no contact")
    joiner = " " + (_("AND") if rules.get("match") == "all" else _("OR")) + " "
    parts = []
    for item in rules["rules"]:
        if not isinstance(item, dict):
            continue
        if "match" in item:
            parts.append(f"({summarize(item, labels, ops)})")
            continue
        field = str(item.get("field", ""))
        label = labels.get(field) or (
            field[len(CUSTOM_PREFIX) :] if field.startswith(CUSTOM_PREFIX) else field
        )
        parts.append(
            " ".join(p for p in (label, ops.get(item.get("op"), str(item.get("op"))), _value(item)) if p)
        )
    return joiner.join(parts)


def _value(rule: dict[str, Any]) -> str:
    value = rule.get("value")
    if rule.get("op") == "between" and isinstance(value, list) and len(value) == 2:
        return _("%(first)s and %(last)s", first=value[0], last=value[1])
    if isinstance(value, list):
        shown = ", ".join(map(str, value[:3]))
        return shown + (f" +{len(value) - 3}" if len(value) > 3 else "")
    return "" if value is None else f"“{value}”"


# -- list ------------------------------------------------------------------------------------


class ListArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))
    sort = fields.String(load_default="name", validate=validate.OneOf(SORTS))
    order = fields.String(load_default="asc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))


def _list_args() -> dict[str, Any]:
    try:
        return ListArgs().load(request.args.to_dict())
    except ValidationError:
        return ListArgs().load({})


@bp.get("/views")
@login_required
def views():
    require_permission("contacts.read")
    session = get_state().session
    ws = workspace_id()
    args = _list_args()
    needle = args["q"].strip().casefold()
    labels = field_labels()
    labels.update({CUSTOM_PREFIX + f.key: f.label for f in service.custom_fields(session, ws)})
    ops = op_labels()
    rows = [
        {"view": view, "count": count, "summary": summarize(view.rules, labels, ops)}
        for view, count in service.list_views(session, ws)
    ]
    total_views = len(rows)
    if needle:
        rows = [r for r in rows if needle in f"{r['view'].name}\n{r['view'].description}".casefold()]
    keys = {
        "name": lambda r: r["view"].name.casefold(),
        "count": lambda r: r["count"],
        "created_at": lambda r: r["view"].created_at,
    }
    rows.sort(key=keys[args["sort"]], reverse=args["order"] == "desc")
    pages = max(1, -(-len(rows) // PER_PAGE))
    page = min(args["page"], pages)
    shown = rows[(page - 1) * PER_PAGE : page * PER_PAGE]

    def list_url(**changes: Any) -> str:
        merged = {**args, "page": page, **changes}
        defaults = {"q": "", "sort": "name", "order": "asc", "page": 1}
        return url_for("crm.views", **{k: v for k, v in merged.items() if defaults.get(k) != v})

    def sort_url(key: str) -> str:
        if args["sort"] == key:
            return list_url(sort=key, order="desc" if args["order"] == "asc" else "asc", page=1)
        return list_url(sort=key, order="asc" if key == "name" else "desc", page=1)

    return render_template(
        "demo/views.html",
        rows=shown,
        total=len(rows),
        total_views=total_views,
        args=args,
        page=page,
        pages=pages,
        sort_url=sort_url,
        page_url=lambda n: list_url(page=n),
        can_write=user_can("views.write"),
    )


# -- editor ----------------------------------------------------------------------------------


def _editor(
    *,
    view_id: int | None,
    name: str,
    description: str,
    rules: Any,
    errors: dict[str, str] | None = None,
    rule_errors: Any = None,
    status: int = 200,
):
    ws = workspace_id()
    can_write = user_can("views.write")
    data = {
        "rules": rules if isinstance(rules, dict) else EMPTY_RULES,
        "ruleErrors": rule_errors,
        "fields": editor_fields(ws),
        "ops": op_labels(),
        "maxDepth": MAX_DEPTH,
        "previewUrl": url_for("marketing_api_views.PreviewCount"),
        "readOnly": not can_write,
        "presets": {
            key: {
                "name": str(preset["name"]),
                "description": str(preset["description"]),
                "rules": preset["rules"],
            }
            for key, preset in PRESETS.items()
        },
        "text": {
            "field": _("Field"),
            "operator": _("Operator"),
            "matchLabel": _("Contacts match"),
            "matchAll": _("all of these"),
            "matchAny": _("any of these"),
            "remove": _("Remove"),
            "removeGroup": _("Remove group"),
            "addRule": _("Add rule"),
            "addGroup": _("Add group"),
            "listHint": _("Separate values with commas; a pasted column works too"),
            "and": _("and"),
            "counting": _("Counting…"),
            "invalid": _("Fix the rules marked in red to see the count."),
            "failed": _("The count could not be fetched; it will be retried on the next change."),
            "contacts": _("contacts match"),
            "undo": _("Undo"),
            "noRules": _("No rules yet: every contact matches. Add a rule or start from a preset."),
            "noRulesAny": _("No rules yet: with “any”, no contact matches."),
            "unknownField": _("(unknown field)"),
        },
    }
    return render_template(
        "demo/views_edit.html",
        view_id=view_id,
        name=name,
        description=description,
        rules_json=json.dumps(data["rules"], ensure_ascii=False),
        editor_data=data,
        errors=errors or {},
        can_write=can_write,
    ), status


@bp.get("/views/new")
@login_required
def view_new():
    require_permission("views.write")
    preset = PRESETS.get(request.args.get("preset", ""))
    if preset:
        return _editor(
            view_id=None,
            name=str(preset["name"]),
            description=str(preset["description"]),
            rules=preset["rules"],
        )
    return _editor(view_id=None, name="", description="", rules=EMPTY_RULES)


def _get_view_or_404(view_id: int):
    try:
        return service.get_view(get_state().session, workspace_id(), view_id)
    except NotFound:
        abort(404)


@bp.get(f"/views/{VIEW_ID}/edit")
@login_required
def view_edit(view_id: int):
    require_permission("contacts.read")
    view = _get_view_or_404(view_id)
    return _editor(view_id=view.id, name=view.name, description=view.description or "", rules=view.rules)


class ViewForm(Schema):
    """The editor's form.  ``rules`` arrives as JSON text; its content is checked by the service."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(max=100))
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    rules = fields.String(required=True, validate=validate.Length(max=1_000_000))


def _form_messages() -> dict[str, str]:
    """The form's messages in the user's language (schema messages are fixed at import time)."""
    return {
        "name": _("Give the view a name of at most 100 characters."),
        "description": _("The description is longer than 2000 characters."),
        "rules": _("The rules are missing or too large."),
    }


def _posted_view_id() -> int | None:
    """The id of the view being edited, or ``None`` for a new one; 404 unless it is ours."""
    raw = request.form.get("view_id", "")
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 10 or not 1 <= int(raw) <= 2147483647:
        abort(404)
    return _get_view_or_404(int(raw)).id


def _rules_message(messages: Any) -> str:
    """A short summary for the box; the details go beside each rule (``ruleErrors``)."""
    if isinstance(messages, list):
        return " ".join(map(str, messages))
    if isinstance(messages, dict) and set(messages) <= {"rules"} and isinstance(messages.get("rules"), list):
        return " ".join(map(str, messages["rules"]))
    return _("Some rules are not valid; see the messages beside them.")


def _store(ws: int, view_id: int | None, data: dict[str, Any], rules: Any):
    session = get_state().session
    if view_id is None:
        return service.create_view(
            session, ws, name=data["name"], rules=rules, description=data["description"], user_id=_user_id()
        )
    changes = {"name": data["name"], "description": data["description"], "rules": rules}
    return service.update_view(session, ws, view_id, changes)


@bp.post("/views/save")
@login_required
def view_save():
    require_permission("views.write")
    session = get_state().session
    ws = workspace_id()
    view_id = _posted_view_id()
    form = request.form
    errors: dict[str, str] = {}
    rule_errors: Any = None
    rules: Any = EMPTY_RULES
    data: dict[str, Any] = {}
    try:
        rules = json.loads(form.get("rules", ""))
    except ValueError as exc:
        errors["rules"] = _("The rules could not be read (%(error)s).", error=str(exc))
    try:
        data = ViewForm().load({k: form[k] for k in ("name", "description", "rules") if k in form})
    except ValidationError as exc:
        messages = _form_messages()
        errors.update({key: messages.get(key, str(value)) for key, value in exc.messages.items()})
    else:
        if not data["name"].split():
            errors["name"] = _form_messages()["name"]
    if not errors:
        try:
            view = _store(ws, view_id, data, rules)
            session.commit()
        except ValidationError as exc:
            session.rollback()
            value = exc.messages.get("rules") if isinstance(exc.messages, dict) else exc.messages
            errors["rules"] = _rules_message(value)
            rule_errors = value if isinstance(value, dict) else None
        except InvalidInput as exc:
            session.rollback()
            errors[exc.field or "_schema"] = str(exc)
        else:
            flash(_("View “%(name)s” saved.", name=view.name), "success")
            return redirect(url_for("crm.views"))
    return _editor(
        view_id=view_id,
        name=form.get("name", ""),
        description=form.get("description", ""),
        rules=rules,
        errors=errors,
        rule_errors=rule_errors,
        status=400,
    )


def _user_id() -> str | None:
    return str(current_user.get_id()) if current_user.is_authenticated else None


@bp.post(f"/views/{VIEW_ID}/delete")
@login_required
def view_delete(view_id: int):
    require_permission("views.write")
    session = get_state().session
    view = _get_view_or_404(view_id)
    name = view.name
    service.delete_view(session, workspace_id(), view_id)
    session.commit()
    flash(_("View “%(name)s” deleted.", name=name), "success")
    return redirect(url_for("crm.views"))


@bp.get(f"/views/{VIEW_ID}")
@login_required
def view_contacts(view_id: int):
    require_permission("contacts.read")
    view = _get_view_or_404(view_id)
    return redirect(url_for("crm.contacts", view_id=view.id))
