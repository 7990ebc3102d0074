"""Signed tokens for the links inside mail (open pixel, click redirect, unsubscribe), and how
machine opens are told apart from people.

Tokens
------
A token carries ids only, signed with ``itsdangerous`` and one salt per purpose, so a token made
for one purpose (say an open pixel) can never be replayed as another (an unsubscribe), and
nothing a recipient can edit in a link reaches the database unchecked.  Tokens never expire
(``max_age`` is not used): mail is read months later and its links must keep working for at
least a year; rotating ``TOKEN_SECRET`` is the only way to retire them.

* unsubscribe ``{"w": workspace, "r": recipient}`` → ``/m/u/<token>``
* open ``{"w", "r"}`` → ``/m/o/<token>.gif``
* click ``{"w", "r"}`` → ``/m/c/<link id>/<token>``: the token names the recipient; the link id
  must be a :class:`~plugin.models.TrackedLink` of *that recipient's campaign*, and the redirect
  target is read from that row, never from the URL.  So there is no open redirect, a token of one
  recipient cannot click for another, and each mail needs one click token per recipient instead
  of one per (recipient, link) — an HMAC per recipient, not per link, on the send hot path.

The runner makes these per recipient, so :func:`make_token` keeps its serializers cached.

Machine opens and clicks
------------------------
Privacy proxies and link scanners fetch images and follow links without a person.  Apple Mail
Privacy Protection's address ranges are not available offline, so :func:`is_machine_open` and
:func:`is_machine_click` use request and timing heuristics; a hit they flag is recorded as
``machine_opened`` (never as a human open or click):

* a ``HEAD`` request, or no ``User-Agent`` at all;
* a user agent of a known image proxy or scanner (``GoogleImageProxy``, ``YahooMailProxy``,
  ``ggpht.com``, Barracuda, Mimecast, Proofpoint, SafeLinks, generic HTTP libraries, bots);
* an open within :data:`MACHINE_OPEN_SECONDS` of the send (proxies such as Apple MPP prefetch
  at delivery; a person rarely reads that fast);
* a click within :data:`MACHINE_CLICK_SECONDS` of the send, or a click that comes within
  :data:`BURST_SECONDS` of another click by the same recipient on a *different* link (scanners
  follow every link at once).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .config import Settings
from .errors import InvalidInput
from .i18n import _

#: The per-recipient value holding the unsubscribe token (``List-Unsubscribe`` headers).
UNSUBSCRIBE_PLACEHOLDER = "mkt_unsub"
#: Every purpose a token may have; each is its own salt.
PURPOSES = frozenset({"unsubscribe", "open", "click", "preview"})
SALT_PREFIX = "marketing.tracking."


@functools.lru_cache(maxsize=64)
def _serializer(secret: str, purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(secret, salt=SALT_PREFIX + purpose)


def _canonical(token: str) -> bool:
    """Whether every part is the one base64 spelling of its bytes.

    Unpadded base64 leaves spare low bits in a last character, so a few edited tokens would
    decode to the very same signed bytes; refusing those keeps "an edited token never works" true.
    """
    if not token or len(token) > 1024:
        return False
    try:
        return all(base64_encode(base64_decode(part)).decode("ascii") == part for part in token.split("."))
    except (BadData, ValueError, UnicodeError):
        return False


def make_token(secret: str, purpose: str, payload: dict[str, Any]) -> str:
    """A URL-safe signed token for ``payload`` (small JSON: ids, not personal data)."""
    return str(_serializer(secret, purpose).dumps(payload))


def read_token(secret: str, purpose: str, token: str, max_age: int | None = None) -> dict[str, Any]:
    """The payload of a valid token for ``purpose``; :class:`InvalidInput` otherwise."""
    if not _canonical(token):
        raise InvalidInput(_("This link is not valid."), field="token")
    try:
        payload = _serializer(secret, purpose).loads(token, max_age=max_age)
    except SignatureExpired:
        raise InvalidInput(_("This link has expired."), field="token") from None
    except BadData:
        raise InvalidInput(_("This link is not valid."), field="token") from None
    if not isinstance(payload, dict):
        raise InvalidInput(_("This link is not valid."), field="token")
    return payload


# --------------------------------------------------------------------------- compact id tokens
#
# The links in every mail (unsubscribe, open pixel, click) carry only a workspace and a recipient
# id and never expire, so they don't need itsdangerous' JSON, compression and timestamp: those
# cost ~35 µs per token, three tokens per recipient, a fifth of the runner's time at 1M mails.
# A compact token is ``<w>.<r>.<tag>``: decimal ids without leading zeros and a 12-byte tag,
# base64url (16 characters, no spare bits, so an edited token never decodes to the same bytes).
#
# The three tags of a recipient are three slices of ONE HMAC-SHA512 of ``<w>.<r>`` (bytes 0-11
# unsubscribe, 12-23 open, 24-35 click).  Slices of a MAC are independent pseudorandom values,
# so an open token (which image proxies see) still tells nothing about the unsubscribe tag,
# and the runner computes one MAC per recipient instead of three (signing was a twelfth of
# the runner's time under the interpreter lock).  Tags signed the earlier way (HMAC-SHA256
# under a key per purpose) and tokens of the itsdangerous format keep working: mail already
# sent carries them.

_COMPACT = re.compile(r"(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})\.([A-Za-z0-9_-]{16})")
#: The purposes whose tags are slices of the recipient's one MAC, in slice order.
LINK_PURPOSES = ("unsubscribe", "open", "click")
_TAG_CHARS = 16  # base64 of 12 bytes


@functools.lru_cache(maxsize=64)
def _purpose_key(secret: str, purpose: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return hmac.new(secret.encode(), (SALT_PREFIX + purpose).encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=16)
def _links_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), (SALT_PREFIX + "links").encode(), hashlib.sha256).digest()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _sign(key: bytes, signed: str) -> str:
    digest = hmac.digest(key, signed.encode(), "sha256")  # one-shot C path
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def _mac(secret: str, purpose: str, workspace_id: int, recipient_id: int) -> str:
    """The earlier tag: HMAC-SHA256 under the purpose's key (still accepted)."""
    return _sign(_purpose_key(secret, purpose), f"{workspace_id}.{recipient_id}")


