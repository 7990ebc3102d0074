"""Pieces shared by the API schemas."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate


class StrictSchema(Schema):
    """Input schema: unknown keys are an error, not silently dropped."""

    class Meta:
        unknown = RAISE


class PageArgs(StrictSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class CountOut(Schema):
    count = fields.Integer(required=True)


class IdList(fields.List):
    def __init__(self, **kwargs):
        super().__init__(
            fields.Integer(strict=True, validate=validate.Range(min=1, max=2**62)),
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
