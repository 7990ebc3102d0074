"""Signed tokens for the links inside mail (unsubscribe now; open and click build on it).

A token carries ids only, signed with ``itsdangerous`` and one salt per purpose, so a token made
for one purpose (say an open pixel) can never be replayed as another (an unsubscribe), and
nothing a recipient can edit in a link reaches the database unchecked.  The runner makes one
unsubscribe URL per recipient, so :func:`make_token` keeps its serializers cached.
"""

from __future__ import annotations

import functools
from typing import Any

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

from .config import Settings
from .errors import InvalidInput
from .i18n import _

#: Every purpose a token may have; each is its own salt.
PURPOSES = frozenset({"unsubscribe", "open", "click", "preview"})
SALT_PREFIX = "marketing.tracking."


@functools.lru_cache(maxsize=64)
def _serializer(secret: str, purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(secret, salt=SALT_PREFIX + purpose)


def make_token(secret: str, purpose: str, payload: dict[str, Any]) -> str:
    """A URL-safe signed token for ``payload`` (small JSON: ids, not personal data)."""
    return str(_serializer(secret, purpose).dumps(payload))


def read_token(secret: str, purpose: str, token: str, max_age: int | None = None) -> dict[str, Any]:
    """The payload of a valid token for ``purpose``; :class:`InvalidInput` otherwise."""
    try:
        payload = _serializer(secret, purpose).loads(token, max_age=max_age)
    except SignatureExpired:
        raise InvalidInput(_("This link has expired."), field="token") from None
    except BadData:
        raise InvalidInput(_("This link is not valid."), field="token") from None
    if not isinstance(payload, dict):
        raise InvalidInput(_("This link is not valid."), field="token")
    return payload


def unsubscribe_token(settings: Settings, workspace_id: int, recipient_id: int) -> str:
    return make_token(settings.token_secret, "unsubscribe", {"w": workspace_id, "r": recipient_id})


def unsubscribe_url(settings: Settings, workspace_id: int, recipient_id: int) -> str:
    """The absolute one-click unsubscribe link of one campaign recipient."""
    token = unsubscribe_token(settings, workspace_id, recipient_id)
    return f"{settings.public_base_url}{settings.public_url_prefix}/u/{token}"


def read_unsubscribe(settings: Settings, token: str) -> tuple[int, int]:
    """``(workspace_id, recipient_id)`` of an unsubscribe token."""
    payload = read_token(settings.token_secret, "unsubscribe", token)
    workspace_id, recipient_id = payload.get("w"), payload.get("r")
    if type(workspace_id) is not int or type(recipient_id) is not int:
        raise InvalidInput(_("This link is not valid."), field="token")
    return workspace_id, recipient_id


__all__ = [
    "PURPOSES",
    "make_token",
    "read_token",
    "read_unsubscribe",
    "unsubscribe_token",
    "unsubscribe_url",
]
