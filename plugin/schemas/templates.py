"""Input of the template pages: list arguments, the editor form, preview, import and test send.

The schemas only shape input (types, rough bounds so nothing huge reaches a query); the rules a
person reads beside a field (name required, size limit, unknown variables) are the service's,
so the pages and any future API say the same thing.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

from ..campaigns.templates import SORTS
from .common import MAX_ID

#: Far above the configurable template limit: only stops absurd posts before the service.
_HARD_MAX = 20 * 1024 * 1024


def _blank_to_none(data, keys):
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    data = dict(data or {})
    for key in keys:
        if isinstance(data.get(key), str) and not data[key].strip():
            data[key] = None
    return data


class ListArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))
    sort = fields.String(load_default="updated_at", validate=validate.OneOf(SORTS))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))


class TemplateForm(Schema):
    """The editor's fields (the CSRF token and buttons are other form keys, ignored here)."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(load_default="", validate=validate.Length(max=1000))
    subject = fields.String(load_default="", validate=validate.Length(max=5000))
    html = fields.String(load_default="", validate=validate.Length(max=_HARD_MAX))
    text = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=_HARD_MAX))


class PreviewIn(Schema):
    """The editor's live preview request (JSON)."""

    class Meta:
        unknown = EXCLUDE

    subject = fields.String(load_default="", validate=validate.Length(max=5000))
    html = fields.String(load_default="", validate=validate.Length(max=_HARD_MAX))
    text = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=_HARD_MAX))
    contact_id = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=2**63 - 1)
    )
    sender_id = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID))

    @pre_load
    def _blanks(self, data, **_):
        return _blank_to_none(data, ("contact_id", "sender_id"))


class ContactSearchArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))


class ImportUrlForm(Schema):
    class Meta:
        unknown = EXCLUDE

    url = fields.String(load_default="", validate=validate.Length(max=2000))
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class ImportFileForm(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class SendTestForm(Schema):
    class Meta:
        unknown = EXCLUDE

    addresses = fields.String(load_default="", validate=validate.Length(max=2000))
    account_id = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID)
    )
    sender_id = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID))
    contact_id = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=2**63 - 1)
    )

    @pre_load
    def _blanks(self, data, **_):
        return _blank_to_none(data, ("account_id", "sender_id", "contact_id"))
