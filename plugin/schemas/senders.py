"""The sender form (the wizard's last step and the senders page): the From name and address,
the Reply-To, and the company name and postal address every mail's footer prints.

Every field is checked at once so each error shows beside its own field.  Whether the address
is on one of the workspace's sending domains needs the database: ``plugin.senders`` checks it.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from ..addresses import normalize_email
from ..errors import InvalidInput
from ..i18n import _
from .common import text_problem

#: Longest values the columns hold.
MAX_NAME = 200
MAX_POSTAL = 1000


def _email(raw: str, field: str, errors: dict[str, str]) -> str:
    try:
        return normalize_email(raw or "")
    except InvalidInput as exc:
        errors[field] = (
            _("Enter an email address.")
            if not (raw or "").strip()
            else _("Not a valid address: %(reason)s", reason=str(exc))
        )
        return ""


def _required_text(value: str, field: str, missing: str, limit: int, errors: dict[str, str]) -> str:
    value = (value or "").strip()
    problem = text_problem(value)
    if problem:
        errors[field] = problem
    elif not value:
        errors[field] = missing
    elif len(value) > limit:
        errors[field] = _("At most %(n)s characters.", n=limit)
    return value


class SenderIn(Schema):
    """Text fields as posted; the loaded result has the addresses normalized and texts trimmed."""

    class Meta:
        unknown = EXCLUDE

    from_address = fields.String(load_default="")
    from_name = fields.String(load_default="")
    reply_to = fields.String(load_default="")
    company_name = fields.String(load_default="")
    postal_address = fields.String(load_default="")

    @post_load
    def _clean(self, data: dict[str, Any], **_kw: Any) -> dict[str, str]:
        errors: dict[str, str] = {}
        clean = {
            "from_address": _email(data["from_address"], "from_address", errors),
            "from_name": _required_text(
                data["from_name"],
                "from_name",
                _("Enter the name recipients see as the sender."),
                MAX_NAME,
                errors,
            ),
            "reply_to": _email(data["reply_to"], "reply_to", errors),
            "company_name": _required_text(
                data["company_name"],
                "company_name",
                _("The company name is printed in every mail footer; enter it."),
                MAX_NAME,
                errors,
            ),
            "postal_address": _required_text(
                data["postal_address"],
                "postal_address",
                _("The postal address is printed in every mail footer; enter it."),
                MAX_POSTAL,
                errors,
            ),
        }
        if errors:
            raise ValidationError(errors)
        return clean
