"""The SMTP account form ("send from my mailbox"): what an admin may type, field by field.

The form posts text; empty optional inputs arrive as ``""`` and are read as "not given" so an
edit that leaves the password empty keeps the stored one.  Business rules that need the stored
account (a user name needs a password, a DKIM selector needs a key) live in
``plugin.smtp_accounts``.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

from ..i18n import _l
from .common import Message, text_problem

SECURITY_CHOICES = ("starttls", "ssl", "none")
#: Daily limit offered for a new account: personal mailboxes (QQ, 163) refuse a few hundred a day.
DEFAULT_DAILY_LIMIT = 500
MAX_DKIM_KEY_BYTES = 16 * 1024

_HOST = validate.Regexp(
    r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,253}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$",
    error="Enter a host name such as smtp.exmail.qq.com, without a scheme or port.",
)
_SELECTOR = validate.Regexp(
    r"^[A-Za-z0-9]([A-Za-z0-9\-_.]{0,61}[A-Za-z0-9])?$",
    error="A selector uses letters, digits, - and _ (for example s1 or mail2024).",
)


_OPTIONAL = ("username", "password", "send_rate", "dkim_selector", "dkim_private_key")


class SmtpAccountIn(Schema):
    """One SMTP account as posted by the form (create and edit)."""

    class Meta:
        unknown = EXCLUDE  # csrf_token, submit buttons, the uploaded file's field

    # Messages users read beside the field (marshmallow's defaults, such as "Length must be between
    # 1 and 120.", say nothing about what to type and are not translated).
    name = fields.String(
        required=True,
        validate=validate.Length(min=1, max=120, error=_l("Give the account a name of 1 to 120 characters.")),
        error_messages={"required": Message(_l("Give the account a name, for example “Sales mailbox”."))},
    )
    host = fields.String(
        required=True,
        validate=[validate.Length(max=255), _HOST],
        error_messages={"required": Message(_l("Enter the SMTP server, for example smtp.exmail.qq.com."))},
    )
    port = fields.Integer(
        required=True,
        strict=False,
        validate=validate.Range(min=1, max=65535, error=_l("Enter a port from 1 to 65535.")),
        error_messages={
            "required": Message(_l("Enter a port from 1 to 65535.")),
            "invalid": Message(_l("Enter a port from 1 to 65535.")),
        },
    )
    security = fields.String(load_default="starttls", validate=validate.OneOf(SECURITY_CHOICES))
    username = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    password = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    # A plain string with the Email validator: fields.Email only takes a fixed (untranslated) message.
    from_address = fields.String(
        required=True,
        validate=[
            validate.Length(max=320),
            validate.Email(error=_l("Enter a valid email address, such as sales@example.com.")),
        ],
        error_messages={"required": Message(_l("Enter the address mails are sent from."))},
    )
    daily_limit = fields.Integer(
        load_default=DEFAULT_DAILY_LIMIT, validate=validate.Range(min=1, max=10_000_000)
    )
    #: Mails per second; empty means the deployment default (``MARKETING_SMTP_SEND_RATE``).
    send_rate = fields.Float(
        load_default=None, allow_none=True, allow_nan=False, validate=validate.Range(min=0.1, max=1000)
    )
    dkim_selector = fields.String(load_default=None, allow_none=True, validate=_SELECTOR)
    #: PEM text, pasted or read from the uploaded file by the view.
    dkim_private_key = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_DKIM_KEY_BYTES)
    )
    remove_dkim = fields.Boolean(load_default=False)

    @pre_load
    def _clean(self, data: Any, **_: Any) -> Any:
        if not hasattr(data, "items"):
            return data
        cleaned = dict(data.items())
        for key, value in list(cleaned.items()):
            if isinstance(value, str) and text_problem(value):
                cleaned[key] = value.replace("\x00", "")
        for key in ("name", "host", "username", "from_address", "dkim_selector"):
            if isinstance(cleaned.get(key), str):
                cleaned[key] = cleaned[key].strip()
        for key in (*_OPTIONAL, "daily_limit", "name", "host", "port", "from_address"):
            if cleaned.get(key) in ("", None):
                cleaned.pop(key, None)
        if "remove_dkim" in cleaned:
            cleaned["remove_dkim"] = cleaned["remove_dkim"] in ("1", "on", "true", True)
        return cleaned
