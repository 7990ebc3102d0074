"""Contacts, tags and saved views in the JSON API."""

from __future__ import annotations

import math

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from ..i18n import _l
from .common import MAX_ID, IdList, PageArgs, StrictSchema, TagNames

CUSTOM_KEY = validate.Regexp(r"^[a-z0-9_]{1,64}$", error="custom field keys use a-z, 0-9 and _")


def _check_custom(value: dict) -> None:
    if len(value) > 100:
        raise ValidationError("at most 100 custom fields")
    for key, item in value.items():
        CUSTOM_KEY(key)
        if item is not None and (isinstance(item, bool) or not isinstance(item, str | int | float)):
            raise ValidationError(f"custom.{key}: a text or number is required")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValidationError(f"custom.{key}: a finite number is required")
        if isinstance(item, str | int | float) and len(str(item)) > 1000:
            raise ValidationError(f"custom.{key}: at most 1000 characters")


class ContactIn(StrictSchema):
    email = fields.String(
        required=True, validate=validate.Length(min=3, max=320), metadata={"format": "email"}
    )
    name = fields.String(allow_none=True, validate=validate.Length(max=200))
    company = fields.String(allow_none=True, validate=validate.Length(max=200))
    country = fields.String(allow_none=True, validate=validate.Length(max=100))
    owner_id = fields.String(allow_none=True, validate=validate.Length(max=120))
    custom = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), load_default=None)
    tags = TagNames(load_default=None)

    @validates("custom")
    def _custom(self, value, **_):
        if value is not None:
            _check_custom(value)


class ContactPatch(ContactIn):
    email = fields.String(validate=validate.Length(min=3, max=320), metadata={"format": "email"})


class ContactOut(Schema):
    id = fields.Integer()
    email = fields.String()
    name = fields.String(allow_none=True)
    company = fields.String(allow_none=True)
    country = fields.String(allow_none=True)
    owner_id = fields.String(allow_none=True)
    custom = fields.Dict()
    tags = fields.List(fields.String())
    created_at = fields.DateTime()


class ContactListArgs(PageArgs):
    q = fields.String(load_default=None, validate=validate.Length(max=200))
    tag_id = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_ID))
    view_id = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_ID))
    sort = fields.String(
        load_default="created_at",
        validate=validate.OneOf(["email", "name", "company", "country", "created_at"]),
    )
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))


class ContactPageOut(Schema):
    items = fields.List(fields.Nested(ContactOut))
    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()
    pages = fields.Integer()


class BulkTagIn(StrictSchema):
    contact_ids = IdList(required=True)
    add = TagNames(load_default=None)
    remove = TagNames(load_default=None)

    @validates_schema
    def _something_to_do(self, data, **_):
        if not data.get("add") and not data.get("remove"):
            raise ValidationError("give tag names to add, to remove, or both", "add")


class BulkTagOut(Schema):
    added = fields.Integer()
    removed = fields.Integer()


class BulkDeleteIn(StrictSchema):
    contact_ids = IdList(required=True)


class DeletedOut(Schema):
    deleted = fields.Integer()


_TAG_NAME = validate.Length(min=1, max=100, error=_l("Give the tag a name of 1 to 100 characters."))
_VIEW_NAME = validate.Length(min=1, max=100, error=_l("Give the view a name of 1 to 100 characters."))


class TagIn(StrictSchema):
    name = fields.String(required=True, validate=_TAG_NAME)
    color = fields.String(
        load_default=None, validate=validate.Regexp(r"^#[0-9a-fA-F]{6}$", error="a color like #5b8def")
    )


class TagOut(Schema):
    id = fields.Integer()
    name = fields.String()
    color = fields.String()
    count = fields.Integer()


class ViewIn(StrictSchema):
    name = fields.String(required=True, validate=_VIEW_NAME)
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    rules = fields.Dict(required=True, metadata={"description": "rules tree, see README"})


class ViewPatch(StrictSchema):
    name = fields.String(validate=_VIEW_NAME)
    description = fields.String(validate=validate.Length(max=2000))
    rules = fields.Dict()


class ViewOut(Schema):
    id = fields.Integer()
    name = fields.String()
    description = fields.String()
    rules = fields.Dict()
    count = fields.Integer()


class RulesIn(StrictSchema):
    rules = fields.Dict(required=True)


class MeOut(Schema):
    user_id = fields.String()
    role = fields.String(allow_none=True)
    workspace = fields.String()
