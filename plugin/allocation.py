"""How an admin divides the provider's daily quota: a share kept for trigger mail, and daily caps
per user or per team (the "master/sub-account allocation" users know from other products).

Why here and not in the ledger: the ledger (``quota.py``) only knows limits. This module turns an
admin's intent ("keep 10 % for order confirmations", "Li Lei may send 2,000 a day") into the
numbers the ledger and the send gate use: :func:`trigger_share` for the split of the account's
ledger (``quota_sync``), :func:`cap_for` for the cap ledger the gate reserves against.

Rows live in :class:`~plugin.models.QuotaAllocation` (unique per workspace, scope and subject):
``scope="trigger"`` with ``subject=""`` holds the share (``percent`` or ``daily_limit``);
``scope="user"``/``"team"`` hold caps in ``daily_limit``. Services flush, the caller commits.
"""

from __future__ import annotations

import dataclasses
import math

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import InvalidInput, NotFound
from .i18n import _
from .models import Campaign, QuotaAllocation

TRIGGER = "trigger"
CAP_SCOPES = ("user", "team")
#: Longest user id or team name (the column is 120 characters).
SUBJECT_MAX = 120
#: No provider sells more than this per day; larger numbers are typing mistakes.
LIMIT_MAX = 100_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Share:
    """The trigger-mail share as the admin entered it: exactly one of the two is set."""

    percent: float | None
    daily_limit: int | None

    def amount(self, daily_quota: int) -> int:
        """Mails of ``daily_quota`` kept for trigger mail (rounded down, never above the quota)."""
        quota = max(0, int(daily_quota))
        if self.percent is not None:
            return min(quota, math.floor(quota * self.percent / 100))
        return min(quota, max(0, self.daily_limit or 0))


def owner_key(scope: str, subject: str) -> str:
    """The ledger owner of a cap: ``user:<id>`` or ``team:<name>``."""
    return f"{scope}:{subject}"


# --------------------------------------------------------------------------- trigger share


def get_share(session: Session, workspace_id: int) -> Share | None:
    row = _share_row(session, workspace_id)
    if row is None:
        return None
    return Share(row.percent, row.daily_limit)


def _share_row(session: Session, workspace_id: int) -> QuotaAllocation | None:
    return session.scalar(
        select(QuotaAllocation).where(
            QuotaAllocation.workspace_id == workspace_id, QuotaAllocation.scope == TRIGGER
        )
    )


def set_share(
    session: Session, workspace_id: int, *, percent: float | None = None, daily_limit: int | None = None
) -> Share:
    """Keep ``percent`` % or ``daily_limit`` mails of each day's quota for trigger mail.

    Exactly one must be given; 0 is allowed and means "no share" (the row is removed).
    """
    if (percent is None) == (daily_limit is None):
        raise InvalidInput(_("Give the share either as a percentage or as a number of mails."), field="value")
    if percent is not None:
        if isinstance(percent, bool) or not math.isfinite(float(percent)) or not 0 <= float(percent) <= 100:
            raise InvalidInput(_("A percentage must be between 0 and 100."), field="value")
        percent = float(percent)
    if daily_limit is not None:
        _check_limit(daily_limit, field="value")
    row = _share_row(session, workspace_id)
    if (percent or 0) == 0 and (daily_limit or 0) == 0:
        if row is not None:
            session.delete(row)
            session.flush()
        return Share(None, None)
    if row is None:
        row = QuotaAllocation(workspace_id=workspace_id, scope=TRIGGER, subject="")
        session.add(row)
    row.percent, row.daily_limit = percent, daily_limit
    session.flush()
    return Share(percent, daily_limit)


def trigger_share(session: Session, workspace_id: int, daily_quota: int) -> int:
    """How many of ``daily_quota`` mails are kept for trigger mail today (0 without a share)."""
    share = get_share(session, workspace_id)
    return share.amount(daily_quota) if share is not None else 0


# --------------------------------------------------------------------------- caps


def list_caps(session: Session, workspace_id: int) -> list[QuotaAllocation]:
    return list(
        session.scalars(
            select(QuotaAllocation)
            .where(QuotaAllocation.workspace_id == workspace_id, QuotaAllocation.scope.in_(CAP_SCOPES))
            .order_by(QuotaAllocation.scope.desc(), QuotaAllocation.subject)
        )
    )


def get_cap(session: Session, workspace_id: int, cap_id: int) -> QuotaAllocation:
    row = session.scalar(
        select(QuotaAllocation).where(
            QuotaAllocation.id == cap_id,
            QuotaAllocation.workspace_id == workspace_id,
            QuotaAllocation.scope.in_(CAP_SCOPES),
        )
    )
    if row is None:
        raise NotFound(_("This cap does not exist (any more)."))
    return row