def _link_tag(secret: str, purpose: str, workspace_id: int, recipient_id: int) -> str:
    """The purpose's slice of the recipient's one HMAC-SHA512."""
    index = LINK_PURPOSES.index(purpose)
    digest = hmac.digest(_links_key(secret), f"{workspace_id}.{recipient_id}".encode(), "sha512")
    return base64.urlsafe_b64encode(digest[12 * index : 12 * index + 12]).decode("ascii")


def make_id_token(secret: str, purpose: str, workspace_id: int, recipient_id: int) -> str:
    """The compact signed token of one recipient for one purpose."""
    w, r = int(workspace_id), int(recipient_id)
    tag = _link_tag(secret, purpose, w, r) if purpose in LINK_PURPOSES else _mac(secret, purpose, w, r)
    return f"{w}.{r}.{tag}"


def link_token_maker(settings: Settings, workspace_id: int) -> Callable[[int], tuple[str, str, str]]:
    """``recipient id -> (unsubscribe, open, click)`` tokens for many recipients of one
    workspace: one keyed MAC copied per recipient (the key's pad blocks are hashed once)."""
    keyed = hmac.new(_links_key(settings.token_secret), digestmod=hashlib.sha512)
    prefix = f"{int(workspace_id)}."
    n = _TAG_CHARS

    def make(recipient_id: int) -> tuple[str, str, str]:
        signed = f"{prefix}{int(recipient_id)}"
        mac = keyed.copy()
        mac.update(signed.encode())
        tags = binascii.b2a_base64(mac.digest()[:36], newline=False).translate(_URLSAFE).decode()
        return f"{signed}.{tags[:n]}", f"{signed}.{tags[n : 2 * n]}", f"{signed}.{tags[2 * n :]}"

    return make


def read_id_token(secret: str, purpose: str, token: str) -> tuple[int, int]:
    """``(workspace_id, recipient_id)`` of a valid token for ``purpose`` (compact or older format)."""
    match = _COMPACT.fullmatch(token or "")
    if match is None:
        return _ids(read_token(secret, purpose, token))
    workspace_id, recipient_id = int(match.group(1)), int(match.group(2))
    tag = match.group(3)
    current = purpose in LINK_PURPOSES and hmac.compare_digest(
        tag, _link_tag(secret, purpose, workspace_id, recipient_id)
    )
    if not current and not hmac.compare_digest(tag, _mac(secret, purpose, workspace_id, recipient_id)):
        raise InvalidInput(_("This link is not valid."), field="token")
    return workspace_id, recipient_id


def unsubscribe_token(settings: Settings, workspace_id: int, recipient_id: int) -> str:
    return make_id_token(settings.token_secret, "unsubscribe", workspace_id, recipient_id)


