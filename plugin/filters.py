"""Saved-view rules: a JSON tree, validated by marshmallow, compiled to one SQL expression.

A view is ``{"match": "all" | "any", "rules": [rule | group, ...]}`` where a rule is
``{"field": ..., "op": ..., "value": ...}``.  Compiling to SQL (never filtering in Python) is what
lets an audience of a million contacts resolve in one query.

Text comparisons ignore ASCII case (``QQ.com`` matches ``qq.com``) and treat a missing value as
empty: ``not equals`` and ``not in list`` match contacts that have no value at all.  This module
imports neither Flask nor models: the caller passes the columns (:class:`FieldColumns`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import and_, false, func, or_, true
from sqlalchemy.sql.elements import ColumnElement

#: Built-in fields a rule may name, and whether they hold text or a timestamp.
BUILTIN_FIELDS: dict[str, str] = {
    "email": "text",
    "email_domain": "text",
    "email_local": "text",
    "name": "text",
    "company": "text",
    "country": "text",
    "owner": "text",
    "created_at": "datetime",
}
CUSTOM_PREFIX = "custom."
CUSTOM_KEY_RE = re.compile(r"[a-z0-9_]{1,64}")
#: Exactly ``YYYY-MM-DD``: Python 3.11's ``date.fromisoformat`` also takes ``20240105`` and
#: ``2024-W01-1``, which would compare wrongly against custom date texts (compared as text).
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_TEXT = 500

TEXT_OPS = frozenset({"eq", "ne", "contains", "not_contains", "starts_with", "ends_with", "in", "not_in"})
PRESENCE_OPS = frozenset({"empty", "not_empty"})
DATE_OPS = frozenset({"before", "after", "between"})
ALL_OPS = TEXT_OPS | PRESENCE_OPS | DATE_OPS
MAX_DEPTH = 6
MAX_LIST = 1000

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Lower-case ASCII letters only, exactly as SQLite's ``lower()`` does."""
    return text.translate(_ASCII_LOWER)


# --------------------------------------------------------------------------------------------
# validation


def field_kind(name: str) -> str | None:
    """``text``, ``datetime`` or ``custom`` for a valid field name, else ``None``."""
    if name in BUILTIN_FIELDS:
        return BUILTIN_FIELDS[name]
    if name.startswith(CUSTOM_PREFIX) and CUSTOM_KEY_RE.fullmatch(name[len(CUSTOM_PREFIX) :]):
        return "custom"
    return None


class RuleSchema(Schema):
    class Meta:
        unknown = RAISE

    field = fields.String(required=True)
    op = fields.String(required=True, validate=validate.OneOf(sorted(ALL_OPS)))
    value = fields.Raw(load_default=None, allow_none=True)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        kind = field_kind(data["field"])
        if kind is None:
            raise ValidationError(
                "unknown field; use one of "
                + ", ".join(sorted(BUILTIN_FIELDS))
                + " or custom.<key> (a-z, 0-9, _)",
                "field",
            )
        op, value = data["op"], data.get("value")
        if kind == "datetime" and op not in DATE_OPS | PRESENCE_OPS:
            raise ValidationError("a date field takes before, after, between, empty or not_empty", "op")
        if kind == "text" and op in DATE_OPS:
            raise ValidationError("before/after/between need a date field", "op")
        _check_value(op, value)


def _check_value(op: str, value: Any) -> None:
    if op in PRESENCE_OPS:
        if value not in (None, "", []):
            raise ValidationError("empty/not_empty take no value", "value")
        return
    if op in ("in", "not_in"):
        if (
            not isinstance(value, list)
            or not value
            or len(value) > MAX_LIST
            or not all(isinstance(v, str) and v.strip() and len(v) <= MAX_TEXT for v in value)
        ):
            raise ValidationError(
                f"a list of 1 to {MAX_LIST} non-empty texts of at most {MAX_TEXT} characters is required",
                "value",
            )
        return
    if op in ("before", "after"):
        _parse_date(value)
        return
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValidationError("between takes [first day, last day]", "value")
        first, last = _parse_date(value[0]), _parse_date(value[1])
        if first > last:
            raise ValidationError("the first day is after the last day", "value")
        return
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("a non-empty text is required", "value")
    if len(value) > MAX_TEXT:
        raise ValidationError(f"at most {MAX_TEXT} characters", "value")


def _parse_date(value: Any) -> dt.date:
    if not isinstance(value, str):
        raise ValidationError("a date as YYYY-MM-DD is required", "value")
    if not DATE_RE.fullmatch(value):
        raise ValidationError(f"{value[:40]!r} is not a date as YYYY-MM-DD", "value")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"{value!r} is not a date as YYYY-MM-DD", "value") from exc


