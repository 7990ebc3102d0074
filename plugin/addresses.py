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
        raise InvalidInput(str(exc), field="email") from exc
    return result.normalized.lower()


def split_email(email: str) -> tuple[str, str]:
    local, _at, domain = email.rpartition("@")
    return local, domain