def unsubscribe_url(settings: Settings, workspace_id: int, recipient_id: int) -> str:
    """The absolute one-click unsubscribe link of one campaign recipient."""
    token = unsubscribe_token(settings, workspace_id, recipient_id)
    return f"{settings.public_base_url}{settings.public_url_prefix}/u/{token}"


def read_unsubscribe(settings: Settings, token: str) -> tuple[int, int]:
    """``(workspace_id, recipient_id)`` of an unsubscribe token."""
    return read_id_token(settings.token_secret, "unsubscribe", token)


def _ids(payload: dict[str, Any]) -> tuple[int, int]:
    workspace_id, recipient_id = payload.get("w"), payload.get("r")
    if type(workspace_id) is not int or type(recipient_id) is not int:
        raise InvalidInput(_("This link is not valid."), field="token")
    return workspace_id, recipient_id


def open_token(settings: Settings, workspace_id: int, recipient_id: int) -> str:
    return make_id_token(settings.token_secret, "open", workspace_id, recipient_id)


def click_token(settings: Settings, workspace_id: int, recipient_id: int) -> str:
    return make_id_token(settings.token_secret, "click", workspace_id, recipient_id)


def read_open(settings: Settings, token: str) -> tuple[int, int]:
    """``(workspace_id, recipient_id)`` of an open-pixel token."""
    return read_id_token(settings.token_secret, "open", token)


def read_click(settings: Settings, token: str) -> tuple[int, int]:
    """``(workspace_id, recipient_id)`` of a click token (the link id travels beside it)."""
    return read_id_token(settings.token_secret, "click", token)


def public_base(settings: Settings) -> str:
    """``https://host/m``: what every public link starts with."""
    return f"{settings.public_base_url}{settings.public_url_prefix}"


def open_url_template(settings: Settings, placeholder: str) -> str:
    """The pixel URL with ``%placeholder%`` where the recipient's open token goes."""
    return f"{public_base(settings)}/o/%{placeholder}%.gif"


def click_url_template(settings: Settings, link_id: int, placeholder: str) -> str:
    """A tracked link's URL with ``%placeholder%`` where the recipient's click token goes."""
    return f"{public_base(settings)}/c/{int(link_id)}/%{placeholder}%"


# --------------------------------------------------------------------------- links of a campaign


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def register_links(
    session: Session, workspace_id: int, campaign_id: int, urls: Iterable[str]
) -> dict[str, int]:
    """``{url: TrackedLink id}`` for a campaign's links, inserting the missing ones.  No commit.

    ``INSERT ... ON CONFLICT DO NOTHING`` on ``(campaign_id, url_hash)``: two workers compiling
    the same content at once end up with the same ids.
    """
    from .models import TrackedLink, utcnow

    wanted = {url_hash(u): u for u in urls}
    if not wanted:
        return {}
    make_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    for digest, url in wanted.items():
        session.execute(
            make_insert(TrackedLink)
            .values(
                workspace_id=workspace_id, campaign_id=campaign_id, url=url, url_hash=digest, created_at=now
            )
            .on_conflict_do_nothing(index_elements=["campaign_id", "url_hash"])
        )
    rows = session.execute(
        select(TrackedLink.id, TrackedLink.url_hash).where(
            TrackedLink.campaign_id == campaign_id, TrackedLink.url_hash.in_(list(wanted))
        )
    )
    return {wanted[digest]: link_id for link_id, digest in rows}


def tracked_content(
    session: Session, settings: Settings, *, workspace_id: int, campaign_id: int, content: Any
) -> Any:
    """A campaign's compiled content with its links registered and rewritten, plus the pixel."""
    from .campaigns import rendering

    ids = register_links(session, workspace_id, campaign_id, rendering.tracked_urls(content))
    return rendering.rewrite_links(
        content,
        ids,
        click_url=lambda link_id: click_url_template(settings, link_id, rendering.CLICK_PLACEHOLDER),
        open_url=open_url_template(settings, rendering.OPEN_PLACEHOLDER),
    )


def link_target(
    session: Session, workspace_id: int, recipient_id: int, link_id: int
) -> tuple[int, str] | None:
    """``(campaign_id, url)`` when ``link_id`` is a link of the recipient's campaign, else ``None``."""
    from .models import CampaignRecipient, TrackedLink

    row = session.execute(
        select(TrackedLink.campaign_id, TrackedLink.url)
        .join(CampaignRecipient, CampaignRecipient.campaign_id == TrackedLink.campaign_id)
        .where(
            TrackedLink.id == link_id,
            TrackedLink.workspace_id == workspace_id,
            CampaignRecipient.id == recipient_id,
            CampaignRecipient.workspace_id == workspace_id,
        )
    ).first()
    return (row.campaign_id, row.url) if row is not None else None


