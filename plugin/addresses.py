"""Email address normalization: one spelling per mailbox, so duplicates are found reliably."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from .errors import InvalidInput
from .i18n import _


def normalize_email(raw: str) -> str:
    """Return the normalized address or raise :class:`InvalidInput` saying what is wrong.

    Internationalized local parts are refused: SendCloud and most relays do not speak SMTPUTF8.
    The whole address is lower-cased; providers treat local parts case-insensitively in practice.
    """
    candidate = (raw or "").strip().strip("<>").strip()
    if not candidate:
        raise InvalidInput(_("the address is empty"), field="email")
    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidInput(why_invalid(str(exc)), field="email") from exc
    return result.normalized.lower()


def why_invalid(detail: str) -> str:
    """email-validator's English reason in the user's language (its messages are not
    translated; an unknown one falls back to a general sentence)."""
    text = detail.lower()
    if "special-use or reserved" in text:
        return _(
            "The domain after the @ is reserved for tests or local networks (.test, .local, "
            ".invalid, .localhost...); mail cannot be delivered there."
        )
    if "exactly one @-sign" in text or "must have an @-sign" in text:
        return _("An address needs exactly one @.")
    if "something before the @-sign" in text:
        return _("Something is missing before the @.")
    if "something after the @-sign" in text:
        return _("Something is missing after the @.")
    if "internationalized characters before the @-sign" in text:
        return _("Characters outside ASCII before the @ are not supported by the mail relays.")
    if "should have a period" in text:
        return _("The part after the @ needs a dot, as in example.com.")
    if "period" in text or "dot" in text:
        return _("The dots in the address are misplaced (none at either end, never two in a row).")
    if "invalid character" in text or "not allowed" in text:
        return _("The address contains characters that are not allowed.")
    if "too long" in text:
        return _("The address is too long.")
    return _("This is not a valid email address.")


def split_email(email: str) -> tuple[str, str]:
    local, _at, domain = email.rpartition("@")
    return local, domain