class RuleOrGroup(fields.Field):
    """A list item that is either a rule or a nested group (recognized by its ``match`` key)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValidationError("each rule must be an object")
        if "match" in value:
            return GroupSchema().load(value)
        return RuleSchema().load(value)


class GroupSchema(Schema):
    class Meta:
        unknown = RAISE

    match = fields.String(required=True, validate=validate.OneOf(["all", "any"]))
    rules = fields.List(RuleOrGroup(), required=True, validate=validate.Length(max=100))


def load_rules(data: Any) -> dict[str, Any]:
    """Validate a rules tree and return it normalized; raises ``ValidationError`` naming the path."""
    if not isinstance(data, Mapping):
        raise ValidationError({"_schema": ["rules must be an object with match and rules"]})
    if _depth(data) > MAX_DEPTH:
        raise ValidationError({"rules": [f"groups nest at most {MAX_DEPTH} levels"]})
    return GroupSchema().load(data)


def _depth(data: Any) -> int:
    """Nesting depth of groups, measured without recursion (input may be hostile)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.get("rules") if isinstance(node, Mapping) else None
        if isinstance(children, list):
            stack.extend((c, level + 1) for c in children if isinstance(c, Mapping) and "match" in c)
    return deepest


# --------------------------------------------------------------------------------------------
# compilation


@dataclasses.dataclass(frozen=True)
class FieldColumns:
    """The SQL columns behind each field; ``custom(key)`` gives a custom field as text."""

    columns: Mapping[str, ColumnElement[Any]]
    custom: Callable[[str], ColumnElement[Any]]

    def get(self, name: str) -> ColumnElement[Any]:
        if name.startswith(CUSTOM_PREFIX):
            return self.custom(name[len(CUSTOM_PREFIX) :])
        return self.columns[name]


def compile_rules(rules: Mapping[str, Any], columns: FieldColumns, tz: ZoneInfo) -> ColumnElement[bool]:
    """Turn an already validated rules tree into a WHERE expression."""
    parts = [
        compile_rules(item, columns, tz) if "match" in item else _compile_rule(item, columns, tz)
        for item in rules["rules"]
    ]
    if rules["match"] == "all":
        return and_(true(), *parts)
    return or_(false(), *parts)


def day_start_utc(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    """Midnight of ``day`` in ``tz``, as a UTC instant."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz).astimezone(dt.UTC)


def _compile_rule(rule: Mapping[str, Any], columns: FieldColumns, tz: ZoneInfo) -> ColumnElement[bool]:
    name, op, value = rule["field"], rule["op"], rule.get("value")
    col = columns.get(name)
    kind = field_kind(name)
    if op == "empty":
        return or_(col.is_(None), col == "") if kind != "datetime" else col.is_(None)
    if op == "not_empty":
        return and_(col.is_not(None), col != "") if kind != "datetime" else col.is_not(None)
    if op in DATE_OPS:
        return _compile_date(col, kind, op, value, tz)
    low = func.lower(col)
    if op == "eq":
        return low == fold(value)
    if op == "ne":
        return or_(col.is_(None), low != fold(value))
    if op == "contains":
        return low.contains(fold(value), autoescape=True)
    if op == "not_contains":
        return or_(col.is_(None), ~low.contains(fold(value), autoescape=True))
    if op == "starts_with":
        return low.startswith(fold(value), autoescape=True)
    if op == "ends_with":
        return low.endswith(fold(value), autoescape=True)
    folded = sorted({fold(v) for v in value})
    if op == "in":
        return low.in_(folded)
    return or_(col.is_(None), low.not_in(folded))


def _compile_date(
    col: ColumnElement[Any], kind: str | None, op: str, value: Any, tz: ZoneInfo
) -> ColumnElement[bool]:
    if kind == "datetime":
        if op == "before":
            return col < day_start_utc(dt.date.fromisoformat(value), tz)
        if op == "after":
            return col >= day_start_utc(dt.date.fromisoformat(value) + dt.timedelta(days=1), tz)
        first, last = (dt.date.fromisoformat(v) for v in value)
        return and_(
            col >= day_start_utc(first, tz),
            col < day_start_utc(last + dt.timedelta(days=1), tz),
        )
    # Custom dates are ISO ``YYYY-MM-DD`` texts: their first ten characters order like dates.
    day = func.substr(col, 1, 10)
    if op == "before":
        return and_(col.is_not(None), col != "", day < value)
    if op == "after":
        return and_(col.is_not(None), col != "", day > value)
    return and_(col.is_not(None), col != "", day >= value[0], day <= value[1])


def referenced_fields(rules: Mapping[str, Any]) -> set[str]:
    """Every field a rules tree names (to list the custom fields a view depends on)."""
    found: set[str] = set()
    for item in rules.get("rules", []):
        found |= referenced_fields(item) if "match" in item else {item["field"]}
    return found
