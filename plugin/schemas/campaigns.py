"""The campaign form, the live audience count query and the campaign list arguments.

The form arrives as an HTML form (lists as repeated keys, empty inputs as ``""``, unchecked boxes
absent) or as JSON; :func:`form_data` turns the first into the second so one strict schema
(unknown keys refused) checks both.  Rules that need the database (ids of this workspace, counts,
postal addresses, times against the clock) are the service's, not the schema's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from ..i18n import _l
from .common import MAX_ID, Message, StrictSchema

#: Keys that repeat in the HTML form (multi-selects and check lists).
LIST_FIELDS = (
    "template_ids",
    "sender_ids",
    "include_tags",
    "include_views",
    "exclude_tags",
    "exclude_views",
)
#: Check boxes: absent from a posted form means "off".
BOOL_FIELDS = ("tracking", "spread_over_days")
#: Optional inputs whose empty value means "not given".
OPTIONAL_FIELDS = ("max_count", "account_id", "send_at", "send_rate", "reply_to", "from_name", "label")
#: Most templates and senders one campaign may rotate over.
MAX_ROTATION = 50
#: Most tags or views in one include or exclude list.
MAX_SEGMENTS = 200
#: Largest skip/max count (far beyond any audience, but keeps the numbers in a 32-bit column).
MAX_COUNT = 2**31 - 1


def _ids(max_items: int) -> fields.List:
    return fields.List(
        fields.Integer(strict=False, validate=validate.Range(min=1, max=MAX_ID)),
        load_default=list,
        validate=validate.Length(max=max_items),
    )


def form_data(form: Any, *, skip: tuple[str, ...] = ("csrf_token",)) -> dict[str, Any]:
    """A posted HTML form (a werkzeug ``MultiDict``) as the dict :class:`CampaignIn` loads.

    Repeated keys become lists, empty optional inputs ``None``, check boxes booleans (a hidden
    ``<name>_present`` marker says the box was on the page, so "absent" means "unchecked").
    """
    data: dict[str, Any] = {}
    for key in form:
        if key in skip or key.endswith("_present"):
            continue
        if key in LIST_FIELDS:
            data[key] = [v for v in form.getlist(key) if v != ""]
        elif key in BOOL_FIELDS:
            data[key] = form.get(key) not in ("", "0", "false", "off", None)
        else:
            value = form.get(key)
            data[key] = None if value == "" and key in OPTIONAL_FIELDS else value
    for key in BOOL_FIELDS:
        if key not in data and form.get(f"{key}_present"):
            data[key] = False
    if data.get("skip_count") == "":
        data["skip_count"] = 0
    return data


class AudienceIn(StrictSchema):
    """Who receives the campaign: tags and views in, tags and views out, and the custom send count
    (skip the first N of the audience in its stable order, then send to at most M)."""

    include_tags = _ids(MAX_SEGMENTS)
    include_views = _ids(MAX_SEGMENTS)
    exclude_tags = _ids(MAX_SEGMENTS)
    exclude_views = _ids(MAX_SEGMENTS)
    skip_count = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_COUNT))
    max_count = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_COUNT)
    )


class AudienceQuery(AudienceIn):
    """The live count request of the form; ``account_id`` adds the forecast for that account."""

    account_id = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID)
    )


class CampaignIn(AudienceIn):
    name = fields.String(
        required=True,
        validate=validate.Length(
            min=1, max=200, error=_l("Give the campaign a name of 1 to 200 characters.")
        ),
    )
    template_ids = _ids(MAX_ROTATION)
    template_assignment = fields.String(
        load_default="balanced", validate=validate.OneOf(["random", "balanced"])
    )
    sender_ids = _ids(MAX_ROTATION)
    from_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    reply_to = fields.Email(
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=320),
        error_messages={"invalid": Message(_l("Enter a reply-to address such as service@example.com."))},
    )
    tracking = fields.Boolean(load_default=True)
    label = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=100))
    account_id = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_ID)
    )
    #: ``now``: start as soon as it is submitted; ``at``: at ``send_at``.
    send_mode = fields.String(load_default="now", validate=validate.OneOf(["now", "at"]))
    #: Wall-clock time in the user's time zone (what ``<input type=datetime-local>`` sends); the
    #: service converts it to UTC with the user's zone.
    send_at = fields.NaiveDateTime(load_default=None, allow_none=True, format="iso")
    #: Mails per second; empty means the deployment's default.
    send_rate = fields.Float(
        load_default=None,
        allow_none=True,
        allow_nan=False,
        validate=validate.Range(
            min=0.01, max=10_000, error=_l("Enter 0.01 to 10,000 mails per second, or leave it empty.")
        ),
        error_messages={"invalid": Message(_l("Enter 0.01 to 10,000 mails per second, or leave it empty."))},
    )
    spread_over_days = fields.Boolean(load_default=True)
    #: Which button was pressed: save as a draft, or submit (schedule / start / ask approval).
    action = fields.String(load_default="draft", validate=validate.OneOf(["draft", "submit"]))

    @validates_schema
    def _time_when_timed(self, data: Mapping[str, Any], **_: Any) -> None:
        if data.get("send_mode") == "at" and data.get("send_at") is None and data.get("action") == "submit":
            raise ValidationError({"send_at": [str(_l("Pick the date and time to send at."))]})


class RejectIn(StrictSchema):
    note = fields.String(load_default="", validate=validate.Length(max=1000))


SORTS = ("created_at", "name", "status", "total", "send_at")


class CampaignListArgs(Schema):
    """List page query string; bad values fall back to the defaults rather than an error page."""

    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))
    status = fields.String(load_default="", validate=validate.Length(max=24))
    sort = fields.String(load_default="created_at", validate=validate.OneOf(SORTS))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))


class StatusOut(Schema):
    """What ``campaign_progress.js`` polls every two seconds."""

    id = fields.Integer()
    status = fields.String()
    status_label = fields.String()
    total = fields.Integer()
    sent = fields.Integer()
    failed = fields.Integer()
    skipped = fields.Integer()
    pending = fields.Integer()
    percent = fields.Float()
    rate_per_minute = fields.Float()
    #: ``None`` when unknown, and when today's quota stops the campaign before the end (``eta_days``).
    eta_seconds = fields.Integer(allow_none=True)
    #: Calendar days until the last mail at the current quota, when today's cannot cover the rest.
    eta_days = fields.Integer(allow_none=True)
    eta_text = fields.String()
    quota_note = fields.String()
    pause_reason = fields.String(allow_none=True)
    pause_text = fields.String()
    last_error = fields.String(allow_none=True)
    final = fields.Boolean()


campaign_in = CampaignIn()
audience_query = AudienceQuery()
reject_in = RejectIn()
list_args = CampaignListArgs()
status_out = StatusOut()
