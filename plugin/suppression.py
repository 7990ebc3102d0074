"""The suppression list: addresses a workspace must never mail again, with why and where from.

Why a list of its own rather than a flag on contacts: suppression is about the *address*, not the
CRM record.  A contact can be deleted and re-imported, a host directory may hold the same address
twice, and bounces or unsubscribes arrive for addresses we only know from a campaign.  The audience
SQL anti-joins this table by email, and the runner re-checks it when it claims a batch, so an
unsubscribe that lands while a campaign runs still stops the next mail.

Addresses are stored normalized (the same spelling contacts use), so the join is a plain equality.
``add`` is idempotent (``INSERT ... ON CONFLICT DO NOTHING`` on both databases): webhooks are
retried by providers and the same address may bounce in two campaigns; the first reason wins.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import String, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import bulk_sql
from .errors import InvalidInput
from .i18n import _
from .models import Suppression
from .models.base import utcnow

#: Why an address is suppressed.  ``soft_bounce`` is recorded by the engagement handling when a
#: mailbox keeps soft-bouncing; the others come from webhooks, links, imports and admins.
REASONS = ("unsubscribed", "hard_bounce", "complaint", "invalid", "manual", "soft_bounce")

#: Rows per ``IN (...)`` list: well below SQLite's bound-parameter limit and PostgreSQL's comfort.
_CHUNK = 500


def normalize(email: str) -> str:
    """The stored spelling: trimmed and lower-cased, as contacts are stored.

    Deliberately not the validator's normalization: it rewrites punycode domains to Unicode, so
    a bounce reported for the address we sent would no longer match the recipient row.  Provider
    events report the address exactly as we sent it, which is the contact's stored spelling.
    """
    return (email or "").strip().strip("<>").strip().lower()


def add(
    session: Session,
    workspace_id: int,
    email: str,
    reason: str,
    *,
    source: str,
    campaign_id: int | None = None,
) -> bool:
    """Suppress ``email`` in the workspace; True if it was not suppressed before.  Does not commit."""
    if reason not in REASONS:
        raise InvalidInput(f"unknown suppression reason {reason!r}", field="reason")
    address = normalize(email)
    if not address:
        raise InvalidInput(_("the address is empty"), field="email")
    values = {
        "workspace_id": workspace_id,
        "email": address,
        "reason": reason,
        "source": source[:120],
        "campaign_id": campaign_id,
        "created_at": utcnow(),
    }
    make_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = Suppression.__table__
    statement = (
        make_insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["workspace_id", "email"])
        .returning(table.c.id)
    )
    # RETURNING says whether a row was written (rowcount is -1 through the ORM session).
    return session.execute(statement).first() is not None


def remove(session: Session, workspace_id: int, email: str) -> bool:
    """Lift the suppression of ``email``; True if there was one.  Does not commit."""
    result = session.execute(
        delete(Suppression).where(
            Suppression.workspace_id == workspace_id, Suppression.email == normalize(email)
        )
    )
    return bool(result.rowcount)


def suppressed_among(session: Session, workspace_id: int, emails: Iterable[str]) -> set[str]:
    """Which of ``emails`` are suppressed, spelled as given (the runner's re-check at claim time).

    The runner passes stored recipient addresses once per batch; callers get their own spelling
    back.
    """
    by_normal: dict[str, list[str]] = {}
    for email in emails:
        by_normal.setdefault(normalize(email), []).append(email)
    found: set[str] = set()
    keys = list(by_normal)
    postgres = session.get_bind().dialect.name == "postgresql"
    for start in range(0, len(keys), _CHUNK):
        part = keys[start : start + _CHUNK]
        among = bulk_sql.one_of(Suppression.email, "emails", String, postgres=postgres, values=part)
        hits = session.scalars(
            select(Suppression.email).where(Suppression.workspace_id == workspace_id, among)
        )
        for hit in hits:
            found.update(by_normal[hit])
    return found


def is_suppressed(session: Session, workspace_id: int, email: str) -> bool:
    return (
        session.scalar(
            select(Suppression.id).where(
                Suppression.workspace_id == workspace_id, Suppression.email == normalize(email)
            )
        )
        is not None
    )
