"""Pieces shared by the API schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

from ..i18n import _

#: Largest id of a table with a 32-bit key on PostgreSQL (tags, views).  Bigger ids in a path
#: or a filter cannot exist, and binding them would fail in the database instead of saying 404.
MAX_ID = 2**31 - 1
#: Largest id of a 64-bit key (contacts, API tokens).
MAX_BIG_ID = 2**63 - 1


class Message(str):
    """A field error message that marshmallow keeps as a plain ``str`` (it refuses lazy strings for
    ``error_messages``) and that is translated when the error is raised, in the user's language."""

    __slots__ = ()

    def format(self, *args: Any, **kwargs: Any) -> str:
        return _(str(self)).format(*args, **kwargs)


def text_problem(value: Any) -> str | None:
    """Why a text anywhere inside ``value`` cannot be stored, or ``None`` if all can.

    PostgreSQL refuses NUL characters in text and JSON, and lone surrogates (which JSON's
    ``\\ud800`` escapes can produce) cannot be encoded for any database; both would otherwise
    surface as a server error deep inside a query instead of a message about the field.
    The walk is iterative because the input may be hostile.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "NUL characters (\\u0000) are not allowed"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "the text is not valid Unicode (lone surrogate)"
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


class StrictSchema(Schema):
    """Input schema: unknown keys are an error, not silently dropped, and every text must be
    storable (see :func:`text_problem`); errors name the top-level field."""

    class Meta:
        unknown = RAISE

    @pre_load
    def _refuse_unstorable_text(self, data: Any, **_: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        errors: dict[str, list[str]] = {}
        for key in list(data.keys()):
            problem = text_problem(key) or text_problem(data[key])
            if problem:
                errors[key if text_problem(key) is None else "_schema"] = [problem]
        if errors:
            raise ValidationError(errors)
        return data


class PageArgs(StrictSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class CountOut(Schema):
    count = fields.Integer(required=True)


class IdList(fields.List):
    def __init__(self, **kwargs):
        super().__init__(
            fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_BIG_ID)),
            validate=validate.Length(min=1, max=10_000),
            **kwargs,
        )


class TagNames(fields.List):
    def __init__(self, **kwargs):
        super().__init__(
            fields.String(validate=validate.Length(min=1, max=100)),
            validate=validate.Length(min=1, max=50),
            **kwargs,
        )
