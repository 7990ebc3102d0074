"""Trigger mail in the JSON API: the request to send one, the mail's state, and the log's filters."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..trigger_mail import MAX_KEY_LENGTH, MAX_VARIABLES, SORTS, STATUSES
from .common import MAX_ID, PageArgs, StrictSchema

#: The largest inline HTML accepted (the same order as a stored template).
MAX_HTML_CHARS = 1024 * 1024


class TriggerMailIn(StrictSchema):
    """Send one mail: a stored template (``template_id``) or inline ``subject`` + ``html``/``text``.

    ``idempotency_key`` is required, here or in the ``Idempotency-Key`` header: the same key
    again returns the same mail and sends nothing.
    """

    to = fields.String(required=True, validate=validate.Length(min=3, max=320), metadata={"format": "email"})
    template_id = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID)
    )
    subject = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    html = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_HTML_CHARS))
    text = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_HTML_CHARS))
    variables = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.Raw(allow_none=True),
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=MAX_VARIABLES),
        metadata={"description": 'Values of the template\'s variables, e.g. {"order_no": "A-1001"}.'},
    )
    idempotency_key = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=MAX_KEY_LENGTH),
        metadata={"description": "Also accepted as the Idempotency-Key header."},
    )
    account_id = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID)
    )
    sender_id = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID)
    )

    @validates_schema
    def _content(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("template_id") is not None:
            return
        if not (data.get("subject") or "").strip():
            raise ValidationError("give template_id, or subject and html", field_name="subject")
        if not (data.get("html") or "").strip() and not (data.get("text") or "").strip():
            raise ValidationError("give template_id, or subject and html", field_name="html")


class TriggerMailOut(Schema):
    id = fields.Integer()
    idempotency_key = fields.String()
    to = fields.String(attribute="to_email")
    status = fields.String(metadata={"enum": list(STATUSES)})
    attempts = fields.Integer()
    subject = fields.String()
    template_id = fields.Integer(allow_none=True)
    account_id = fields.Integer(allow_none=True)
    provider_message_id = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    created_by = fields.String(allow_none=True)
    created_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)


class TriggerMailListArgs(PageArgs):
    q = fields.String(load_default=None, validate=validate.Length(max=200))
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    to = fields.String(load_default=None, validate=validate.Length(max=320))
    sort = fields.String(load_default="created_at", validate=validate.OneOf(list(SORTS)))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))


class TriggerMailPageOut(Schema):
    items = fields.List(fields.Nested(TriggerMailOut))
    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()
    pages = fields.Integer()
