"""The daily-quota ledger: reserve before sending, settle with the provider's answer.

Why a ledger and not a counter in memory: several worker processes (threads, Celery workers on
other machines) send for the same provider account, and SendCloud refuses mail beyond the
account's daily quota. Each worker therefore *reserves* quota on one shared row
(:class:`~plugin.models.QuotaLedger`, one per account, channel and provider day) before calling the
provider, and afterwards *commits* what the provider accepted or *releases* the rest.

Guarantees:

* ``reserve`` grants with ONE conditional UPDATE (``reserved + g`` only where
  ``limit - reserved - committed >= g``), so concurrent workers can never be granted more than the
  limit in total, on PostgreSQL (row lock + re-check of the WHERE clause under READ COMMITTED) and
  on SQLite (a single writer).
* Every reservation carries a lease. A worker killed while holding one does not lose the quota for
  the rest of the day: the next ``reserve`` on that ledger expires the stale reservation and
  returns its amount.
* Settling is idempotent: the status column moves ``held -> committed | released`` with a
  conditional UPDATE, so settling twice (a retried task) changes nothing the second time.
* The provider day is the provider's calendar day (Asia/Shanghai for SendCloud), whatever the
  server's time zone, so counters roll over once, at the provider's midnight.

Lock order (to keep PostgreSQL free of deadlocks): reservation rows in ascending id, then the
ledger row; never a reservation row after the ledger row in the same transaction (new rows are
inserted, which waits on nothing).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Integer, String, bindparam, case, func, literal, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import bulk_sql
from .models import AccountSnapshot, ProviderAccount, QuotaLedger, QuotaReservation, utcnow
from .providers.base import AccountInfo

#: SendCloud counts its daily quota on Beijing time.
PROVIDER_TZ = "Asia/Shanghai"
#: Default lease of a reservation: long enough for one batch call with retries.
LEASE_SECONDS = 900
#: How often ``reserve`` re-reads and retries when another worker took quota in between.
MAX_ATTEMPTS = 50

HELD = "held"
COMMITTED = "committed"
RELEASED = "released"
EXPIRED = "expired"

CHANNELS = ("batch", "trigger")

#: Built once: a reservation row is inserted per grant (Core, no unit of work).
_INSERT_RESERVATION = QuotaReservation.__table__.insert().returning(QuotaReservation.__table__.c.id)


@dataclasses.dataclass(frozen=True, slots=True)
class Reservation:
    """Quota granted to one worker: ``amount`` may be less than what was asked."""

    id: int
    ledger_id: int
    amount: int
    lease_until: dt.datetime
    batch_id: int | None = None


def provider_day(now: dt.datetime, tz: str = PROVIDER_TZ) -> dt.date:
    """The provider's calendar day at the instant ``now``.

    A naive datetime is refused: it would be read in the server's local time zone, which is
    exactly the mistake that makes counters roll over at the wrong hour.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("provider_day needs a timezone-aware datetime")
    return now.astimezone(ZoneInfo(tz)).date()