def list_unsubscribe_headers(settings: Settings, mailto: str | None, placeholder: str) -> dict[str, str]:
    """RFC 8058 headers with ``%placeholder%`` where each recipient's unsubscribe token goes.

    The https link is the one-click POST target; the ``mailto`` (reply-to mailbox, subject
    ``unsubscribe-<token>``) serves clients that only mail.  No percent-encoding in the mailto:
    ``%`` is the placeholder marker.
    """
    links = [f"<{public_base(settings)}/u/%{placeholder}%>"]
    if mailto and "@" in mailto and not any(c in mailto for c in "<>%?, \r\n"):
        links.append(f"<mailto:{mailto}?subject={mailto_subject('%' + placeholder + '%')}>")
    return {"List-Unsubscribe": ", ".join(links), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


# --------------------------------------------------------------------------- public actions


@dataclasses.dataclass(frozen=True, slots=True)
class RecipientRef:
    """Who a valid token is about (what the unsubscribe page shows)."""

    workspace_id: int
    recipient_id: int
    campaign_id: int
    email: str
    unsubscribed: bool


def _ref(session: Session, workspace_id: int, recipient_id: int) -> RecipientRef | None:
    from .models import CampaignRecipient

    row = session.execute(
        select(
            CampaignRecipient.campaign_id, CampaignRecipient.email, CampaignRecipient.unsubscribed_at
        ).where(CampaignRecipient.id == recipient_id, CampaignRecipient.workspace_id == workspace_id)
    ).first()
    if row is None:
        return None
    return RecipientRef(
        workspace_id, recipient_id, row.campaign_id, row.email, row.unsubscribed_at is not None
    )


def _hit_key(kind: str, recipient_id: int) -> str:
    return f"{kind}:{recipient_id}:{uuid.uuid4().hex}"


def record_open(
    session: Session,
    settings: Settings,
    token: str,
    *,
    method: str = "GET",
    user_agent: str | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """An open-pixel hit: True when the token names a recipient (the hit is then recorded).

    Raises :class:`InvalidInput` for a token that is not ours.  Does not commit.
    """
    from . import events
    from .models import utcnow

    workspace_id, recipient_id = read_open(settings, token)
    ref = _ref(session, workspace_id, recipient_id)
    if ref is None:
        return False
    events.record(
        session,
        workspace_id=workspace_id,
        type="open",
        dedupe_key=_hit_key("open", recipient_id),
        occurred_at=now or utcnow(),
        campaign_id=ref.campaign_id,
        recipient_id=recipient_id,
        data={
            "source": "pixel",
            "machine": is_machine_agent(method, user_agent),
            "ua": (user_agent or "")[:200],
        },
        settings=settings,
    )
    return True


def record_click(
    session: Session,
    settings: Settings,
    link_id: int,
    token: str,
    *,
    method: str = "GET",
    user_agent: str | None = None,
    now: dt.datetime | None = None,
) -> str | None:
    """A click: the stored target URL, or ``None`` when the link is not of this recipient's campaign.

    Raises :class:`InvalidInput` for a token that is not ours.  Does not commit.
    """
    from . import events
    from .models import utcnow

    workspace_id, recipient_id = read_click(settings, token)
    target = link_target(session, workspace_id, recipient_id, link_id)
    if target is None:
        return None
    campaign_id, url = target
    events.record(
        session,
        workspace_id=workspace_id,
        type="click",
        dedupe_key=_hit_key("click", recipient_id),
        occurred_at=now or utcnow(),
        campaign_id=campaign_id,
        recipient_id=recipient_id,
        data={
            "source": "link",
            "link_id": int(link_id),
            "machine": is_machine_agent(method, user_agent),
            "ua": (user_agent or "")[:200],
        },
        settings=settings,
    )
    return url


def peek_unsubscribe(session: Session, settings: Settings, token: str) -> RecipientRef | None:
    """The recipient of an unsubscribe token, changing nothing (the GET confirmation page)."""
    try:
        workspace_id, recipient_id = read_unsubscribe(settings, token)
    except InvalidInput:
        return None
    return _ref(session, workspace_id, recipient_id)


def unsubscribe(
    session: Session,
    settings: Settings,
    token: str,
    *,
    via: str = "page",
    now: dt.datetime | None = None,
) -> RecipientRef | None:
    """Suppress the token's recipient at once (reason ``unsubscribed``); idempotent.  No commit.

    One event per recipient (``unsubscribe:<recipient id>``): pressing twice, or the one-click
    POST followed by the footer link, changes nothing the second time.
    """
    from . import events
    from .models import utcnow

    ref = peek_unsubscribe(session, settings, token)
    if ref is None:
        return None
    events.record(
        session,
        workspace_id=ref.workspace_id,
        type="unsubscribe",
        dedupe_key=f"unsubscribe:{ref.recipient_id}",
        occurred_at=now or utcnow(),
        campaign_id=ref.campaign_id,
        recipient_id=ref.recipient_id,
        data={"source": "link", "via": via, "recipient": ref.email},
        settings=settings,
    )
    return ref


# --------------------------------------------------------------------------- machine heuristics

#: An open this soon after the send is a proxy prefetch (Apple MPP, gateways), not a reader.
MACHINE_OPEN_SECONDS = 5
#: A click this soon after the send is a link scanner.
MACHINE_CLICK_SECONDS = 5
#: Clicks by one recipient on different links this close together are a scanner's sweep.
BURST_SECONDS = 3

_MACHINE_AGENTS = re.compile(
    r"GoogleImageProxy|ggpht\.com|YahooMailProxy|Yahoo!? ?Slurp|Barracuda|Mimecast|Proofpoint"
    r"|SafeLinks|Symantec|Trend ?Micro|Forcepoint|MessageLabs|Sophos|FireEye|Cisco ?IronPort"
    r"|python-requests|python-urllib|aiohttp|Go-http-client|curl/|Wget|okhttp|Java/|libwww"
    r"|HeadlessChrome|PhantomJS|bot\b|crawler|spider|scanner",
    re.I,
)


def is_machine_agent(method: str, user_agent: str | None) -> bool:
    """Request-level signs of a machine: HEAD, no user agent, a known proxy or scanner."""
    if method.upper() == "HEAD":
        return True
    agent = (user_agent or "").strip()
    return not agent or bool(_MACHINE_AGENTS.search(agent))


def _seconds_since(sent_at: dt.datetime | None, at: dt.datetime) -> float | None:
    if sent_at is None:
        return None
    return (at - sent_at).total_seconds()


def is_machine_open(*, sent_at: dt.datetime | None, at: dt.datetime) -> bool:
    """Timing sign of a machine open (the request-level signs are checked by the endpoint)."""
    elapsed = _seconds_since(sent_at, at)
    return elapsed is not None and elapsed < MACHINE_OPEN_SECONDS


def is_machine_click(
    *, sent_at: dt.datetime | None, at: dt.datetime, other_link_clicks_within_burst: int
) -> bool:
    """Timing signs of a scanner's click (``other_link_clicks_within_burst``: see the docstring)."""
    elapsed = _seconds_since(sent_at, at)
    if elapsed is not None and elapsed < MACHINE_CLICK_SECONDS:
        return True
    return other_link_clicks_within_burst > 0


# --------------------------------------------------------------------------- unsubscribe by mail

_MAILTO_SUBJECT = re.compile(r"\bunsubscribe-([A-Za-z0-9_\-\.]{20,})")


def mailto_subject(token: str) -> str:
    """The subject of the ``mailto:`` unsubscribe in ``List-Unsubscribe`` (no percent signs)."""
    return f"unsubscribe-{token}"


def unsubscribe_from_subject(settings: Settings, subject: str) -> tuple[int, int] | None:
    """``(workspace_id, recipient_id)`` when a received mail is a ``List-Unsubscribe`` mailto.

    The reply handling calls this for each inbound mail; ``None`` means an ordinary reply.
    """
    match = _MAILTO_SUBJECT.search(subject or "")
    if not match:
        return None
    try:
        return read_unsubscribe(settings, match.group(1))
    except InvalidInput:
        return None


__all__ = [
    "BURST_SECONDS",
    "MACHINE_CLICK_SECONDS",
    "MACHINE_OPEN_SECONDS",
    "PURPOSES",
    "UNSUBSCRIBE_PLACEHOLDER",
    "RecipientRef",
    "click_token",
    "click_url_template",
    "is_machine_agent",
    "is_machine_click",
    "is_machine_open",
    "link_target",
    "list_unsubscribe_headers",
    "mailto_subject",
    "make_token",
    "open_token",
    "open_url_template",
    "peek_unsubscribe",
    "public_base",
    "read_click",
    "read_open",
    "read_token",
    "read_unsubscribe",
    "record_click",
    "record_open",
    "register_links",
    "tracked_content",
    "unsubscribe",
    "unsubscribe_from_subject",
    "unsubscribe_token",
    "unsubscribe_url",
    "url_hash",
]
