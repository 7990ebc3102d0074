"""The campaign state machine, enforced in one function.

Every status change of a campaign goes through :func:`transition`, so the rules live in one
table and an impossible move (resuming a cancelled campaign, editing a running one) raises
``InvalidTransition`` with a message a user can read, instead of leaving a half-changed row.
The change is a conditional UPDATE on the current status, so two workers (or a user's click and
the runner) cannot both move the same campaign from the same state.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from ..errors import InvalidTransition
from ..i18n import _, _l
from ..models import Campaign, utcnow

DRAFT = "draft"
AWAITING_APPROVAL = "awaiting_approval"
SCHEDULED = "scheduled"
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
CANCELLED = "cancelled"
FAILED = "failed"
MISSED = "missed"

STATUSES = (DRAFT, AWAITING_APPROVAL, SCHEDULED, RUNNING, PAUSED, COMPLETED, CANCELLED, FAILED, MISSED)
#: States in which nothing will ever be sent again.
FINAL = frozenset({COMPLETED, CANCELLED, FAILED})
#: States in which the campaign's content and audience may still be edited.
EDITABLE = frozenset({DRAFT, AWAITING_APPROVAL, SCHEDULED, MISSED})

#: Allowed moves: from -> set of targets.
TRANSITIONS: dict[str, frozenset[str]] = {
    DRAFT: frozenset({AWAITING_APPROVAL, SCHEDULED, RUNNING, CANCELLED}),
    AWAITING_APPROVAL: frozenset({DRAFT, SCHEDULED, RUNNING, CANCELLED}),
    SCHEDULED: frozenset({DRAFT, RUNNING, MISSED, CANCELLED, AWAITING_APPROVAL}),
    MISSED: frozenset({SCHEDULED, RUNNING, DRAFT, CANCELLED}),
    RUNNING: frozenset({PAUSED, COMPLETED, CANCELLED, FAILED}),
    PAUSED: frozenset({RUNNING, CANCELLED, COMPLETED, FAILED}),
    COMPLETED: frozenset(),
    CANCELLED: frozenset(),
    FAILED: frozenset({RUNNING}),
}

#: Why a campaign is paused: code -> text shown to users.  ``quota``/``balance``/``cap``/
#: ``provider`` pauses end by themselves when the cause goes away; ``user`` and ``template``
#: pauses wait for a person.
PAUSE_REASONS = {
    "user": _l("Paused by a user."),
    "quota": _l("Daily quota used up; resumes automatically tomorrow at 00:00 (Beijing time)."),
    "balance": _l("Balance insufficient; resumes when the balance is topped up."),
    "cap": _l("Your daily sending allowance is used up; resumes tomorrow at 00:00 (Beijing time)."),
    "provider": _l("The provider kept failing; paused after several failed batches in a row."),
    "template": _l("SendCloud requires an approved template for this content; submit it for review."),
    "not_synced": _l("Balance and quota could not be read from the provider; retrying."),
    "account": _l("The sending account is not usable (check its credentials)."),
}
#: Pauses the runner lifts by itself.
AUTO_RESUME_REASONS = frozenset({"quota", "balance", "cap", "not_synced"})

_STATUS_LABELS = {
    DRAFT: _l("Draft"),
    AWAITING_APPROVAL: _l("Awaiting approval"),
    SCHEDULED: _l("Scheduled"),
    RUNNING: _l("Sending"),
    PAUSED: _l("Paused"),
    COMPLETED: _l("Completed"),
    CANCELLED: _l("Cancelled"),
    FAILED: _l("Failed"),
    MISSED: _l("Missed its time"),
}


def status_label(status: str) -> str:
    return str(_STATUS_LABELS.get(status, status))


def pause_reason_text(reason: str | None, detail: str | None = None) -> str:
    """The sentence users see for a pause; ``detail`` (provider message) is appended."""
    if not reason:
        return ""
    text = str(PAUSE_REASONS.get(reason, reason))
    return f"{text} {detail}" if detail else text


def can_transition(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def transition(
    session: Session,
    campaign: Campaign,
    target: str,
    *,
    reason: str | None = None,
    detail: str | None = None,
    retry_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Move ``campaign`` to ``target`` if the rules allow it and nobody moved it first.

    Does not commit (the caller decides the transaction). Raises ``InvalidTransition`` when the
    move is not allowed or the row's status changed under us.
    """
    now = now or utcnow()
    current = campaign.status
    if target not in STATUSES:
        raise InvalidTransition(_("Unknown campaign status %(status)s.", status=target))
    if not can_transition(current, target):
        raise InvalidTransition(
            _(
                "A campaign that is %(current)s cannot become %(target)s.",
                current=status_label(current),
                target=status_label(target),
            )
        )
    values: dict[str, object] = {"status": target, "updated_at": now}
    if target == PAUSED:
        values.update(pause_reason=reason or "user", pause_detail=detail, retry_at=retry_at)
    else:
        values.update(pause_reason=None, pause_detail=None)
        if target != RUNNING:
            values["retry_at"] = None
    if target == RUNNING and campaign.started_at is None:
        values["started_at"] = now
    if target in (COMPLETED, FAILED):
        values["completed_at"] = now
    if target == FAILED:
        values["last_error"] = detail
    elif target == SCHEDULED:  # scheduled again after a fix: an old reason would mislead
        values["last_error"] = None
    if target == CANCELLED:
        values["cancelled_at"] = now
    moved = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.status == current)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        session.refresh(campaign)
        raise InvalidTransition(
            _(
                "The campaign changed meanwhile (it is now %(status)s); reload and try again.",
                status=status_label(campaign.status),
            )
        )
    for key, value in values.items():  # the row is written; keep the object in step, unflushed
        set_committed_value(campaign, key, value)