def ensure_ledger(
    session: Session,
    workspace_id: int,
    account_id: int,
    channel: str,
    day: dt.date,
    limit: int,
    *,
    owner: str = "",
    commit: bool = True,
) -> int:
    """The id of the ledger row for (account, channel, owner, day), created with ``limit`` if needed.

    ``owner`` is ``""`` for the account's own ledger and ``user:<id>``/``team:<name>`` for the
    ledger of an allocation cap, which counts the same mail a second time against the cap.

    Safe when several workers create the same row at once: the insert does nothing on a
    conflict (PostgreSQL and SQLite), or a unique violation is caught elsewhere. An existing
    row keeps its limit (``reconcile`` is what changes limits). Commits, unless ``commit=False``
    (the send gate's one-transaction path; the insert then waits on nothing but a concurrent
    insert of the same row).
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown quota channel {channel!r}")
    existing = _ledger_id(session, account_id, channel, day, owner)
    if existing is not None:
        return existing
    values = {
        "workspace_id": workspace_id,
        "account_id": account_id,
        "channel": channel,
        "owner": owner,
        "day": day,
        "limit": max(0, int(limit)),
        "reserved": 0,
        "committed": 0,
    }
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        statement = dialect_insert(QuotaLedger).values(**values)
        conflict_columns = ["account_id", "channel", "owner", "day"]
        session.execute(statement.on_conflict_do_nothing(index_elements=conflict_columns))
        if commit:
            session.commit()
    else:  # pragma: no cover - other databases are not supported targets, but stay correct
        try:
            with session.begin_nested():
                session.execute(QuotaLedger.__table__.insert().values(**values))
            session.commit()
        except IntegrityError:
            session.rollback()
    ledger_id = _ledger_id(session, account_id, channel, day, owner)
    assert ledger_id is not None
    return ledger_id


def _ledger_id(session: Session, account_id: int, channel: str, day: dt.date, owner: str = "") -> int | None:
    return session.scalar(
        select(QuotaLedger.id).where(
            QuotaLedger.account_id == account_id,
            QuotaLedger.channel == channel,
            QuotaLedger.owner == owner,
            QuotaLedger.day == day,
        )
    )


def remaining(session: Session, ledger_id: int) -> int:
    """What can still be reserved on the ledger now (stale leases not yet expired count as held)."""
    row = session.execute(
        select(QuotaLedger.limit, QuotaLedger.reserved, QuotaLedger.committed).where(
            QuotaLedger.id == ledger_id
        )
    ).one()
    return max(0, row.limit - row.reserved - row.committed)


def expire_stale(session: Session, ledger_id: int, now: dt.datetime) -> int:
    """Expire held reservations whose lease has passed and give their amounts back.

    Each reservation moves ``held -> expired`` with its own conditional UPDATE (in ascending id,
    the lock order), and only the rows this transaction actually moved are subtracted from the
    ledger, so two workers expiring the same lease subtract it once. Does not commit.
    """
    stale = session.execute(
        select(QuotaReservation.id, QuotaReservation.amount)
        .where(
            QuotaReservation.ledger_id == ledger_id,
            QuotaReservation.status == HELD,
            QuotaReservation.lease_until < now,
        )
        .order_by(QuotaReservation.id)
    ).all()
    returned = 0
    for reservation_id, amount in stale:
        moved = session.execute(
            update(QuotaReservation)
            .where(QuotaReservation.id == reservation_id, QuotaReservation.status == HELD)
            .values(status=EXPIRED)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved == 1:
            returned += amount
    if returned:
        session.execute(
            update(QuotaLedger)
            .where(QuotaLedger.id == ledger_id)
            .values(reserved=QuotaLedger.reserved - returned)
            .execution_options(synchronize_session=False)
        )
    return returned


def reserve(
    session: Session,
    ledger_id: int,
    n: int,
    *,
    lease_seconds: float = LEASE_SECONDS,
    now: dt.datetime | None = None,
    batch_id: int | None = None,
    commit: bool = True,
    expire: bool = True,
) -> Reservation | None:
    """Reserve up to ``n`` on the ledger; ``None`` when nothing is left. Commits unless ``commit=False``.

    The grant is ``min(n, remaining)`` from a fresh read, taken by one conditional UPDATE that
    only matches while the ledger still has that much left. If another worker got there first the
    UPDATE matches no row and we re-read and retry with the smaller remainder (a bounded number of
    times), so a refusal means the ledger really was empty.

    ``expire=False`` skips the stale-lease sweep while the ledger can grant all of ``n`` anyway
    (the send gate sweeps on its own schedule); a ledger that is short is always swept first, so
    a refusal or a partial grant still means the quota really is taken.
    """
    if n <= 0:
        raise ValueError("reserve needs a positive amount")
    now = now or utcnow()
    swept = expire
    if expire:
        expire_stale(session, ledger_id, now)
    granted = 0
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    # The usual case first: the whole amount is there, and the conditional UPDATE alone proves
    # it (no read before it); short ledgers go through the read-sweep-retry loop below.
    if session.get_bind().dialect.name == "postgresql":  # taken and recorded in one statement
        params = {
            "lid": ledger_id,
            "want": n,
            "new_lease_until": lease_until,
            "new_batch_id": batch_id,
            "new_created_at": utcnow(),
        }
        taken = _TAKE_AND_RECORD_HOT.run(session, params).scalar_one_or_none()
        if taken is not None:
            reservation = Reservation(taken, ledger_id, n, lease_until, batch_id)
            if commit:
                session.commit()
            return reservation
    elif session.execute(_TAKE, {"lid": ledger_id, "want": n}).rowcount == 1:
        granted = n
    for _attempt in range(0 if granted else MAX_ATTEMPTS):
        left = remaining(session, ledger_id)
        if left < n and not swept:
            swept = True
            if expire_stale(session, ledger_id, now):
                left = remaining(session, ledger_id)
        if left <= 0:
            break
        want = min(n, left)
        matched = session.execute(_TAKE, {"lid": ledger_id, "want": want}).rowcount
        if matched == 1:
            granted = want
            break
    if not granted:
        if commit:
            session.commit()
        return None
    reservation_id = session.execute(
        _INSERT_RESERVATION,
        {
            "ledger_id": ledger_id,
            "amount": granted,
            "status": HELD,
            "lease_until": lease_until,
            "batch_id": batch_id,
        },
    ).scalar_one()
    reservation = Reservation(reservation_id, ledger_id, granted, lease_until, batch_id)
    if commit:
        session.commit()
    return reservation


def renew(
    session: Session,
    reservation_id: int,
    *,
    lease_seconds: float = LEASE_SECONDS,
    now: dt.datetime | None = None,
) -> bool:
    """Extend a held reservation's lease (a long batch still working); ``False`` if it is no longer held."""
    now = now or utcnow()
    moved = session.execute(
        update(QuotaReservation)
        .where(QuotaReservation.id == reservation_id, QuotaReservation.status == HELD)
        .values(lease_until=now + dt.timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return moved == 1


# The statements of every batch, built once (building and keying a statement per call cost more
# than running it).
_LEDGER = QuotaLedger.__table__
_RESERVATIONS = QuotaReservation.__table__
_TAKE = (
    _LEDGER.update()
    .where(
        _LEDGER.c.id == bindparam("lid"),
        _LEDGER.c.limit - _LEDGER.c.reserved - _LEDGER.c.committed >= bindparam("want"),
    )
    .values(reserved=_LEDGER.c.reserved + bindparam("want"))
)
#: PostgreSQL: ``_TAKE`` and the reservation's row in one statement; the new reservation's id,
#: or no row when the ledger does not have ``:want`` left (nothing written, nothing locked but
#: the ledger row the conditional UPDATE looked at).  Parameters ``new_*``: a key named like a
#: ledger column would also be SET by the UPDATE.
_TAKEN = _TAKE.returning(_LEDGER.c.id).cte("taken")
_TAKE_AND_RECORD_PG = (
    _RESERVATIONS.insert()
    .from_select(
        ["ledger_id", "amount", "status", "lease_until", "batch_id", "created_at"],
        select(
            _TAKEN.c.id,
            bindparam("want", type_=_RESERVATIONS.c.amount.type),
            literal(HELD, type_=_RESERVATIONS.c.status.type),
            bindparam("new_lease_until", type_=_RESERVATIONS.c.lease_until.type),
            bindparam("new_batch_id", type_=_RESERVATIONS.c.batch_id.type),
            bindparam("new_created_at", type_=_RESERVATIONS.c.created_at.type),
        ),
    )
    .returning(_RESERVATIONS.c.id)
)
_TAKE_AND_RECORD_HOT = bulk_sql.Hot(_TAKE_AND_RECORD_PG)
_RESERVATION = select(_RESERVATIONS.c.ledger_id, _RESERVATIONS.c.amount, _RESERVATIONS.c.status).where(
    _RESERVATIONS.c.id == bindparam("rid")
)
_COMMIT = (
    _RESERVATIONS.update()
    .where(_RESERVATIONS.c.id == bindparam("rid"), _RESERVATIONS.c.status == bindparam("was"))
    .values(status=COMMITTED, amount=bindparam("used"))
)
_SETTLE_LEDGER = (
    _LEDGER.update()
    .where(_LEDGER.c.id == bindparam("lid"))
    .values(
        reserved=_LEDGER.c.reserved - bindparam("back"),
        committed=_LEDGER.c.committed + bindparam("used"),
    )
)

#: A reservation held for exactly ``:held`` becomes committed for ``:used`` (its ledger id back).
_COMMIT_HELD = (
    _RESERVATIONS.update()
    .where(
        _RESERVATIONS.c.id == bindparam("rid"),
        _RESERVATIONS.c.status == HELD,
        _RESERVATIONS.c.amount == bindparam("held"),
    )
    .values(status=COMMITTED, amount=bindparam("used"))
    .returning(_RESERVATIONS.c.ledger_id)
)
#: PostgreSQL: ``commit_reservation`` whole in one statement whose answer nobody waits for.  A
#: held reservation gives back its amount, an expired one (already given back) nothing; either
#: becomes ``committed`` for ``:used`` and the ledger counts ``:used``.  Any other state, or a
#: reservation smaller than ``:used``, changes nothing.  Locks the reservation row, then the
#: ledger, as ``release`` and the lease sweep do.
_SETTLE_ANY_PG = bulk_sql.Hot(
    text(
        "WITH old AS (SELECT id, ledger_id, status, amount FROM marketing_quota_reservations "
        "WHERE id = :rid FOR UPDATE), "
        "settled AS (UPDATE marketing_quota_reservations AS r SET status = :committed, amount = :used "
        "FROM old WHERE r.id = old.id AND old.status IN (:held, :expired) AND old.amount >= :used "
        "RETURNING old.ledger_id, old.status AS was, old.amount AS amount) "
        "UPDATE marketing_quota_ledger AS l SET "
        "reserved = l.reserved - CASE WHEN settled.was = :held THEN settled.amount ELSE 0 END, "
        "committed = l.committed + :used FROM settled WHERE l.id = settled.ledger_id"
    ).bindparams(
        bindparam("rid", type_=BigInteger()),
        bindparam("used", type_=Integer()),
        bindparam("committed", COMMITTED, type_=String()),
        bindparam("held", HELD, type_=String()),
        bindparam("expired", EXPIRED, type_=String()),
    )
)
#: ``commit_reservation``'s statements, hot so that it also runs inside the runner's pipelined
#: record transaction (``bulk_sql.pipeline``), where the session itself must not execute.
_RESERVATION_HOT = bulk_sql.Hot(_RESERVATION)
_COMMIT_HOT = bulk_sql.Hot(_COMMIT)
_SETTLE_LEDGER_HOT = bulk_sql.Hot(_SETTLE_LEDGER)


def commit_reservation(session: Session, reservation_id: int, used: int, *, commit: bool = True) -> bool:
    """Settle a reservation with what the provider accepted: ``used`` is committed, the rest returns.

    Idempotent: only a ``held`` (or ``expired``) reservation changes, and it changes to
    ``committed``, so a second call does nothing and returns ``False``. The reservation's
    ``amount`` becomes ``used``, so committed reservations add up to the ledger's ``committed``.
    An expired reservation already gave its amount back; the provider still accepted ``used``
    messages, so they are counted as committed (the ledger may then exceed its limit, which is
    the truth and stops further grants). ``commit=False`` leaves the transaction open for the
    caller to write per-recipient results in the same transaction.
    """
    row = _RESERVATION_HOT.run(session, {"rid": reservation_id}).one_or_none()
    if row is None:
        raise LookupError(f"no quota reservation {reservation_id}")
    if row.status not in (HELD, EXPIRED):
        if commit:
            session.commit()
        return False
    if not 0 <= used <= row.amount:
        raise ValueError(f"used must be between 0 and the reserved {row.amount}, not {used}")
    changed = False
    for status in (HELD, EXPIRED):
        moved = _COMMIT_HOT.run(session, {"rid": reservation_id, "was": status, "used": used}).rowcount
        if moved == 1:
            give_back = row.amount if status == HELD else 0
            _SETTLE_LEDGER_HOT.run(session, {"lid": row.ledger_id, "back": give_back, "used": used})
            changed = True
            break
    if commit:
        session.commit()
    return changed


def release(session: Session, reservation_id: int, *, commit: bool = True) -> bool:
    """Give a held reservation back entirely (nothing was sent). Idempotent; no-op unless held."""
    row = session.execute(
        select(QuotaReservation.ledger_id, QuotaReservation.amount).where(
            QuotaReservation.id == reservation_id
        )
    ).one_or_none()
    if row is None:
        raise LookupError(f"no quota reservation {reservation_id}")
    moved = session.execute(
        update(QuotaReservation)
        .where(QuotaReservation.id == reservation_id, QuotaReservation.status == HELD)
        .values(status=RELEASED)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved == 1:
        session.execute(
            update(QuotaLedger)
            .where(QuotaLedger.id == row.ledger_id)
            .values(reserved=QuotaLedger.reserved - row.amount)
            .execution_options(synchronize_session=False)
        )
    if commit:
        session.commit()
    return moved == 1


def reconcile(
    session: Session, ledger_id: int, provider_used_today: int | None, provider_quota: int | None
) -> None:
    """Align the ledger with what the provider says about today. Does not commit.

    * ``limit`` becomes the provider's quota (it can change during the day).
    * ``committed`` becomes at least the provider's ``todayUsedQuota``: mail sent by other systems
      on the same account uses the same quota. ``committed = max(committed, used)`` rather than a
      sum, because the provider's count already includes what we committed ourselves.

    Mail we sent but have not settled yet is counted twice for a moment (held here, used at the
    provider); that errs on the side of granting less, never more.
    """
    values: dict[str, object] = {}
    if provider_quota is not None:
        values["limit"] = max(0, int(provider_quota))
    if provider_used_today is not None:
        used = max(0, int(provider_used_today))
        values["committed"] = case((QuotaLedger.committed < used, used), else_=QuotaLedger.committed)
    if values:
        session.execute(
            update(QuotaLedger)
            .where(QuotaLedger.id == ledger_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def sync(
    session: Session,
    workspace_id: int,
    account: ProviderAccount,
    info: AccountInfo,
    now: dt.datetime | None = None,
) -> AccountSnapshot:
    """Store what the provider reported and reconcile today's batch ledger with it. Commits.

    Without a known daily quota there is nothing to reconcile; the snapshot is still stored so
    the account bar can show the balance.
    """
    now = now or utcnow()
    snapshot = AccountSnapshot(
        workspace_id=workspace_id,
        account_id=account.id,
        balance=info.balance,
        available_balance=info.available_balance,
        daily_quota=info.daily_quota,
        used_today=info.used_today,
        reputation=info.reputation,
        fetched_at=now,
    )
    session.add(snapshot)
    session.flush()
    if info.daily_quota is not None:
        ledger_id = ensure_ledger(
            session, workspace_id, account.id, "batch", provider_day(now), info.daily_quota
        )
        reconcile(session, ledger_id, info.used_today, info.daily_quota)
    session.commit()
    return snapshot


def ledger_totals(session: Session, ledger_id: int) -> tuple[int, int, int]:
    """``(limit, reserved, committed)`` as stored now (for status pages and tests)."""
    row = session.execute(
        select(QuotaLedger.limit, QuotaLedger.reserved, QuotaLedger.committed).where(
            QuotaLedger.id == ledger_id
        )
    ).one()
    return row.limit, row.reserved, row.committed


def held_total(session: Session, ledger_id: int) -> int:
    """Sum of the amounts of reservations still held on the ledger."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(QuotaReservation.amount), 0)).where(
                QuotaReservation.ledger_id == ledger_id, QuotaReservation.status == HELD
            )
        )
    )


__all__ = [
    "LEASE_SECONDS",
    "PROVIDER_TZ",
    "Blocked",
    "GateCache",
    "Grant",
    "Reservation",
    "commit_reservation",
    "ensure_ledger",
    "expire_stale",
    "give_back",
    "held_total",
    "ledger_totals",
    "next_provider_midnight",
    "provider_day",
    "reconcile",
    "release",
    "remaining",
    "renew",
    "reserve",
    "reserve_for_send",
    "settle",
    "sync",
    "unsettled",
]


# --------------------------------------------------------------------------- the send gate
#
# The runner and the trigger-mail service ask the gate before every provider call.  The gate
# turns "what the provider and the admin allow today" into ledger limits and reserves on them:
# the account's ledger (daily quota minus the trigger share, or an SMTP account's own daily
# limit) and, when the admin set one, the owner's cap ledger.  When nothing can be granted it
# answers *why* and *when to look again*, which is what the campaign shows while paused.

#: Stand-in limit for SMTP accounts without a daily limit.
UNLIMITED = 1_000_000_000
#: When to look again after a balance or sync problem (the next scheduled sync will have run).
RECHECK_AFTER = dt.timedelta(minutes=5)


class GateAccount(Protocol):
    """What the send gate reads of an account: a ``ProviderAccount`` row or the runner's copy of
    its fields (the runner does not keep ORM rows between its commits)."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def daily_limit(self) -> int | None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """Quota granted for one send: ``amount`` may be less than asked."""

    amount: int
    reservation_id: int
    cap_reservation_id: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Blocked:
    """Nothing can be sent now: ``reason`` is a pause reason code of the campaign lifecycle."""

    reason: str
    detail: str = ""
    retry_at: dt.datetime | None = None


def next_provider_midnight(now: dt.datetime, tz: str = PROVIDER_TZ) -> dt.datetime:
    """The next 00:00 of the provider's day, in UTC (when a used-up daily quota comes back)."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    tomorrow = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(0, 0), tzinfo=zone)
    return tomorrow.astimezone(dt.UTC)


def latest_snapshot(session: Session, account_id: int) -> AccountSnapshot | None:
    return session.scalar(
        select(AccountSnapshot)
        .where(AccountSnapshot.account_id == account_id)
        .order_by(AccountSnapshot.fetched_at.desc(), AccountSnapshot.id.desc())
        .limit(1)
    )


def _trigger_share(session: Session, workspace_id: int, daily_quota: int) -> int:
    from . import allocation  # the admin's division of the quota (optional module of the host)

    return max(0, min(daily_quota, int(allocation.trigger_share(session, workspace_id, daily_quota))))


@dataclasses.dataclass
class GateCache:
    """What the gate reads on every call and what changes rarely, kept for ``ttl`` seconds.

    Why: a campaign asks the gate before each 100-recipient batch, many times a second; the
    latest account snapshot (written by the sync every few minutes), the trigger share (an admin
    setting) and the ledger row ids (fixed for a provider day) were read from the database each
    time, twice for the snapshot.  A worker keeps one of these in its run context; callers
    without one (trigger mail, the resume probe, tests) read everything fresh.  What is cached
    only feeds the ledger *limit* and the balance check, both of which already trail the
    provider by a sync interval; the grant itself is always the atomic UPDATE on the ledger row,
    so caching can never grant more than the ledger allows.  The stale-lease sweep runs at most
    every ``sweep_seconds`` (and always when a ledger is short, see ``reserve``).
    """

    ttl: float = 5.0
    sweep_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _values: dict[tuple, tuple[float, object]] = dataclasses.field(default_factory=dict)
    _ledgers: dict[tuple, int] = dataclasses.field(default_factory=dict)
    _swept: dict[int, float] = dataclasses.field(default_factory=dict)

    def get(self, key: tuple, load: Callable[[], object]) -> object:
        now = self.clock()
        hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = load()
        self._values[key] = (now, value)
        return value

    def ledger(self, key: tuple, load: Callable[[], int | None]) -> int | None:
        """A ledger id (fixed for its day) once it exists; ``None`` until then, so a row created
        in a transaction that is then rolled back is never remembered."""
        ledger_id = self._ledgers.get(key)
        if ledger_id is None:
            if len(self._ledgers) > 64:  # one provider day after another in a long-lived worker
                self._ledgers.clear()
            ledger_id = load()
            if ledger_id is not None:
                self._ledgers[key] = ledger_id
        return ledger_id

    def sweep_due(self, ledger_id: int) -> bool:
        now = self.clock()
        if now - self._swept.get(ledger_id, float("-inf")) >= self.sweep_seconds:
            self._swept[ledger_id] = now
            return True
        return False

    def forget(self) -> None:
        self._values.clear()
        self._ledgers.clear()
        self._swept.clear()


@dataclasses.dataclass(frozen=True, slots=True)
class _SnapshotFigures:
    daily_quota: int | None
    available_balance: object


def _snapshot_figures(session: Session, account_id: int) -> _SnapshotFigures | None:
    row = session.execute(
        select(AccountSnapshot.daily_quota, AccountSnapshot.available_balance)
        .where(AccountSnapshot.account_id == account_id)
        .order_by(AccountSnapshot.fetched_at.desc(), AccountSnapshot.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _SnapshotFigures(row.daily_quota, row.available_balance)


def _channel_limit(
    session: Session,
    workspace_id: int,
    account: GateAccount,
    channel: str,
    now: dt.datetime,
    snapshot: _SnapshotFigures | None = None,
    cache: GateCache | None = None,
) -> int | Blocked:
    """Today's limit of the account's ledger for ``channel``, or why there is none."""
    if account.kind != "sendcloud":
        return int(account.daily_limit) if account.daily_limit is not None else UNLIMITED
    if snapshot is None or snapshot.daily_quota is None:
        return Blocked("not_synced", "", now + dt.timedelta(minutes=1))
    quota = int(snapshot.daily_quota)
    if cache is None:
        share = _trigger_share(session, workspace_id, quota)
    else:
        share = int(
            cache.get(("share", workspace_id, quota), lambda: _trigger_share(session, workspace_id, quota))
        )  # type: ignore[call-overload]
    if channel == "trigger":
        return share if share > 0 else quota
    return quota - share


def _balance_allows(
    account: GateAccount, n: int, price: float, now: dt.datetime, snapshot: _SnapshotFigures | None
) -> int | Blocked:
    """How many of ``n`` mails the available balance pays for (SendCloud only)."""
    if account.kind != "sendcloud" or price <= 0:
        return n
    available = snapshot.available_balance if snapshot is not None else None
    if available is None:
        return n
    affordable = int(float(available) // price)  # type: ignore[arg-type]
    if affordable <= 0:
        return Blocked("balance", "", now + RECHECK_AFTER)
    return min(n, affordable)


def _set_limit(session: Session, ledger_id: int, limit: int, *, commit: bool = True) -> None:
    session.execute(
        update(QuotaLedger)
        .where(QuotaLedger.id == ledger_id, QuotaLedger.limit != limit)
        .values(limit=limit)
        .execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()


def reserve_for_send(
    session: Session,
    *,
    workspace_id: int,
    account: GateAccount,
    n: int,
    settings,
    channel: str = "batch",
    owner_id: str | None = None,
    team: str | None = None,
    now: dt.datetime | None = None,
    lease_seconds: float = LEASE_SECONDS,
    commit: bool = True,
    cache: GateCache | None = None,
) -> Grant | Blocked:
    """Reserve up to ``n`` mails for one send, or say why nothing can go now. Commits.

    Order: balance (what the money pays for) → the owner's cap (batch mail only) → the account's
    ledger.  A cap reservation that the account ledger cannot match is given back at once.

    ``commit=False``: nothing is committed, so the caller claims its recipients in the same
    transaction (a worker killed in between leaves nothing held; on a ``Blocked`` answer the
    caller rolls back or commits, both are consistent).  ``cache``: see :class:`GateCache`.
    """
    if n <= 0:
        raise ValueError("reserve_for_send needs a positive amount")
    now = now or utcnow()
    day = provider_day(now)
    snapshot: _SnapshotFigures | None = None
    if account.kind == "sendcloud":
        if cache is None:
            snapshot = _snapshot_figures(session, account.id)
        else:
            snapshot = cache.get(("snapshot", account.id), lambda: _snapshot_figures(session, account.id))  # type: ignore[assignment]
    limit = _channel_limit(session, workspace_id, account, channel, now, snapshot, cache)
    if isinstance(limit, Blocked):
        return limit
    affordable = _balance_allows(account, n, float(settings.price_per_mail), now, snapshot)
    if isinstance(affordable, Blocked):
        return affordable
    want = affordable

    def take(ledger_id: int, amount: int) -> Reservation | None:
        expire = cache is None or cache.sweep_due(ledger_id)
        return reserve(
            session, ledger_id, amount, lease_seconds=lease_seconds, now=now, commit=commit, expire=expire
        )

    cap_reservation: Reservation | None = None
    if channel == "batch" and (owner_id or team):
        from . import allocation

        if cache is None:
            cap = allocation.cap_for(session, workspace_id, owner_id, team)
        else:
            cap = cache.get(  # type: ignore[assignment]
                ("cap", workspace_id, owner_id, team),
                lambda: allocation.cap_for(session, workspace_id, owner_id, team),
            )
        if cap is not None:
            owner_key, cap_limit = cap
            cap_ledger = ensure_ledger(
                session, workspace_id, account.id, channel, day, cap_limit, owner=owner_key, commit=commit
            )
            _set_limit(session, cap_ledger, int(cap_limit), commit=commit)
            cap_reservation = take(cap_ledger, want)
            if cap_reservation is None:
                return Blocked("cap", "", next_provider_midnight(now))
            want = cap_reservation.amount

    if cache is None:
        ledger_id = ensure_ledger(session, workspace_id, account.id, channel, day, limit, commit=commit)
    else:
        ledger_id = cache.ledger(
            (account.id, channel, day), lambda: _ledger_id(session, account.id, channel, day)
        ) or ensure_ledger(session, workspace_id, account.id, channel, day, limit, commit=commit)
    reservation = take(ledger_id, want)
    if reservation is None:
        if cap_reservation is not None:
            release(session, cap_reservation.id, commit=commit)
        return Blocked("quota", "", next_provider_midnight(now))
    if cap_reservation is not None and reservation.amount < cap_reservation.amount:
        # Keep the cap's hold equal to what the account granted: swap it for an exact one.
        release(session, cap_reservation.id, commit=commit)
        cap_reservation = take(cap_reservation.ledger_id, reservation.amount)
        if cap_reservation is None or cap_reservation.amount < reservation.amount:
            if cap_reservation is not None:
                release(session, cap_reservation.id, commit=commit)
            release(session, reservation.id, commit=commit)
            return Blocked("cap", "", next_provider_midnight(now))
    return Grant(reservation.amount, reservation.id, cap_reservation.id if cap_reservation else None)


def settle(session: Session, grant: Grant, used: int) -> list[Any]:
    """The provider accepted ``used`` of the granted mails: count them, give the rest back.

    Does not commit, so the caller writes per-recipient results in the same transaction.
    Returns the answers of PostgreSQL's unread settlement statements (empty on SQLite), which
    :func:`unsettled` checks once they arrived (after the commit, in a pipeline).
    """
    used = max(0, min(int(used), grant.amount))
    answers = []
    for reservation_id in _in_lock_order(grant):
        answer = _settle_one(session, reservation_id, grant.amount, used)
        if answer is not None:
            answers.append(answer)
    return answers


def unsettled(answers: list[Any]) -> int:
    """How many of ``settle``'s PostgreSQL statements changed nothing: the reservation was
    missing, no longer held (committed or released already), or smaller than ``used``, the
    cases ``commit_reservation`` refuses or skips."""
    return sum(1 for answer in answers if answer.rowcount != 1)


def _in_lock_order(grant: Grant) -> list[int]:
    """The grant's reservations in the order ``reserve_for_send`` locked their ledgers: the
    owner's cap ledger, then the account's.  Settling or giving back in the other order could
    deadlock against a claim of another worker holding the cap ledger and waiting for the
    account ledger (PostgreSQL would abort one of the two)."""
    if grant.cap_reservation_id is None:
        return [grant.reservation_id]
    return [grant.cap_reservation_id, grant.reservation_id]


def _settle_one(session: Session, reservation_id: int, held: int, used: int) -> Any:
    """``commit_reservation`` for one of a batch's reservations, in as few round trips as each
    database allows (this runs for every batch).

    PostgreSQL: one statement that covers every state, so nothing reads its answer.  The
    runner sends it in a pipeline with the COMMIT; a statement whose row count decided what to
    send next made the client wait for it and then for its interpreter lock while the ledger
    row, which every worker of the account writes, stayed locked.  SQLite: the usual case, a
    reservation still held for exactly ``held``, in two statements, else the general path."""
    params = {"rid": reservation_id, "held": held, "used": used}
    if session.get_bind().dialect.name == "postgresql":
        return _SETTLE_ANY_PG.run(session, {"rid": reservation_id, "used": used})
    ledger_id = session.execute(_COMMIT_HELD, params).scalar_one_or_none()
    if ledger_id is None:
        commit_reservation(session, reservation_id, used, commit=False)
        return None
    session.execute(_SETTLE_LEDGER, {"lid": ledger_id, "back": held, "used": used})
    return None


def give_back(session: Session, grant: Grant) -> None:
    """Nothing was sent: release everything the grant held. Does not commit."""
    for reservation_id in _in_lock_order(grant):
        release(session, reservation_id, commit=False)


def renew_grant(session: Session, grant: Grant, *, lease_seconds: float = LEASE_SECONDS) -> bool:
    """Extend the leases of a grant whose send is taking long (SMTP batches at a low rate)."""
    ok = renew(session, grant.reservation_id, lease_seconds=lease_seconds)
    if grant.cap_reservation_id is not None:
        renew(session, grant.cap_reservation_id, lease_seconds=lease_seconds)
    return ok


def grant_status(session: Session, grant: Grant) -> str | None:
    """The status of the grant's main reservation (``held`` while still usable)."""
    return session.scalar(select(QuotaReservation.status).where(QuotaReservation.id == grant.reservation_id))
