"""The reply mailbox form and the replies list's query string.

The form posts text: checkboxes arrive only when ticked, an empty password means "keep the
stored one" (a new mailbox needs one: ``plugin.replies.save_mailbox`` says so beside the field).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

from ..replies import DEFAULT_WINDOW_DAYS, SECURITY_CHOICES, SORTS
from .common import text_problem

_HOST = validate.Regexp(
    r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,253}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$",
    error="Enter a host name such as imap.exmail.qq.com, without a scheme or port.",
)
_TRUE = ("1", "on", "true", "yes", True)


class ReplyMailboxIn(Schema):
    """The reply mailbox settings (create and edit)."""

    class Meta:
        unknown = EXCLUDE  # csrf_token and the submit buttons

    host = fields.String(required=True, validate=[validate.Length(min=1, max=255), _HOST])
    port = fields.Integer(required=True, strict=False, validate=validate.Range(min=1, max=65535))
    security = fields.String(load_default="ssl", validate=validate.OneOf(SECURITY_CHOICES))
    username = fields.String(required=True, validate=validate.Length(min=1, max=255))
    password = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    folder = fields.String(load_default="INBOX", validate=validate.Length(min=1, max=255))
    #: CRM tag added to a contact who replies; empty for none.
    tag_name = fields.String(load_default="", validate=validate.Length(max=100))
    notify_owner = fields.Boolean(load_default=False)
    match_window_days = fields.Integer(
        load_default=DEFAULT_WINDOW_DAYS, strict=False, validate=validate.Range(min=1, max=365)
    )
    enabled = fields.Boolean(load_default=False)

    @pre_load
    def _clean(self, data: Any, **_: Any) -> Any:
        if not hasattr(data, "items"):
            return data
        cleaned = dict(data.items())
        for key, value in list(cleaned.items()):
            if isinstance(value, str) and text_problem(value):
                cleaned[key] = value.replace("\x00", "")
        for key in ("host", "username", "folder", "tag_name"):
            if isinstance(cleaned.get(key), str):
                cleaned[key] = " ".join(cleaned[key].split()) if key == "tag_name" else cleaned[key].strip()
        for key in ("password", "match_window_days", "folder"):
            if cleaned.get(key) in ("", None):
                cleaned.pop(key, None)
        for key in ("notify_owner", "enabled"):
            cleaned[key] = cleaned.get(key) in _TRUE
        return cleaned


class ReplyListArgs(Schema):
    """The replies page's query string; unknown parameters are ignored."""

    class Meta:
        unknown = EXCLUDE

    q = fields.String(load_default="", validate=validate.Length(max=200))
    sort = fields.String(load_default="received_at", validate=validate.OneOf(list(SORTS)))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))


__all__ = ["ReplyListArgs", "ReplyMailboxIn"]