def add_cap(
    session: Session, workspace_id: int, *, scope: str, subject: str, daily_limit: int
) -> QuotaAllocation:
    """A new daily cap for a user id or a team name; one per subject."""
    scope, subject = _check_scope(scope), _check_subject(subject)
    _check_limit(daily_limit, field="daily_limit")
    _refuse_duplicate(session, workspace_id, scope, subject)
    row = QuotaAllocation(
        workspace_id=workspace_id, scope=scope, subject=subject, daily_limit=int(daily_limit)
    )
    _flush_unique(session, row, scope, subject)
    return row


def update_cap(
    session: Session, workspace_id: int, cap_id: int, *, scope: str, subject: str, daily_limit: int
) -> QuotaAllocation:
    row = get_cap(session, workspace_id, cap_id)
    scope, subject = _check_scope(scope), _check_subject(subject)
    _check_limit(daily_limit, field="daily_limit")
    if (scope, subject) != (row.scope, row.subject):
        _refuse_duplicate(session, workspace_id, scope, subject)
    row.scope, row.subject, row.daily_limit = scope, subject, int(daily_limit)
    _flush_unique(session, row, scope, subject)
    return row


def remove_cap(session: Session, workspace_id: int, cap_id: int) -> None:
    session.delete(get_cap(session, workspace_id, cap_id))
    session.flush()


def cap_for(
    session: Session, workspace_id: int, owner_id: str | None, team: str | None
) -> tuple[str, int] | None:
    """The cap that applies to mail of ``owner_id`` (in ``team``): ``(ledger owner, daily limit)``.

    A user's own cap wins over the team's, so an admin can give one person more (or less) than
    the rest of the team. ``None`` when neither has a cap.
    """
    candidates = [("user", str(owner_id))] if owner_id not in (None, "") else []
    if team:
        candidates.append(("team", str(team)))
    for scope, subject in candidates:
        limit = session.scalar(
            select(QuotaAllocation.daily_limit).where(
                QuotaAllocation.workspace_id == workspace_id,
                QuotaAllocation.scope == scope,
                QuotaAllocation.subject == subject,
            )
        )
        if limit is not None:
            return owner_key(scope, subject), int(limit)
    return None


def known_owners(session: Session, workspace_id: int) -> tuple[list[str], list[str]]:
    """User ids and team names seen on this workspace's campaigns (suggestions for the form)."""
    users = session.scalars(
        select(Campaign.owner_id)
        .distinct()
        .where(Campaign.workspace_id == workspace_id, Campaign.owner_id.is_not(None), Campaign.owner_id != "")
    ).all()
    teams = session.scalars(
        select(Campaign.team)
        .distinct()
        .where(Campaign.workspace_id == workspace_id, Campaign.team.is_not(None), Campaign.team != "")
    ).all()
    return sorted(users), sorted(teams)


# --------------------------------------------------------------------------- validation


def _check_scope(scope: str) -> str:
    if scope not in CAP_SCOPES:
        raise InvalidInput(_("Choose whether the cap is for a user or a team."), field="scope")
    return scope


def _check_subject(subject: str) -> str:
    subject = " ".join((subject or "").split())
    if not subject:
        raise InvalidInput(_("Enter the user id or the team name."), field="subject")
    if len(subject) > SUBJECT_MAX or "\x00" in subject:
        raise InvalidInput(_("At most %(n)s characters.", n=SUBJECT_MAX), field="subject")
    return subject


def _check_limit(value: int, *, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LIMIT_MAX:
        raise InvalidInput(
            _("Enter a whole number of mails from 0 to %(max)s.", max=format(LIMIT_MAX, ",")), field=field
        )


def _refuse_duplicate(session: Session, workspace_id: int, scope: str, subject: str) -> None:
    exists = session.scalar(
        select(QuotaAllocation.id).where(
            QuotaAllocation.workspace_id == workspace_id,
            QuotaAllocation.scope == scope,
            QuotaAllocation.subject == subject,
        )
    )
    if exists is not None:
        raise InvalidInput(_duplicate_message(scope, subject), field="subject")


def _duplicate_message(scope: str, subject: str) -> str:
    if scope == "user":
        return _("User %(subject)s already has a cap; edit it instead.", subject=subject)
    return _("Team %(subject)s already has a cap; edit it instead.", subject=subject)


def _flush_unique(session: Session, row: QuotaAllocation, scope: str, subject: str) -> None:
    """Flush, turning a unique violation (two admins adding the same cap at once) into a field error."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise InvalidInput(_duplicate_message(scope, subject), field="subject") from exc


__all__ = [
    "CAP_SCOPES",
    "Share",
    "add_cap",
    "cap_for",
    "get_cap",
    "get_share",
    "known_owners",
    "list_caps",
    "owner_key",
    "remove_cap",
    "set_share",
    "trigger_share",
    "update_cap",
]
