"""Input of the quota pages: the trigger-share and cap forms, the forecast query."""

from __future__ import annotations

from marshmallow import fields, validate

from ..allocation import CAP_SCOPES, LIMIT_MAX, SUBJECT_MAX
from .common import MAX_ID, StrictSchema


class ShareForm(StrictSchema):
    """The trigger-mail share: a percentage of the daily quota, or a number of mails."""

    mode = fields.String(required=True, validate=validate.OneOf(("percent", "absolute")))
    value = fields.Decimal(required=True, places=2, validate=validate.Range(min=0, max=LIMIT_MAX))


class CapForm(StrictSchema):
    scope = fields.String(required=True, validate=validate.OneOf(CAP_SCOPES))
    subject = fields.String(required=True, validate=validate.Length(min=1, max=SUBJECT_MAX))
    daily_limit = fields.Integer(required=True, validate=validate.Range(min=0, max=LIMIT_MAX))


class CapListArgs(StrictSchema):
    q = fields.String(load_default="", validate=validate.Length(max=SUBJECT_MAX))
    sort = fields.String(
        load_default="subject",
        validate=validate.OneOf(("subject", "-subject", "limit", "-limit", "scope", "-scope")),
    )
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    edit = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_ID))


class ForecastArgs(StrictSchema):
    recipients = fields.Integer(required=True, validate=validate.Range(min=0, max=1_000_000_000))
    account_id = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_ID))
    team = fields.String(load_default=None, validate=validate.Length(max=SUBJECT_MAX))
