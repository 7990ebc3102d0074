"""The suppression list as admins see it: search, add and remove by hand, import, export.

:mod:`plugin.suppression` is the engine's side (add/remove/check one address, used by webhooks,
links and the runner); this module is the page's side.  An import is all-or-nothing: a list
with one bad line is refused whole, with every bad line named, so an admin never has to find
out which half of a file went in.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import suppression
from .addresses import normalize_email
from .errors import InvalidInput
from .i18n import _
from .importing import ImportFileError, decode
from .models import Campaign, Suppression, utcnow

SORTS = {"email": Suppression.email, "reason": Suppression.reason, "created_at": Suppression.created_at}
#: Largest import: a file of this many bytes / addresses is refused before parsing.
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_IMPORT_LINES = 100_000
#: First-line cells that name the column rather than being an address (skipped as a header).
HEADER_NAMES = frozenset(
    {"email", "e-mail", "mail", "address", "email address", "邮箱", "邮件地址", "电子邮件", "地址"}
)
#: Rows of the export read per statement.
CHUNK = 2000


def reason_labels() -> dict[str, str]:
    return {
        "unsubscribed": _("Unsubscribed"),
        "hard_bounce": _("Hard bounce"),
        "complaint": _("Spam complaint"),
        "invalid": _("Invalid address"),
        "manual": _("Added by hand"),
        "soft_bounce": _("Repeated soft bounces"),
    }


def source_label(source: str) -> str:
    """Where an entry came from, in the user's words; the stored code (``link``, ``webhook``,
    ``admin:<user>``, ``import:<user>``) stays the value exports carry."""
    kind, _sep, who = (source or "").partition(":")
    if kind == "link":
        return _("Unsubscribed from a mail")
    if kind == "webhook":
        return _("Provider event")
    if kind == "admin":
        return _("Added on this page by user %(user)s", user=who) if who else _("Added on this page")
    if kind == "import":
        return _("File import by user %(user)s", user=who) if who else _("File import")
    return source or "—"


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    email: str
    reason: str
    source: str
    campaign_id: int | None
    campaign_name: str | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class EntryPage:
    items: list[Entry]
    total: int
    page: int
    pages: int


def _where(workspace_id: int, q: str, reason: str) -> list[Any]:
    conditions: list[Any] = [Suppression.workspace_id == workspace_id]
    if q:
        needle = q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(Suppression.email.like(f"%{needle}%", escape="\\"))
    if reason:
        conditions.append(Suppression.reason == reason)
    return conditions


def _entries(query: Any, session: Session) -> list[Entry]:
    rows = session.execute(
        query.add_columns(Campaign.name).outerjoin(
            Campaign,
            (Campaign.id == Suppression.campaign_id) & (Campaign.workspace_id == Suppression.workspace_id),
        )
    ).all()
    return [Entry(s.id, s.email, s.reason, s.source, s.campaign_id, name, s.created_at) for s, name in rows]


def list_entries(
    session: Session,
    workspace_id: int,
    *,
    q: str = "",
    reason: str = "",
    sort: str = "created_at",
    order: str = "desc",
    page: int = 1,
    per_page: int = 50,
) -> EntryPage:
    where = _where(workspace_id, q, reason)
    total = session.scalar(select(func.count()).select_from(Suppression).where(*where)) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    column = SORTS.get(sort, Suppression.created_at)
    query = (
        select(Suppression)
        .where(*where)
        .order_by(column.asc() if order == "asc" else column.desc(), Suppression.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    return EntryPage(_entries(query, session), total, page, pages)


def reason_counts(session: Session, workspace_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Suppression.reason, func.count())
        .where(Suppression.workspace_id == workspace_id)
        .group_by(Suppression.reason)
    )
    return {reason: int(n) for reason, n in rows}


def add_by_hand(session: Session, workspace_id: int, email: str, *, by: str) -> str:
    """Suppress one address an admin typed; returns the stored spelling.  Does not commit.

    :raises InvalidInput: (field ``email``) not an address, or already on the list.
    """
    address = _valid(email)
    existing = session.scalar(
        select(Suppression.reason).where(
            Suppression.workspace_id == workspace_id, Suppression.email == address
        )
    )
    if existing is not None:
        raise InvalidInput(
            _(
                "%(email)s is already on the list (%(reason)s).",
                email=address,
                reason=reason_labels().get(existing, existing),
            ),
            field="email",
        )
    suppression.add(session, workspace_id, address, "manual", source=f"admin:{by}"[:120])
    return address


def remove(session: Session, workspace_id: int, email: str) -> bool:
    """Lift a suppression (the address may be mailed again).  Does not commit."""
    return suppression.remove(session, workspace_id, email)


def _valid(raw: str) -> str:
    try:
        return suppression.normalize(normalize_email(raw))
    except InvalidInput as exc:
        raise InvalidInput(
            _("Not a valid email address: %(detail)s", detail=str(exc)), field="email"
        ) from exc


# -- import --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LineError:
    line: int
    text: str
    message: str


class ImportRefused(InvalidInput):
    """The file was refused whole; ``errors`` names every bad line."""

    def __init__(self, message: str, errors: list[LineError]) -> None:
        super().__init__(message, field="file")
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class ImportResult:
    added: int
    already: int


def parse_addresses(data: bytes) -> list[str]:
    """The addresses of a CSV or TXT file, one per line (the first column of a CSV), validated.

    A first line naming the column ("email", "邮箱", anything without an ``@``) is skipped;
    blank lines are ignored; the same address twice counts once.

    :raises ImportRefused: with every bad line, when any line is not an address.
    """
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportRefused(_("The file is larger than %(n)s MB.", n=MAX_IMPORT_BYTES // (1024 * 1024)), [])
    try:
        text, _encoding = decode(data)
    except ImportFileError as exc:
        raise ImportRefused(str(exc), []) from exc
    lines = text.splitlines()
    if len(lines) > MAX_IMPORT_LINES:
        raise ImportRefused(_("At most %(n)s lines per import.", n=MAX_IMPORT_LINES), [])
    found: dict[str, None] = {}
    errors: list[LineError] = []
    for number, line in enumerate(lines, start=1):
        cell = _first_cell(line)
        if not cell:
            continue
        if number == 1 and (cell.strip().lower() in HEADER_NAMES or "@" not in cell):
            continue  # a header line (whatever it is called, in whatever encoding it came)
        try:
            found[_valid(cell)] = None
        except InvalidInput as exc:
            errors.append(LineError(number, line[:200], str(exc)))
    if errors:
        raise ImportRefused(
            _("%(n)s lines are not valid addresses; nothing was imported.", n=len(errors)), errors
        )
    if not found:
        raise ImportRefused(_("The file holds no addresses."), [])
    return list(found)


def _first_cell(line: str) -> str:
    for delimiter in (",", ";", "\t"):
        if delimiter in line:
            row = next(csv.reader(io.StringIO(line), delimiter=delimiter), [""])
            return (row[0] if row else "").strip()
    return line.strip()


def import_addresses(session: Session, workspace_id: int, data: bytes, *, by: str) -> ImportResult:
    """Suppress every address of the file (reason ``manual``, source ``import:<user>``).  Does not commit.

    Addresses already on the list keep their first reason.  New ones go in with one
    ``INSERT ... ON CONFLICT DO NOTHING`` per chunk (a 100,000-line file is a few statements).

    :raises ImportRefused: the file is refused whole (see :func:`parse_addresses`).
    """
    addresses = parse_addresses(data)
    already = suppression.suppressed_among(session, workspace_id, addresses)
    new = [a for a in addresses if a not in already]
    now = utcnow()
    source = f"import:{by}"[:120]
    make_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(new), 500):
        rows = [
            {
                "workspace_id": workspace_id,
                "email": a,
                "reason": "manual",
                "source": source,
                "created_at": now,
            }
            for a in new[start : start + 500]
        ]
        session.execute(
            make_insert(Suppression)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["workspace_id", "email"])
        )
    return ImportResult(len(new), len(already))


# -- export --------------------------------------------------------------------------------------
def export_rows(
    session: Session, workspace_id: int, *, q: str = "", reason: str = "", tz: dt.tzinfo
) -> Iterator[list[Any]]:
    """Header, then every matching entry with reason, source, campaign and time (in ``tz``)."""
    labels = reason_labels()
    yield [_("Email"), _("Reason"), _("Reason code"), _("Source"), _("Campaign"), _("Time")]
    where = _where(workspace_id, q, reason)
    last = 0
    while True:
        query = select(Suppression).where(*where, Suppression.id > last).order_by(Suppression.id).limit(CHUNK)
        entries = _entries(query, session)
        if not entries:
            return
        for e in entries:
            yield [
                e.email,
                labels.get(e.reason, e.reason),
                e.reason,
                e.source,
                e.campaign_name or "",
                e.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            ]
        last = entries[-1].id
