"""The campaign runner: claim → reserve → send → record, resumable and idempotent (DESIGN §4.5).

Why it is built this way:

* **Every mail exactly once.** A batch is claimed in one transaction and recorded as a
  ``send_batch`` row whose members never change and whose idempotency key is deterministic
  (campaign and sequence number).  SendCloud refuses a second request with the same
  ``sendRequestId`` within an hour, so re-sending a batch after a crash or a timeout cannot
  duplicate it; its "duplicate request" answer means "accepted earlier".
* **SMTP has no such key**, so an SMTP batch (``smtp_batch``) records each recipient in its own
  transaction right after the server's reply.  After a crash only the mail in flight can be sent
  twice; it is re-sent with the same Message-ID and flagged ``possible_duplicate``.
* **Quota before the call.** The send gate (``quota.reserve_for_send``) grants what the daily quota,
  the balance and the owner's cap allow; when nothing is left the campaign pauses with a reason
  and a time to look again, and the scheduler resumes it.
* **Crashes are normal.** Batches carry a lease; a batch whose worker died is taken over when the
  lease passes.  Per-recipient results and the quota settlement commit together.
* **Fast path stays cheap.** Core statements, one content compiled per (template, sender) and
  cached in the run context, per-recipient values from a table built once.

``run_batch`` is the unit of work shared by the in-process threads backend and Celery workers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Select,
    String,
    and_,
    bindparam,
    cast,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from .. import bulk_sql, quota
from ..directory import ContactDirectory
from ..errors import (
    AuthenticationFailed,
    DuplicateRequest,
    InvalidInput,
    InvalidTransition,
    MarketingError,
    NotFound,
    ProviderError,
    ProviderQuotaExceeded,
    Throttled,
)
from ..i18n import _
from ..models import (
    Campaign,
    CampaignRecipient,
    ProviderAccount,
    QuotaReservation,
    SendBatch,
    Sender,
    Suppression,
    Template,
    utcnow,
)
from ..providers.base import BatchMessage, Provider, Recipient, SendResult, begin_batch
from . import lifecycle

log = logging.getLogger(__name__)

#: How long a worker owns a claimed batch before others may take it over.
BATCH_LEASE = dt.timedelta(minutes=5)
#: SendCloud remembers a ``sendRequestId`` for an hour; a batch older than that is never re-sent blindly.
IDEMPOTENCY_WINDOW = dt.timedelta(hours=1)
#: Temporary per-recipient refusals (SMTP 4xx) are retried this many times in later batches.
MAX_RECIPIENT_ATTEMPTS = 3
#: Longest wait between retries of a failing provider.
MAX_BACKOFF_SECONDS = 300.0
#: After the automatic "provider" pause, try again after this long.
PROVIDER_COOLDOWN = dt.timedelta(minutes=10)
#: Most recipients in one batch: SendCloud's per-request limit (SMTP batches follow it too).
MAX_BATCH = 100
#: SendCloud: content that does not match an approved template.
TEMPLATE_MISMATCH = 40908

SENT = "sent"
DONE = "done"
BLOCKED = "blocked"
RETRY = "retry"
IDLE = "idle"
#: ``run_batch`` inside ``run_campaign``: the batch was sent and its answer is awaited there.
IN_FLIGHT = "in-flight"

StepHook = Callable[[str], None]
#: A batch in flight: its id, the number of its send (``RunContext._sends``), its finishing step.
_InFlight = tuple[int, int, Callable[[], str]]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclasses.dataclass
class RunContext:
    """What the runner needs from its surroundings; built once per worker (thread or process)."""

    settings: Any
    secrets: Any
    directory: Any
    provider_factory: Callable[[ProviderAccount, str], Provider]
    worker_id: str = dataclasses.field(default_factory=_worker_id)
    clock: Callable[[], dt.datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    #: Seconds of the first retry after a provider failure (doubles per failure).
    backoff_base: float = 1.0
    #: Called at each step boundary with the step's name (crash tests kill the process there).
    on_step: StepHook | None = None
    #: How long a claimed batch belongs to this worker (crash tests shorten it to restart fast).
    batch_lease: dt.timedelta = BATCH_LEASE
    #: The send gate's short-lived cache (snapshot, trigger share, ledger ids; see quota.GateCache).
    gate: quota.GateCache = dataclasses.field(default_factory=quota.GateCache)
    _providers: dict[tuple[int, str], Provider] = dataclasses.field(default_factory=dict)
    #: Per campaign: when to look for stale batches again (see ``STALE_CHECK``).
    _stale_check_due: dict[int, dt.datetime] = dataclasses.field(default_factory=dict)
    #: Per campaign: the highest recipient id this worker claimed (see ``_pending_query``).
    _claimed_up_to: dict[int, int] = dataclasses.field(default_factory=dict)
    _contents: dict[tuple[int, int | None, int | None], Any] = dataclasses.field(default_factory=dict)
    #: Set by ``run_campaign`` when it keeps batches in flight: the sent batches (id, number of
    #: the send, finishing step), oldest first.
    _in_flight: deque[_InFlight] | None = None
    #: Batches this worker sent so far, and from which one on a failure counts towards the
    #: automatic pause (failures of batches that were already out when one failed do not: one
    #: outage must not count once per batch in flight).
    _sends: int = 0
    _failures_count_from: int = 0
    _count_failures: bool = True

    def step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    def provider(self, account: ProviderAccount, channel: str = "batch") -> Provider:
        key = (account.id, channel)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = self.provider_factory(account, channel)
        return provider

    def drop_provider(self, account_id: int) -> None:
        for key in [k for k in self._providers if k[0] == account_id]:
            provider = self._providers.pop(key)
            try:
                provider.close()
            except Exception:
                log.debug("closing provider failed", exc_info=True)

    def close(self) -> None:
        for account_id in {k[0] for k in self._providers}:
            self.drop_provider(account_id)


def context_from_app(app, **overrides: Any) -> RunContext:
    """A run context wired from the app's plugin state (providers built by ``plugin.channels``)."""
    from ..channels import provider_factory

    state = app.extensions["marketing"]
    factory = provider_factory(app.extensions, secrets=state.secrets, settings=state.settings)
    values: dict[str, Any] = {
        "settings": state.settings,
        "secrets": state.secrets,
        "directory": state.directory,
        "provider_factory": factory,
    }
    values.update(overrides)
    return RunContext(**values)


# --------------------------------------------------------------------------- small queries


def _campaign(session: Session, campaign_id: int) -> Campaign | None:
    return session.get(Campaign, campaign_id, populate_existing=True)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _pause(
    session: Session,
    campaign: Campaign,
    reason: str,
    *,
    detail: str | None = None,
    retry_at: dt.datetime | None = None,
    now: dt.datetime,
) -> None:
    try:
        lifecycle.transition(
            session, campaign, lifecycle.PAUSED, reason=reason, detail=detail, retry_at=retry_at, now=now
        )
    except InvalidTransition:
        session.rollback()  # a user paused or cancelled it meanwhile: their decision stands
        return
    session.commit()
    log.info("campaign %s paused: %s", campaign.id, reason)


def _bump(session: Session, campaign_id: int, **deltas: int) -> None:
    """Add to campaign counters with one UPDATE (``sent=3`` means ``sent = sent + 3``)."""
    values = {name: getattr(Campaign, name) + value for name, value in deltas.items()}
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _finished(session: Session, campaign_id: int) -> bool:
    open_recipient = session.scalar(
        select(CampaignRecipient.id)
        .where(
            CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.status.in_(("pending", "sending"))
        )
        .limit(1)
    )
    if open_recipient is not None:
        return False
    open_batch = session.scalar(
        select(SendBatch.id)
        .where(SendBatch.campaign_id == campaign_id, SendBatch.status.in_(("claimed", "sending")))
        .limit(1)
    )
    return open_batch is None


def _complete_if_finished(session: Session, campaign_id: int, now: dt.datetime) -> bool:
    if not _finished(session, campaign_id):
        return False
    campaign = _campaign(session, campaign_id)
    if campaign is None:
        session.rollback()
        return False
    try:
        lifecycle.transition(session, campaign, lifecycle.COMPLETED, now=now)
    except InvalidTransition:
        session.rollback()
        return False
    session.commit()
    log.info("campaign %s completed", campaign.id)
    return True


# --------------------------------------------------------------------------- start


def audience_gone_message() -> str:
    """Why a scheduled campaign could not start (translated when said, not at import)."""
    return _("A tag or saved view of this campaign's audience no longer exists; choose the audience again.")


def start(session: Session, campaign_id: int, ctx: RunContext) -> None:
    """Start a campaign now: sync the account, freeze the audience, status ``running``. Commits.

    Idempotent: a campaign already running is left as it is.  An empty final audience completes
    at once.
    """
    from . import audience

    now = ctx.clock()
    campaign = _campaign(session, campaign_id)
    if campaign is None:
        raise InvalidInput(_("No such campaign."), field="campaign_id")
    if campaign.status == lifecycle.RUNNING:
        return
    if not lifecycle.can_transition(campaign.status, lifecycle.RUNNING):
        raise InvalidTransition(
            _("A campaign that is %(current)s cannot start.", current=lifecycle.status_label(campaign.status))
        )
    account = session.get(ProviderAccount, campaign.account_id) if campaign.account_id else None
    if account is not None and account.kind == "sendcloud":
        _sync_quietly(session, campaign.workspace_id, account, ctx)
        campaign = _campaign(session, campaign_id)
        assert campaign is not None
    ctx.step("start:before_freeze")
    frozen_now = campaign.frozen_at is None
    if frozen_now:
        try:
            audience.freeze(session, ctx.directory, campaign, settings=ctx.settings)
        except NotFound as exc:  # a tag or view was deleted since the campaign was scheduled
            session.rollback()
            raise InvalidInput(audience_gone_message(), field="include") from exc
    lifecycle.transition(session, campaign, lifecycle.RUNNING, now=now)
    added = (campaign.total or 0) + (campaign.skipped or 0)
    session.commit()
    ctx.step("start:after_freeze")
    if frozen_now:
        audience.refresh_statistics(session, added)
    _complete_if_finished(session, campaign_id, now)


def _sync_quietly(session: Session, workspace_id: int, account: ProviderAccount, ctx: RunContext) -> None:
    """Sync balance and quota before a start; a failed sync only means the gate uses older figures."""
    try:
        from .. import quota_sync

        quota_sync.sync_account(session, workspace_id, account, ctx.provider(account, "batch"))
    except (MarketingError, ImportError) as exc:
        session.rollback()
        log.warning("quota sync before start failed for account %s: %s", account.id, type(exc).__name__)


# --------------------------------------------------------------------------- user actions


def pause(session: Session, campaign_id: int, *, by: str | None = None) -> None:
    campaign = _require(session, campaign_id)
    lifecycle.transition(session, campaign, lifecycle.PAUSED, reason="user", detail=None)
    session.commit()


def resume(session: Session, campaign_id: int) -> None:
    """A user resumes: whatever the pause reason, try again now (the gate will re-pause if needed)."""
    campaign = _require(session, campaign_id)
    lifecycle.transition(session, campaign, lifecycle.RUNNING)
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(consecutive_failures=0, retry_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def cancel(session: Session, campaign_id: int) -> None:
    """Stop for good; recipients not yet sent stay ``pending`` (visible as never sent)."""
    campaign = _require(session, campaign_id)
    lifecycle.transition(session, campaign, lifecycle.CANCELLED)
    session.commit()


def _require(session: Session, campaign_id: int) -> Campaign:
    campaign = _campaign(session, campaign_id)
    if campaign is None:
        raise InvalidInput("no such campaign", field="campaign_id")
    return campaign


def resume_if_possible(session: Session, campaign_id: int, ctx: RunContext) -> bool:
    """Lift an automatic pause (quota, balance, cap, sync, provider cool-down) when its cause is gone."""
    now = ctx.clock()
    campaign = _campaign(session, campaign_id)
    if campaign is None or campaign.status != lifecycle.PAUSED:
        return False
    reason = campaign.pause_reason
    if reason not in lifecycle.AUTO_RESUME_REASONS and reason != "provider":
        return False
    if campaign.retry_at is not None and campaign.retry_at > now:
        return False
    account = session.get(ProviderAccount, campaign.account_id) if campaign.account_id else None
    if account is None:
        return False
    if reason != "provider":
        probe = quota.reserve_for_send(
            session,
            workspace_id=campaign.workspace_id,
            account=account,
            n=1,
            settings=ctx.settings,
            owner_id=campaign.owner_id,
            team=campaign.team,
            now=now,
        )
        if isinstance(probe, quota.Blocked):
            session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status == lifecycle.PAUSED)
                .values(pause_reason=probe.reason, retry_at=probe.retry_at)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            return False
        quota.give_back(session, probe)
        session.commit()
    campaign = _campaign(session, campaign_id)
    assert campaign is not None
    try:
        lifecycle.transition(session, campaign, lifecycle.RUNNING, now=now)
    except InvalidTransition:
        session.rollback()
        return False
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(consecutive_failures=0)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    log.info("campaign %s resumed automatically (was paused: %s)", campaign_id, reason)
    return True


# --------------------------------------------------------------------------- one batch


@dataclasses.dataclass
class _Batch:
    id: int
    seq: int
    key: str
    status: str
    template_id: int | None
    sender_id: int | None
    grant: quota.Grant | None
    lease_until: dt.datetime | None
    #: A batch claimed as a range (``_claim_range``) whose members are not marked yet.
    after: int | None = None
    upto: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _CampaignFacts:
    """The campaign fields a batch reads, read once per batch by ``_BATCH_FACTS``.

    Why plain values rather than the ORM row: every commit expires the session's ORM objects,
    so reading ``campaign.id`` after a commit reloaded the whole row (JSON columns included),
    and loading the row and its account through the identity map cost more CPU than the rest of
    the claim.  These fields do not change while a batch is in flight; transitions (pause,
    complete) still load the ORM row.
    """

    id: int
    workspace_id: int
    tracking: bool
    from_name: str | None
    reply_to: str | None
    label: str | None
    owner_id: str | None = None
    team: str | None = None
    #: ``(template_id, sender_id)`` every recipient has when the campaign has one template and
    #: at most one sender (the claim then skips asking which content comes next), else ``None``.
    single_content: tuple[int, int | None] | None = None

    @classmethod
    def of(cls, campaign_id: int, row: Any) -> _CampaignFacts:
        templates, senders = list(row.template_ids or ()), list(row.sender_ids or ())
        single = None
        if len(templates) == 1 and len(senders) <= 1:
            single = (int(templates[0]), int(senders[0]) if senders else None)
        return cls(
            campaign_id,
            row.workspace_id,
            bool(row.tracking),
            row.from_name,
            row.reply_to,
            row.label,
            row.owner_id,
            row.team,
            single,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _AccountFacts:
    """The account fields a batch reads (see ``_CampaignFacts``; ``quota.GateAccount``)."""

    id: int
    kind: str
    from_address: str | None
    daily_limit: int | None = None


_ACCOUNTS = ProviderAccount.__table__
#: Everything a batch needs to know about its campaign and account, in one statement.
_BATCH_FACTS = (
    select(
        Campaign.__table__.c.status,
        Campaign.__table__.c.retry_at,
        Campaign.__table__.c.workspace_id,
        Campaign.__table__.c.tracking,
        Campaign.__table__.c.from_name,
        Campaign.__table__.c.reply_to,
        Campaign.__table__.c.label,
        Campaign.__table__.c.owner_id,
        Campaign.__table__.c.team,
        Campaign.__table__.c.template_ids,
        Campaign.__table__.c.sender_ids,
        Campaign.__table__.c.account_id,
        _ACCOUNTS.c.status.label("account_status"),
        _ACCOUNTS.c.kind.label("account_kind"),
        _ACCOUNTS.c.from_address.label("account_from_address"),
        _ACCOUNTS.c.daily_limit.label("account_daily_limit"),
    )
    .select_from(Campaign.__table__.outerjoin(_ACCOUNTS, _ACCOUNTS.c.id == Campaign.__table__.c.account_id))
    .where(Campaign.__table__.c.id == bindparam("cid"))
)


_BATCH_FACTS_HOT = bulk_sql.Hot(_BATCH_FACTS)

_CampaignLike = Campaign | _CampaignFacts


def _provider(session: Session, ctx: RunContext, account: _AccountFacts) -> Provider:
    """The context's provider for the account; the ORM row is loaded only to build a new one."""
    provider = ctx._providers.get((account.id, "batch"))
    if provider is not None:
        return provider
    row = session.get(ProviderAccount, account.id)
    if row is None:
        raise InvalidInput("the campaign's sending account no longer exists", field="account_id")
    return ctx.provider(row, "batch")


def run_batch(session: Session, campaign_id: int, ctx: RunContext) -> str:
    """Do one unit of work for a running campaign and say what happened (see module constants)."""
    outcome = _run_batch(session, campaign_id, ctx)
    if outcome not in (SENT, IN_FLIGHT):  # a batch may have been released for a retry: look
        ctx._stale_check_due.pop(campaign_id, None)  # for it next time
    return outcome


def _run_batch(session: Session, campaign_id: int, ctx: RunContext) -> str:
    now = ctx.clock()
    row = _BATCH_FACTS_HOT.run(session, {"cid": campaign_id}).first()
    if row is None or row.status != lifecycle.RUNNING:
        session.rollback()
        return IDLE
    if row.retry_at is not None and row.retry_at > now:
        session.rollback()
        return RETRY
    if row.account_id is None or row.account_status != "active":
        campaign = _campaign(session, campaign_id)
        if campaign is not None and campaign.status == lifecycle.RUNNING:
            _pause(session, campaign, "account", now=now)
        else:
            session.rollback()
        return BLOCKED
    facts = _CampaignFacts.of(campaign_id, row)
    account_facts = _AccountFacts(
        row.account_id, row.account_kind, row.account_from_address, row.account_daily_limit
    )

    due = ctx._stale_check_due.get(campaign_id)
    if due is None or now >= due:
        batch = _take_over_stale_batch(session, facts, account_facts, ctx, now)
        if isinstance(batch, str):
            return batch
        if batch is not None:
            return _send(session, facts, account_facts, batch, ctx, now)
        ctx._stale_check_due[campaign_id] = now + STALE_CHECK
    if _is_postgres(session):
        if _claims_ranges(facts, account_facts):  # the next range of ids (see ``_claim_range``)
            fast = _claim_range(session, facts, account_facts, ctx, now)
        else:  # recipients first, the quota last (see ``_claim_then_reserve``)
            fast = _claim_then_reserve(session, facts, account_facts, ctx, now)
        if fast == SKIPPED_ALL:
            return SENT
        if fast != _RESERVE_FIRST:
            batch, members, contacts = fast  # type: ignore[misc]
            ctx.step("batch:claimed")
            return _prepare_and_send(session, facts, account_facts, batch, members, contacts, ctx, now)
    # SQLite, and PostgreSQL when the ledger is short or nothing was claimable there: reserve
    # first, then claim what was granted, in ONE transaction, committed with attempts=1 (a worker
    # killed earlier leaves nothing behind; one killed later leaves a batch whose lease runs out
    # and is taken over, as after a kill during the provider call).  The message is built after
    # that commit: the transaction holds the quota ledger and campaign rows every other worker
    # of the account needs, and building a hundred recipients' values is the longest part of a
    # claim (held through it, the ledger lock made three threads wait on each other ~20 % of
    # the time, pg_stat_statements: settle and take averaged 10 ms and 6.6 ms, mostly waiting).
    grant = _reserve(session, facts, account_facts, min(ctx.settings.batch_size, MAX_BATCH), ctx, now)
    if isinstance(grant, quota.Blocked) and ctx._in_flight:
        # the gate counts what the batches in flight hold: decide once they are recorded
        session.rollback()
        return IDLE
    if isinstance(grant, quota.Blocked):
        session.rollback()
        if not _has_pending(session, campaign_id):  # nothing left to send: no reason to pause
            return DONE if _complete_if_finished(session, campaign_id, now) else IDLE
        campaign = _campaign(session, campaign_id)
        if campaign is not None and campaign.status == lifecycle.RUNNING:
            _pause(
                session,
                campaign,
                grant.reason,
                detail=grant.detail or None,
                retry_at=grant.retry_at,
                now=now,
            )
        return BLOCKED
    ctx.step("batch:reserved")
    claimed = _claim(session, facts, account_facts, grant, now, ctx)
    if claimed is None:  # nothing claimable (rolled back: the reservation went with it)
        return DONE if _complete_if_finished(session, campaign_id, now) else IDLE
    if claimed == SKIPPED_ALL:  # every claimed address was suppressed since the freeze: go on
        return SENT
    batch, members = claimed
    try:
        contacts = _batch_contacts(session, facts, members, ctx)
    except InvalidInput as exc:  # in the claim's transaction: fails the batch with it
        return _fail_batch(session, facts, batch, members, str(exc), ctx, now, permanent=True)
    session.commit()
    ctx.step("batch:claimed")
    return _prepare_and_send(session, facts, account_facts, batch, members, contacts, ctx, now)


def _prepare_and_send(
    session: Session,
    facts: _CampaignFacts,
    account_facts: _AccountFacts,
    batch: _Batch,
    members: list[Member],
    contacts: dict[int, Any],
    ctx: RunContext,
    now: dt.datetime,
) -> str:
    """Build a freshly claimed (committed) batch's message and send it."""
    try:  # no statement here once the campaign's content is cached in ``ctx``
        message = _build_message(session, facts, account_facts, batch, members, ctx, now, contacts)
    except InvalidInput as exc:  # committed with the failure: a first batch's registered links too
        return _fail_batch(session, facts, batch, members, str(exc), ctx, now, permanent=True)
    except Exception:
        # Unexpected: the batch is claimed and committed.  Free its lease so the next run takes
        # it over at once (and meets the same error there) instead of claiming another batch.
        session.rollback()
        _free_lease(session, batch.id, now)
        raise
    if _in_transaction(session):  # a first batch registered its tracked links: store them
        session.commit()  # before any mail carries their ids
    return _send(session, facts, account_facts, batch, ctx, now, prepared=(members, message))


def _reserve(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    n: int,
    ctx: RunContext,
    now: dt.datetime,
    *,
    fresh: bool = True,
) -> quota.Grant | quota.Blocked:
    """The send gate for ``n`` mails of the campaign.  ``fresh``: a new batch's claim, in the
    caller's transaction and through the context's gate cache; otherwise (a taken-over
    batch) committed at once and read without the cache."""
    return quota.reserve_for_send(
        session,
        workspace_id=campaign.workspace_id,
        account=account,
        n=n,
        settings=ctx.settings,
        owner_id=campaign.owner_id,
        team=campaign.team,
        now=now,
        commit=not fresh,
        cache=ctx.gate if fresh else None,
    )


def _in_transaction(session: Session) -> bool:
    """Whether a statement ran since the last commit (a ``scoped_session`` asks its session)."""
    real = session if isinstance(session, Session) else session()  # type: ignore[operator]
    return real.in_transaction()


def _end_lease(session: Session, batch_id: int, now: dt.datetime) -> None:
    """The batch may be taken over from ``now`` on (commits)."""
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch_id)
        .values(lease_until=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _free_lease(session: Session, batch_id: int, now: dt.datetime) -> None:
    try:
        _end_lease(session, batch_id, now)
    except Exception:  # the original error is the one to report
        session.rollback()
        log.warning("could not free the lease of batch %s", batch_id, exc_info=True)


def _has_pending(session: Session, campaign_id: int) -> bool:
    """Whether recipients wait for a claim (the members of another worker's range batch, still
    pending in their rows, do not: their batch is in flight)."""
    found = session.scalar(_WAITING, {"cid": campaign_id})
    session.rollback()
    return found is not None


#: How often a worker that keeps sending looks for batches a dead worker left (their lease is
#: minutes long, so a few seconds more go unnoticed; looking before every batch cost a query each).
#: Any outcome other than ``sent`` makes the next batch look again (a retry releases its batch).
STALE_CHECK = dt.timedelta(seconds=2)

#: ``_claim`` found only addresses suppressed since the freeze (now skipped, committed).
SKIPPED_ALL = "skipped"

Member = tuple[int, int | None, str, int]


def _claim(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    grant: quota.Grant,
    now: dt.datetime,
    ctx: RunContext,
) -> tuple[_Batch, list[Member]] | str | None:
    """Claim up to ``grant.amount`` pending recipients sharing one content into a new batch.

    Runs in the caller's transaction (the one that reserved ``grant``) and does not commit it:
    the caller builds the message and commits once, so the batch row appears with
    ``attempts=1`` together with its reservation, right before the provider call.  ``attempts``
    therefore means "handed to the provider, or about to be" exactly as the separate UPDATE it
    replaces did: more than 1 flags the SMTP mail in flight, above 0 starts SendCloud's one-hour
    window.  Returns ``None`` after rolling back (nothing pending: the reservation is gone
    with the rollback) or ``SKIPPED_ALL`` after committing the newly suppressed as skipped.

    The campaign row is updated first (the sequence number): on PostgreSQL that row lock orders
    concurrent claimers of one campaign, on SQLite the first write takes the database's write
    lock; either way the SELECT that follows sees every earlier claim.  ``SKIP LOCKED`` keeps
    PostgreSQL workers from waiting on rows another transaction is still claiming.  Lock order
    is the gate's (ledger row, then campaign row), the same as recording's (settle, then counters).
    """
    postgres = _is_postgres(session)
    seq = _NEXT_SEQ_HOT.run(session, {"cid": campaign.id, "updated_at": utcnow()}).scalar_one() - 1
    found = _next_pending(
        session, campaign, grant.amount, ctx, postgres, ranged=postgres and _claims_ranges(campaign, account)
    )
    if found is None:
        session.rollback()
        return None
    rows, template_id, sender_id = found
    members, skipped = _drop_suppressed(session, campaign, rows)
    if skipped:
        _bump(session, campaign.id, skipped=len(skipped))
    if not members:  # all suppressed since the freeze: they are skipped; the caller claims again
        quota.give_back(session, grant)
        session.commit()
        return SKIPPED_ALL
    key = f"mkt-w{campaign.workspace_id}-c{campaign.id}-b{seq}"
    lease_until = now + ctx.batch_lease
    if len(members) < grant.amount:
        # Fewer recipients than granted: give the surplus back now rather than at settlement.
        grant = _shrink(session, grant, len(members), now)
    rids = [m[0] for m in members]
    values = {
        "workspace_id": campaign.workspace_id,
        "campaign_id": campaign.id,
        "seq": seq,
        "idempotency_key": key,
        "status": "sending",
        "size": len(members),
        "attempts": 1,
        "lease_until": lease_until,
        "template_id": template_id,
        "sender_id": sender_id,
        "account_id": account.id,
        "reservation_id": grant.reservation_id,
        "cap_reservation_id": grant.cap_reservation_id,
        "created_at": now,
    }
    values = {f"new_{name}": value for name, value in values.items()}
    if postgres:  # the batch row and its members' mark in one statement
        batch_id = _INSERT_AND_MARK_HOT.run(session, {**values, "rids": rids}).scalar_one()
    else:
        batch_id = session.execute(_INSERT_BATCH, values).scalar_one()
        session.execute(_MARK_SENDING, {"rids": rids, "bid": batch_id})
    return _Batch(batch_id, seq, key, "sending", template_id, sender_id, grant, lease_until), members


#: ``_claim_then_reserve``: the account's ledger could not cover the claimed recipients (or
#: their contacts could not be read); rolled back, the batch goes the reserve-first way.
_RESERVE_FIRST = "reserve-first"


def _claim_then_reserve(
    session: Session, campaign: _CampaignFacts, account: _AccountFacts, ctx: RunContext, now: dt.datetime
) -> tuple[_Batch, list[Member], dict[int, Any]] | str:
    """PostgreSQL's claim of a batch that is not taken as a range (an SMTP account, several
    contents; see ``_claim_range``): recipients first, the quota last, committed in the same
    round trip as the batch row.  Returns the committed batch, its members and their contacts;
    ``SKIPPED_ALL`` after committing the newly suppressed as skipped; ``_RESERVE_FIRST`` after
    rolling back when nothing was claimable here or the ledger could not cover them all.

    Why this order: the quota ledger row and the campaign row are the two rows every worker of
    the account writes, in each claim and each record.  Reserved first (``_claim``), they stayed
    locked through the claim's SELECT, the contacts' lookup and the batch's INSERT with the
    worker's CPU work in between, and with three workers the record transactions queued behind
    them (``pg_stat_activity`` sampled during the dispatch benchmark: a fifth of the workers'
    time went to waiting for the ledger's lock).  Here those reads run before either row is
    touched; the ledger is locked by the reservation, the campaign row by the INSERT that also
    takes the batch's sequence number, and both are released by the COMMIT sent with it.
    The lock order stays the gate's and recording's: ledger, then campaign row.  ``SKIP
    LOCKED`` keeps concurrent claimers off each other's recipients without the campaign row.
    """
    before = ctx._claimed_up_to.get(campaign.id)
    found = _next_pending(session, campaign, min(ctx.settings.batch_size, MAX_BATCH), ctx, postgres=True)
    if found is None:
        # Nothing claimable, or only rows another claim still holds (``SKIP LOCKED``; with
        # several contents the first pending one may be held while others are free).  The
        # reserve-first claim waits on the campaign row for that claim and sees its outcome.
        session.rollback()
        return _RESERVE_FIRST
    rows, template_id, sender_id = found
    members, skipped = _drop_suppressed(session, campaign, rows)
    if not members:  # all suppressed since the freeze: they are skipped; the caller claims again
        _bump(session, campaign.id, skipped=len(skipped))
        session.commit()
        return SKIPPED_ALL
    contacts: dict[int, Any] | None = None
    grant: quota.Grant | quota.Blocked | None = None
    try:
        contacts = _batch_contacts(session, campaign, members, ctx)
    except InvalidInput:  # the reserve-first claim fails the batch with the directory's reason
        pass
    else:
        grant = _reserve(session, campaign, account, len(members), ctx, now)
    if contacts is None or not isinstance(grant, quota.Grant) or grant.amount < len(members):
        session.rollback()
        if before is None:  # the recipients were not claimed: the next claim starts at them
            ctx._claimed_up_to.pop(campaign.id, None)
        else:
            ctx._claimed_up_to[campaign.id] = before
        return _RESERVE_FIRST
    ctx.step("batch:reserved")
    if skipped:
        _bump(session, campaign.id, skipped=len(skipped))
    lease_until = now + ctx.batch_lease
    params = {
        "new_workspace_id": campaign.workspace_id,
        "new_campaign_id": campaign.id,
        "new_status": "sending",
        "new_size": len(members),
        "new_attempts": 1,
        "new_lease_until": lease_until,
        "new_template_id": template_id,
        "new_sender_id": sender_id,
        "new_account_id": account.id,
        "new_reservation_id": grant.reservation_id,
        "new_cap_reservation_id": grant.cap_reservation_id,
        "new_created_at": now,
        "key_prefix": f"mkt-w{campaign.workspace_id}-c{campaign.id}-b",
        "cid": campaign.id,
        "touched": utcnow(),
        "rids": [m[0] for m in members],
    }
    with bulk_sql.pipeline(session) as pipe:  # the batch, its members, the commit: one round trip
        answer = _NUMBER_INSERT_AND_MARK_HOT.run(session, params)
        pipe.commit()
        batch_id, seq = answer.one()  # psycopg: answered with the commit; other drivers: before it
    session.commit()
    key = f"mkt-w{campaign.workspace_id}-c{campaign.id}-b{seq}"
    batch = _Batch(batch_id, seq, key, "sending", template_id, sender_id, grant, lease_until)
    return batch, members, contacts


def _claims_ranges(campaign: _CampaignFacts, account: _AccountFacts) -> bool:
    """Whether this campaign's batches are claimed as ranges on PostgreSQL (``_claim_range``):
    one content (a range holds one template and sender) sent through SendCloud (an SMTP batch
    records mail by mail and its take-over reads which ones are still marked)."""
    return campaign.single_content is not None and account.kind == "sendcloud"


def _claim_range(
    session: Session, campaign: _CampaignFacts, account: _AccountFacts, ctx: RunContext, now: dt.datetime
) -> tuple[_Batch, list[Member], dict[int, Any]] | str:
    """PostgreSQL's claim of a SendCloud batch: the next pending recipient ids above the
    campaign's cursor become the batch, and no recipient row is written until the answer is
    recorded.  Returns the committed batch, its members and their contacts; ``SKIPPED_ALL``
    when every member was suppressed since the freeze; ``_RESERVE_FIRST`` after rolling back
    (the gate refused) or giving the grant back (nothing pending above the cursor: what is
    left are recipients a record sent back to the queue, claimed one by one by ``_claim``).

    Why: marking a batch's hundred recipients at claim time wrote each row one more time (a row
    lock, a new row version and an entry in each of its four indexes) and was two fifths of the
    database's work per batch (dispatch benchmark, PostgreSQL CPU 15.1 -> 10.1 ms a batch
    without it).  Here the claim is one UPDATE of the campaign row, which moves the cursor over
    the next ``grant.amount`` pending ids (``claim_from`` keeps where it was, so RETURNING names
    the range) and inserts the batch with that range, committed in the same round trip as the
    statement.  The campaign row serializes concurrent claimers for one statement: a claimer
    that waited re-reads the moved cursor (PostgreSQL re-evaluates the UPDATE on the row's new
    version), so two ranges never overlap.  The recipients above the cursor are written by
    nobody else (``_claim`` keeps below it in this mode), so the range's pending rows are
    exactly the batch's members until its record writes them; a take-over or a failure first
    marks them with the batch's id (``_mark_range``) and goes on as with any batch.

    Lock order is the gate's and recording's: the quota ledger (the reservation first), then
    the campaign row."""
    assert campaign.single_content is not None
    template_id, sender_id = campaign.single_content
    grant = _reserve(session, campaign, account, min(ctx.settings.batch_size, MAX_BATCH), ctx, now)
    if not isinstance(grant, quota.Grant):
        session.rollback()  # the reserve-first claim meets the same refusal and pauses
        return _RESERVE_FIRST
    ctx.step("batch:reserved")
    lease_until = now + ctx.batch_lease
    params = {
        "ws": campaign.workspace_id,
        "cid": campaign.id,
        "n": grant.amount,
        "tid": template_id,
        "sid": sender_id,
        "aid": account.id,
        "rid": grant.reservation_id,
        "crid": grant.cap_reservation_id,
        "lease_until": lease_until,
        "created_at": now,
        "touched": utcnow(),
        "key_prefix": f"mkt-w{campaign.workspace_id}-c{campaign.id}-b",
    }
    with bulk_sql.pipeline(session) as pipe:  # cursor, batch, members, commit: one round trip
        answer = _RANGE_CLAIM_HOT.run(session, params)
        pipe.commit()
        claimed = answer.all()
    session.commit()
    if not claimed:
        quota.give_back(session, grant)
        session.commit()
        return _RESERVE_FIRST
    batch_id, seq, after, upto = claimed[0][:4]
    key = f"{params['key_prefix']}{seq}"
    batch = _Batch(batch_id, seq, key, "sending", template_id, sender_id, grant, lease_until, after, upto)
    ctx.step("batch:ranged")
    try:
        rows = [row[4:] for row in claimed]
        members, skipped = _drop_suppressed(session, campaign, rows)
        if skipped:
            _bump(session, campaign.id, skipped=len(skipped))
        if not members:  # suppressed since the freeze, every one: close the empty batch
            quota.give_back(session, grant)
            _close_empty(session, batch.id, now)
            session.commit()
            return SKIPPED_ALL
        if len(members) < grant.amount:  # the campaign's end, or some suppressed since the freeze
            batch = dataclasses.replace(batch, grant=_shrink(session, grant, len(members), now))
            session.execute(_RESIZE_BATCH, {"bid": batch.id, "size": len(members)})
        try:
            contacts = _batch_contacts(session, campaign, members, ctx)
        except InvalidInput as exc:
            return _fail_batch(session, campaign, batch, members, str(exc), ctx, now, permanent=True)
        session.commit()
    except Exception:
        # The batch is committed: free its lease so the next run takes it over at once (its
        # members marked then, the suppressed among them skipped, see ``_mark_range``).
        session.rollback()
        _free_lease(session, batch.id, now)
        raise
    return batch, members, contacts


def _mark_range(session: Session, campaign: _CampaignLike, batch: _Batch) -> _Batch:
    """Mark a range batch's members with its id (``status='sending'``), as a claim by
    ``_claim`` would have, so taking it over, failing it or resending it reads them the usual
    way; the batch forgets its range and its size becomes what was marked.  Members whose
    address is suppressed are skipped here: a worker that died right after the claim never
    committed the claim-time re-check.  In the caller's transaction; the caller owns the
    batch (its lease, or the claim that made it)."""
    if batch.upto is None:
        return batch
    r = CampaignRecipient.__table__
    members = (
        r.c.campaign_id == campaign.id,
        r.c.status == "pending",
        r.c.batch_id.is_(None),
        r.c.id > batch.after,
        r.c.id <= batch.upto,
        r.c.template_id.is_not_distinct_from(batch.template_id),
        r.c.sender_id.is_not_distinct_from(batch.sender_id),
    )
    suppressed = exists().where(
        Suppression.workspace_id == campaign.workspace_id, Suppression.email == r.c.email
    )
    skipped = session.execute(
        r.update().where(*members, suppressed).values(status="skipped", reason="suppressed")
    ).rowcount
    if skipped:
        _bump(session, campaign.id, skipped=skipped)
    marked = session.execute(r.update().where(*members).values(status="sending", batch_id=batch.id)).rowcount
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id)
        .values(range_after=None, range_upto=None, size=marked)
        .execution_options(synchronize_session=False)
    )
    return dataclasses.replace(batch, after=None, upto=None)


def _close_empty(session: Session, batch_id: int, now: dt.datetime) -> None:
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch_id)
        .values(status="sent", sent_at=now, size=0, range_after=None, range_upto=None)
        .execution_options(synchronize_session=False)
    )


#: ``_claim_range``'s statement (PostgreSQL): the campaign's cursor moved over the next ``:n``
#: pending ids of the content, the batch inserted with that range and the sequence number
#: taken in the same UPDATE; the result is the batch's members (each row repeating the batch's
#: id, number and range), read in the statement's snapshot, which no other claim can change
#: above the cursor.  No row when nothing is pending above the cursor.  Why
#: ``claim_from``: PostgreSQL 15's RETURNING sees only the new row, and the range's start must
#: come from the same (possibly re-read) row as its end, not from an earlier snapshot.
_RANGE_CLAIM = text(
    "WITH numbered AS ("
    "UPDATE marketing_campaigns AS c SET next_seq = c.next_seq + 1, "
    "updated_at = CAST(:touched AS timestamptz), claim_from = c.claim_cursor, "
    "claim_cursor = COALESCE((SELECT max(p.id) FROM ("
    "SELECT r.id FROM marketing_campaign_recipients AS r "
    "WHERE r.campaign_id = c.id AND r.status = 'pending' AND r.batch_id IS NULL "
    "AND r.id > c.claim_cursor "
    "AND r.template_id IS NOT DISTINCT FROM CAST(:tid AS integer) "
    "AND r.sender_id IS NOT DISTINCT FROM CAST(:sid AS integer) "
    "ORDER BY r.id LIMIT CAST(:n AS integer)) AS p), c.claim_cursor) "
    "WHERE c.id = CAST(:cid AS integer) "
    "RETURNING c.next_seq - 1 AS seq, c.claim_from AS after, c.claim_cursor AS upto), "
    "new_batch AS (INSERT INTO marketing_send_batches (workspace_id, campaign_id, seq, "
    "idempotency_key, status, size, attempts, lease_until, template_id, sender_id, account_id, "
    "reservation_id, cap_reservation_id, created_at, range_after, range_upto) "
    "SELECT CAST(:ws AS integer), CAST(:cid AS integer), n.seq, CAST(:key_prefix AS text) || n.seq, "
    "'sending', CAST(:n AS integer), 1, CAST(:lease_until AS timestamptz), CAST(:tid AS integer), "
    "CAST(:sid AS integer), CAST(:aid AS integer), CAST(:rid AS bigint), CAST(:crid AS bigint), "
    "CAST(:created_at AS timestamptz), n.after, n.upto "
    "FROM numbered AS n WHERE n.upto > n.after "
    "RETURNING id, seq, range_after, range_upto) "
    "SELECT b.id AS batch_id, b.seq, b.range_after, b.range_upto, r.id, r.contact_id, r.email, "
    "r.attempts, EXISTS (SELECT 1 FROM marketing_suppressions AS s "
    "WHERE s.workspace_id = CAST(:ws AS integer) AND s.email = r.email) AS suppressed "
    "FROM new_batch AS b JOIN marketing_campaign_recipients AS r "
    "ON r.campaign_id = CAST(:cid AS integer) AND r.status = 'pending' AND r.batch_id IS NULL "
    "AND r.id > b.range_after AND r.id <= b.range_upto "
    "AND r.template_id IS NOT DISTINCT FROM CAST(:tid AS integer) "
    "AND r.sender_id IS NOT DISTINCT FROM CAST(:sid AS integer) "
    "ORDER BY r.id"
)
_RANGE_CLAIM_HOT = bulk_sql.Hot(_RANGE_CLAIM)
_RESIZE_BATCH = text("UPDATE marketing_send_batches SET size = :size WHERE id = :bid")


def _next_pending(
    session: Session,
    campaign: _CampaignFacts,
    limit: int,
    ctx: RunContext,
    postgres: bool,
    *,
    ranged: bool = False,
) -> tuple[Sequence[Any], int | None, int | None] | None:
    """The next ``limit`` pending recipients sharing one content, with that content's template
    and sender, or ``None`` when nothing is pending (see ``_pending_query``; locked on PostgreSQL)."""
    rows: Sequence[Any] = ()
    template_id: int | None = None
    sender_id: int | None = None
    if campaign.single_content is not None:  # one template and sender: no need to ask which
        template_id, sender_id = campaign.single_content
        pending = _pending_hot(template_id, sender_id, limit, postgres)
        after = ctx._claimed_up_to.get(campaign.id, 0)
        params = {"cid": campaign.id, "ws": campaign.workspace_id, "after": after, "ranged": ranged}
        rows = pending.run(session, params).all()
        if len(rows) < limit and after:  # ran short: rows sent back to the queue lie below
            rows = pending.run(session, {**params, "after": 0}).all()
        if rows:
            ctx._claimed_up_to[campaign.id] = max(after, rows[-1].id)
    if not rows:
        first = session.execute(_FIRST_PENDING, {"cid": campaign.id}).first()
        if first is None:
            return None
        template_id, sender_id = first
        rows = (
            _pending_hot(template_id, sender_id, limit, postgres)
            .run(session, {"cid": campaign.id, "ws": campaign.workspace_id, "after": 0, "ranged": ranged})
            .all()
        )
    if not rows:
        return None
    return rows, template_id, sender_id


def _drop_suppressed(
    session: Session, campaign: _CampaignFacts, rows: Sequence[Any]
) -> tuple[list[Member], list[int]]:
    """Split claimed rows into members and the addresses suppressed since the freeze, which are
    marked ``skipped`` here (the caller counts them on the campaign)."""
    from .. import suppression

    # The claim's own EXISTS answered for stored (normalized) spellings; any other is asked here.
    normalize = suppression.normalize
    odd = [email for _, _, email, _, hit in rows if not hit and email != normalize(email)]
    also = suppression.suppressed_among(session, campaign.workspace_id, odd) if odd else set()
    members: list[Member] = []
    skipped: list[int] = []
    for recipient_id, contact_id, email, attempts, hit in rows:
        if hit or email in also:
            skipped.append(recipient_id)
        else:
            members.append((recipient_id, contact_id, email, attempts or 0))
    if skipped:
        session.execute(
            update(CampaignRecipient)
            .where(CampaignRecipient.id.in_(skipped))
            .values(status="skipped", reason="suppressed")
            .execution_options(synchronize_session=False)
        )
    return members, skipped


_NEXT_SEQ = (
    update(Campaign.__table__)
    .where(Campaign.__table__.c.id == bindparam("cid"))
    .values(next_seq=Campaign.__table__.c.next_seq + 1)
    .returning(Campaign.__table__.c.next_seq)
)
#: ``updated_at`` (the column's onupdate) passed by hand, on both databases: the driver path
#: would not fill it, and through SQLAlchemy a given value replaces the onupdate.
_NEXT_SEQ_HOT = bulk_sql.Hot(_NEXT_SEQ)


@functools.lru_cache(maxsize=256)  # statements are immutable: built once per content
def _pending_query(template_id: int | None, sender_id: int | None, limit: int, postgres: bool) -> Select[Any]:
    """The next ``limit`` pending recipients of one content (``:cid``) above id ``:after``,
    locked on PostgreSQL, each with whether its address is on the suppression list of the
    workspace ``:ws`` now (the re-check at claim time, in the same round trip).

    Why ``:after``: on PostgreSQL the claim index keeps an entry for every earlier version of a
    claimed row until vacuum removes it, and a scan from the start of the campaign's pending
    range steps over all of them: the claim got slower with every batch (2.5 ms after 30,000
    recipients, growing with the campaign).  Starting just above this worker's last claim skips
    them; the claim looks from the start again only when that comes up short (the end of the
    campaign, or rows a temporary failure sent back to the queue).
    """
    query = (
        select(
            CampaignRecipient.id,
            CampaignRecipient.contact_id,
            CampaignRecipient.email,
            CampaignRecipient.attempts,
            exists()
            .where(
                Suppression.workspace_id == bindparam("ws"),
                Suppression.email == CampaignRecipient.email,
            )
            .label("suppressed"),
        )
        .where(
            CampaignRecipient.campaign_id == bindparam("cid"),
            CampaignRecipient.status == "pending",
            CampaignRecipient.id > bindparam("after"),
            CampaignRecipient.template_id.is_(None)
            if template_id is None
            else CampaignRecipient.template_id == template_id,
            CampaignRecipient.sender_id.is_(None)
            if sender_id is None
            else CampaignRecipient.sender_id == sender_id,
            # Members of a range batch (``_claim_range``) are pending without a batch at or
            # below the cursor: theirs until recorded.  Where ranges are claimed (``:ranged``),
            # everything above the cursor is left to them too; what is claimed here is what a
            # record sent back to the queue (pending, still naming its last batch).
            not_(_IN_A_RANGE),
            or_(bindparam("ranged", type_=Boolean) == false(), CampaignRecipient.id <= _CURSOR),
        )
        .order_by(CampaignRecipient.id)
        .limit(limit)
    )
    return query.with_for_update(skip_locked=True) if postgres else query


_CURSOR = (
    select(Campaign.__table__.c.claim_cursor)
    .where(Campaign.__table__.c.id == bindparam("cid"))
    .scalar_subquery()
)


def in_open_range(campaign_id: Any) -> Any:
    """A recipient row that is a member of a range batch not yet recorded (``_claim_range``):
    pending, without a batch, at or below its campaign's claim cursor.  ``campaign_id``: a
    parameter, or the recipients' own column (correlated, as ``events`` uses it)."""
    cursor = (
        select(Campaign.__table__.c.claim_cursor)
        .where(Campaign.__table__.c.id == campaign_id)
        .scalar_subquery()
    )
    return and_(
        CampaignRecipient.status == "pending",
        CampaignRecipient.batch_id.is_(None),
        CampaignRecipient.id <= cursor,
    )


#: A recipient of the campaign ``:cid`` waiting for a claim: pending and not a member of a
#: range batch.
_IN_A_RANGE = in_open_range(bindparam("cid"))
_WAITING = (
    select(CampaignRecipient.id)
    .where(
        CampaignRecipient.campaign_id == bindparam("cid"),
        CampaignRecipient.status == "pending",
        not_(_IN_A_RANGE),
    )
    .limit(1)
)


@functools.lru_cache(maxsize=256)
def _pending_hot(template_id: int | None, sender_id: int | None, limit: int, postgres: bool) -> bulk_sql.Hot:
    return bulk_sql.Hot(_pending_query(template_id, sender_id, limit, postgres))


_FIRST_PENDING = (
    select(CampaignRecipient.template_id, CampaignRecipient.sender_id)
    .where(CampaignRecipient.campaign_id == bindparam("cid"), CampaignRecipient.status == "pending")
    .order_by(CampaignRecipient.id)
    .limit(1)
)
_BATCHES = SendBatch.__table__
_NEW_BATCH_COLUMNS = (
    "workspace_id",
    "campaign_id",
    "seq",
    "idempotency_key",
    "status",
    "size",
    "attempts",
    "lease_until",
    "template_id",
    "sender_id",
    "account_id",
    "reservation_id",
    "cap_reservation_id",
    "created_at",
)
#: Parameters ``new_<column>``: executed with a key named like a column, an UPDATE in the same
#: statement (``_INSERT_AND_MARK_PG``) would also SET that column of the recipients.
_INSERT_BATCH = (
    _BATCHES.insert()
    .values({name: bindparam(f"new_{name}", type_=_BATCHES.c[name].type) for name in _NEW_BATCH_COLUMNS})
    .returning(_BATCHES.c.id)
)
_MARK_SENDING = (
    CampaignRecipient.__table__.update()
    .where(bulk_sql.one_of(CampaignRecipient.__table__.c.id, "rids", BigInteger, postgres=False))
    .values(status="sending", batch_id=bindparam("bid"))
)
#: PostgreSQL: the batch row inserted and its members (``:rids``, one array parameter, see
#: ``bulk_sql.one_of``) marked with its id in ONE statement (a data-modifying WITH runs exactly
#: once, referenced or not); the new batch id is the result.
_NEW_BATCH_CTE = _INSERT_BATCH.cte("new_batch")
_INSERT_AND_MARK_PG = select(_NEW_BATCH_CTE.c.id).add_cte(
    CampaignRecipient.__table__.update()
    .where(bulk_sql.one_of(CampaignRecipient.__table__.c.id, "rids", BigInteger, postgres=True))
    .values(status="sending", batch_id=select(_NEW_BATCH_CTE.c.id).scalar_subquery())
    .cte("marked")
)
_INSERT_AND_MARK_HOT = bulk_sql.Hot(_INSERT_AND_MARK_PG)


#: PostgreSQL (``_claim_then_reserve``): the campaign's next sequence number taken, the batch
#: row inserted with it (and its idempotency key made of it) and its members marked, in one
#: statement; the result is the batch's id and sequence number.
_NEXT_SEQ_CTE = (
    Campaign.__table__.update()
    .where(Campaign.__table__.c.id == bindparam("cid"))
    .values(
        next_seq=Campaign.__table__.c.next_seq + 1,
        updated_at=bindparam("touched", type_=Campaign.__table__.c.updated_at.type),
    )
    .returning((Campaign.__table__.c.next_seq - 1).label("seq"))
    .cte("numbered")
)
_NUMBERED_COLUMNS = tuple(name for name in _NEW_BATCH_COLUMNS if name not in ("seq", "idempotency_key"))
_NUMBERED_BATCH_CTE = (
    _BATCHES.insert()
    .from_select(
        [*_NUMBERED_COLUMNS, "seq", "idempotency_key"],
        select(
            *(bindparam(f"new_{name}", type_=_BATCHES.c[name].type) for name in _NUMBERED_COLUMNS),
            _NEXT_SEQ_CTE.c.seq,
            bindparam("key_prefix", type_=String()) + cast(_NEXT_SEQ_CTE.c.seq, String()),
        ),
    )
    .returning(_BATCHES.c.id, _BATCHES.c.seq)
    .cte("new_batch")
)
_NUMBER_INSERT_AND_MARK_PG = select(_NUMBERED_BATCH_CTE.c.id, _NUMBERED_BATCH_CTE.c.seq).add_cte(
    CampaignRecipient.__table__.update()
    .where(bulk_sql.one_of(CampaignRecipient.__table__.c.id, "rids", BigInteger, postgres=True))
    .values(status="sending", batch_id=select(_NUMBERED_BATCH_CTE.c.id).scalar_subquery())
    .cte("marked")
)
_NUMBER_INSERT_AND_MARK_HOT = bulk_sql.Hot(_NUMBER_INSERT_AND_MARK_PG)


def _shrink(session: Session, grant: quota.Grant, amount: int, now: dt.datetime) -> quota.Grant:
    """Reduce a held grant to ``amount`` by settling the difference as unused (same transaction)."""
    from ..models import QuotaLedger, QuotaReservation

    for reservation_id in (grant.reservation_id, grant.cap_reservation_id):
        if reservation_id is None:
            continue
        row = session.execute(
            select(QuotaReservation.ledger_id, QuotaReservation.amount, QuotaReservation.status).where(
                QuotaReservation.id == reservation_id
            )
        ).one()
        if row.status != quota.HELD or row.amount <= amount:
            continue
        surplus = row.amount - amount
        session.execute(
            update(QuotaReservation)
            .where(QuotaReservation.id == reservation_id, QuotaReservation.status == quota.HELD)
            .values(amount=amount)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(QuotaLedger)
            .where(QuotaLedger.id == row.ledger_id)
            .values(reserved=QuotaLedger.reserved - surplus)
            .execution_options(synchronize_session=False)
        )
    return dataclasses.replace(grant, amount=amount)


def _take_over_stale_batch(
    session: Session, campaign: _CampaignFacts, account: _AccountFacts, ctx: RunContext, now: dt.datetime
) -> _Batch | str | None:
    """A batch of this campaign whose worker died or gave up for now: take it over, or ``None``.

    Taking over is one conditional UPDATE on the lease, so two workers cannot both resume it.
    A batch older than the provider's idempotency window is not re-sent (its outcome becomes
    ``unknown`` for a person to decide).  Returns a run_batch outcome string when the batch
    cannot be retried now.
    """
    own = [entry[0] for entry in ctx._in_flight or ()]  # out and awaited here, whatever their lease
    row = session.execute(
        select(SendBatch)
        .where(
            SendBatch.campaign_id == campaign.id,
            SendBatch.status.in_(("claimed", "sending")),
            SendBatch.lease_until < now,
            *((SendBatch.id.not_in(own),) if own else ()),
        )
        .order_by(SendBatch.id)
        .limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    new_lease = now + ctx.batch_lease
    taken = session.execute(
        update(SendBatch)
        .where(
            SendBatch.id == row.id, SendBatch.lease_until == row.lease_until, SendBatch.status == row.status
        )
        .values(lease_until=new_lease)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        session.rollback()
        return None
    batch_id, status, key, seq = row.id, row.status, row.idempotency_key, row.seq
    template_id, sender_id = row.template_id, row.sender_id
    if row.range_upto is not None:  # a range batch: its members marked, as any other batch's
        ranged = _Batch(
            batch_id, seq, key, status, template_id, sender_id, None, None, row.range_after, row.range_upto
        )
        _mark_range(session, campaign, ranged)
        session.commit()
    reservation_id, cap_reservation_id = row.reservation_id, row.cap_reservation_id
    last_attempt = row.lease_until - ctx.batch_lease if row.lease_until else row.created_at
    members = (
        session.scalar(
            select(func.count())
            .select_from(CampaignRecipient)
            .where(CampaignRecipient.batch_id == batch_id, CampaignRecipient.status == "sending")
        )
        or 0
    )
    if members == 0 and account.kind == "smtp" and reservation_id is not None:
        # Every mail recorded, the worker died before closing the batch: settle and count now.
        amount = session.scalar(select(QuotaReservation.amount).where(QuotaReservation.id == reservation_id))
        grant = quota.Grant(int(amount or 0), reservation_id, cap_reservation_id)
        closing = _Batch(batch_id, seq, key, status, template_id, sender_id, grant, new_lease)
        from .smtp_batch import finish_smtp_batch

        finish_smtp_batch(session, campaign.workspace_id, campaign.id, closing, grant, now)
        session.commit()
        return None
    if members == 0:
        session.execute(
            update(SendBatch)
            .where(SendBatch.id == batch_id)
            .values(status="sent", sent_at=now)
            .execution_options(synchronize_session=False)
        )
        for rid in (reservation_id, cap_reservation_id):
            if rid is not None:
                quota.release(session, rid, commit=False)
        session.commit()
        return None
    if (
        status == "sending"
        and account.kind == "sendcloud"
        and row.attempts > 0
        and now - last_attempt > IDEMPOTENCY_WINDOW
    ):
        _mark_unknown(session, campaign.id, batch_id, now)
        return None
    grant = _reuse_or_reserve(
        session, campaign, account, ctx, reservation_id, cap_reservation_id, members, now
    )
    if isinstance(grant, quota.Blocked):
        _end_lease(session, batch_id, now)
        fresh = _campaign(session, campaign.id)
        if fresh is not None and fresh.status == lifecycle.RUNNING:
            _pause(
                session, fresh, grant.reason, detail=grant.detail or None, retry_at=grant.retry_at, now=now
            )
        return BLOCKED
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch_id)
        .values(
            reservation_id=grant.reservation_id, cap_reservation_id=grant.cap_reservation_id, status="sending"
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    ctx.step("batch:taken_over")
    return _Batch(batch_id, seq, key, status, template_id, sender_id, grant, new_lease)


def _reuse_or_reserve(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    ctx: RunContext,
    reservation_id: int | None,
    cap_reservation_id: int | None,
    members: int,
    now: dt.datetime,
) -> quota.Grant | quota.Blocked:
    """The batch's own reservation if it is still held (renewed), else a new one for its members."""
    from ..models import QuotaReservation

    if reservation_id is not None:
        held = session.execute(
            select(QuotaReservation.amount, QuotaReservation.status).where(
                QuotaReservation.id == reservation_id
            )
        ).one_or_none()
        if held is not None and held.status == quota.HELD and held.amount >= members:
            grant = quota.Grant(held.amount, reservation_id, cap_reservation_id)
            quota.renew_grant(session, grant)
            return grant
        if held is not None and held.status == quota.HELD:
            quota.release(session, reservation_id, commit=False)
            if cap_reservation_id is not None:
                quota.release(session, cap_reservation_id, commit=False)
            session.commit()
    grant = _reserve(session, campaign, account, members, ctx, now, fresh=False)
    if isinstance(grant, quota.Grant) and grant.amount < members:
        # A batch is sent whole or not at all: a partial grant cannot cover it.
        quota.give_back(session, grant)
        session.commit()
        return quota.Blocked("quota", "", quota.next_provider_midnight(now))
    return grant


def _mark_unknown(session: Session, campaign_id: int, batch_id: int, now: dt.datetime) -> None:
    reason = "outcome unknown: the batch was interrupted more than an hour ago; check the provider's log"
    changed = session.execute(
        update(CampaignRecipient)
        .where(CampaignRecipient.batch_id == batch_id, CampaignRecipient.status == "sending")
        .values(status="unknown", reason=reason)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch_id)
        .values(status="unknown", error=reason)
        .execution_options(synchronize_session=False)
    )
    _bump(session, campaign_id, failed=changed)
    session.commit()


# --------------------------------------------------------------------------- sending


def _members(session: Session, batch_id: int) -> list[tuple[int, int | None, str, int]]:
    return [
        (r.id, r.contact_id, r.email, r.attempts)
        for r in session.execute(
            select(
                CampaignRecipient.id,
                CampaignRecipient.contact_id,
                CampaignRecipient.email,
                CampaignRecipient.attempts,
            )
            .where(CampaignRecipient.batch_id == batch_id, CampaignRecipient.status == "sending")
            .order_by(CampaignRecipient.id)
        ).all()
    ]


def _content(session: Session, campaign: _CampaignFacts, batch: _Batch, ctx: RunContext):
    from . import rendering

    key = (campaign.id, batch.template_id, batch.sender_id)
    content = ctx._contents.get(key)
    if content is None:
        template = session.get(Template, batch.template_id) if batch.template_id else None
        sender = session.get(Sender, batch.sender_id) if batch.sender_id else None
        if template is None:
            raise InvalidInput("the campaign's template no longer exists", field="template_ids")
        content = rendering.compile_content(
            template,
            sender=sender,
            company_name=(sender.company_name if sender else "") or "",
            postal_address=(sender.postal_address if sender else "") or "",
            tracking=bool(campaign.tracking),
        )
        sender_info = {
            "from_address": sender.from_address if sender else "",
            "from_name": sender.from_name if sender else "",
            "reply_to": sender.reply_to if sender else None,
            "template_name": template.provider_template_name if template.review_state == "approved" else None,
        }
        content = ctx._contents[key] = (content, sender_info)
    return content


def _batch_contacts(
    session: Session, campaign: _CampaignFacts, members: Sequence[Member], ctx: RunContext
) -> dict[int, Any]:
    """``{contact id: record}`` of a batch's members, from the host's directory."""
    contact_ids = [m[1] for m in members if m[1] is not None]
    if not contact_ids:
        return {}
    directory = ctx.directory
    # A host directory written against the contract before ``contacts_by_id`` (duck-typed, not
    # a ``ContactDirectory``) is read through its ``contacts``.
    by_id = getattr(directory, "contacts_by_id", None)
    if by_id is None:
        found = ContactDirectory.contacts_by_id(directory, session, campaign.workspace_id, contact_ids)
    else:
        found = by_id(session, campaign.workspace_id, contact_ids)
    return {record.id: record for record in found}


def _build_message(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    batch: _Batch,
    members: Sequence[tuple[int, int | None, str, int]],
    ctx: RunContext,
    now: dt.datetime,
    contacts: dict[int, Any] | None = None,
) -> BatchMessage:
    """The provider-neutral message of a batch; ``contacts``: its members' records, looked up
    here when not given (``_batch_contacts``)."""
    from .. import tracking
    from . import rendering

    content, sender_info = _content(session, campaign, batch, ctx)
    if content.tracking:  # links registered and rewritten once per campaign content
        tracked_key = ("tracked", campaign.id, batch.template_id, batch.sender_id)
        tracked = ctx._contents.get(tracked_key)
        if tracked is None:
            tracked = ctx._contents[tracked_key] = tracking.tracked_content(
                session,
                ctx.settings,
                workspace_id=campaign.workspace_id,
                campaign_id=campaign.id,
                content=content,
            )
        content = tracked
    if contacts is None:
        contacts = _batch_contacts(session, campaign, members, ctx)
    from_address = sender_info["from_address"] or account.from_address or ""
    domain = from_address.rpartition("@")[2] or "localhost"
    rng = random.Random(batch.id)
    recipients = []
    public = tracking.public_base(ctx.settings)
    link_tokens = tracking.link_token_maker(ctx.settings, campaign.workspace_id)
    for recipient_id, contact_id, email, _attempts in members:
        unsubscribe, opened, clicked = link_tokens(recipient_id)
        values = rendering.recipient_values(
            content,
            contacts.get(contact_id) if contact_id is not None else None,
            email=email,
            unsubscribe_url=f"{public}/u/{unsubscribe}",
            now=now,
            rng=rng,
        )
        values[tracking.UNSUBSCRIBE_PLACEHOLDER] = unsubscribe
        if content.tracking:
            values[rendering.OPEN_PLACEHOLDER] = opened
            values[rendering.CLICK_PLACEHOLDER] = clicked
        message_id = f"<mkt.{campaign.id}.{recipient_id}@{domain}>" if account.kind == "smtp" else None
        recipients.append(Recipient(email=email, variables=values, message_id=message_id))
    template_name = sender_info.get("template_name") if account.kind == "sendcloud" else None
    return BatchMessage(
        from_address=from_address,
        from_name=campaign.from_name or sender_info["from_name"] or "",
        subject=content.subject,
        html=content.html,
        text=content.text or None,
        recipients=recipients,
        idempotency_key=batch.key,
        reply_to=campaign.reply_to or sender_info["reply_to"] or None,
        headers={
            "SC-Custom-campaign": str(campaign.id),
            "SC-Custom-batch": str(batch.id),
            # RFC 8058 one-click + mailto; the provider fills each recipient's token
            **tracking.list_unsubscribe_headers(
                ctx.settings,
                campaign.reply_to or sender_info["reply_to"] or from_address,
                tracking.UNSUBSCRIBE_PLACEHOLDER,
            ),
        },
        label=campaign.label or None,
        kind="batch",
        template_name=template_name or None,
    )


def _send(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    batch: _Batch,
    ctx: RunContext,
    now: dt.datetime,
    prepared: tuple[list[Member], BatchMessage] | None = None,
) -> str:
    """Send a batch and record the answer.  ``prepared``: a fresh claim's members and message,
    already committed with ``attempts=1``; a taken-over batch is loaded and counted here."""
    assert batch.grant is not None
    if prepared is not None:
        members, message = prepared
        ctx.step("batch:before_send")
        return _deliver(session, campaign, account, batch, members, message, ctx, now)
    members = _members(session, batch.id)
    if not members:
        quota.give_back(session, batch.grant)
        session.execute(
            update(SendBatch)
            .where(SendBatch.id == batch.id)
            .values(status="sent", sent_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return SENT
    try:
        message = _build_message(session, campaign, account, batch, members, ctx, now)
    except InvalidInput as exc:
        return _fail_batch(session, campaign, batch, members, str(exc), ctx, now, permanent=True)
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id)
        .values(attempts=SendBatch.attempts + 1, lease_until=now + ctx.batch_lease)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    ctx.step("batch:before_send")
    return _deliver(session, campaign, account, batch, members, message, ctx, now)


def _deliver(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    batch: _Batch,
    members: Sequence[Member],
    message: BatchMessage,
    ctx: RunContext,
    now: dt.datetime,
) -> str:
    """The provider call and its recording (the batch is committed with its attempt counted).
    Inside ``run_campaign`` with batches in flight, the answer is awaited and recorded there
    (``IN_FLIGHT``): the session holds no transaction meanwhile, the batch its lease."""
    if account.kind == "smtp":
        from .smtp_batch import send_smtp_batch

        return send_smtp_batch(session, campaign, account, batch, members, message, ctx, now)
    answer = begin_batch(_provider(session, ctx, account), message)
    finish = functools.partial(
        _finish_delivery, session, campaign, account, batch, members, message, ctx, now, answer
    )
    ctx._sends += 1
    if ctx._in_flight is not None:
        ctx._in_flight.append((batch.id, ctx._sends, finish))
        return IN_FLIGHT
    return finish()


def _finish_delivery(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    batch: _Batch,
    members: Sequence[Member],
    message: BatchMessage,
    ctx: RunContext,
    now: dt.datetime,
    answer: Callable[[], list[SendResult]],
) -> str:
    """Wait for the provider's answer to a sent batch and record it."""
    try:
        results = answer()
    except DuplicateRequest:
        results = [SendResult(r.email, "accepted") for r in message.recipients]
    except ProviderQuotaExceeded as exc:
        return _provider_refused_quota(session, campaign, batch, str(exc), ctx, now)
    except AuthenticationFailed as exc:
        ctx.drop_provider(account.id)
        return _hold_batch_and_pause(session, campaign, batch, "account", str(exc), ctx, now)
    except (Throttled, ProviderError) as exc:
        if getattr(exc, "status_code", None) == TEMPLATE_MISMATCH:
            return _hold_batch_and_pause(session, campaign, batch, "template", str(exc), ctx, now)
        if isinstance(exc, Throttled) or exc.retryable:
            return _retry_later(
                session, campaign, batch, str(exc), ctx, now, throttled=isinstance(exc, Throttled)
            )
        return _fail_batch(session, campaign, batch, members, str(exc), ctx, now, permanent=True)
    except InvalidInput as exc:
        return _fail_batch(session, campaign, batch, members, str(exc), ctx, now, permanent=True)
    ctx.step("batch:after_send")
    with bulk_sql.pipeline(session) as pipe:  # PostgreSQL: writes and commit in few round trips
        settled = _record(session, campaign, batch, members, results, now)
        pipe.commit()
    session.commit()
    if quota.unsettled(settled):  # no known path leads here; say so if one does
        log.warning("batch %s: its quota reservation was no longer held or smaller than used", batch.id)
    ctx.step("batch:recorded")
    return SENT


def _record(
    session: Session,
    campaign: _CampaignLike,
    batch: _Batch,
    members: Sequence[tuple[int, int | None, str, int]],
    results: Sequence[SendResult],
    now: dt.datetime,
) -> list[Any]:
    """Write per-recipient results, settle the quota and count, in the caller's transaction;
    returns the settlement's answers (``quota.unsettled``)."""

    from .. import counters

    by_email: dict[str, SendResult] = {}
    for result in results:
        by_email.setdefault(result.recipient.lower(), result)
    sent_at = bulk_sql.to_db(session, CampaignRecipient.__table__.c.sent_at)(now)
    if isinstance(sent_at, dt.datetime):  # PostgreSQL's JSON rows: the text once, not once per row
        sent_at = sent_at.isoformat()
    updates: list[tuple[Any, ...]] = []
    accepted = failed = retried = unknown = 0
    for recipient_id, _contact_id, email, attempts in members:
        result = by_email.get(email.lower())
        attempts += 1
        if result is None:
            status, reason, message_id = "unknown", "the provider did not report this recipient", None
        else:
            status, reason, message_id = result.status, result.error, result.provider_message_id
        if status == "accepted":
            accepted += 1
            updates.append(_row(recipient_id, "accepted", None, message_id, sent_at, attempts, batch.id))
        elif status == "rejected":
            failed += 1
            updates.append(_row(recipient_id, "failed", reason, message_id, None, attempts, batch.id))
        elif status == "failed" and attempts < MAX_RECIPIENT_ATTEMPTS:
            retried += 1
            updates.append(_row(recipient_id, "pending", reason, None, None, attempts, batch.id))
        elif status == "failed":
            failed += 1
            updates.append(_row(recipient_id, "failed", reason, None, None, attempts, batch.id))
        else:
            unknown += 1
            updates.append(_row(recipient_id, "unknown", reason, message_id, sent_at, attempts, batch.id))
    bulk_sql.executemany(session, _RECORD_RECIPIENT, updates, postgres_sql=_RECORD_RECIPIENT_PG)
    assert batch.grant is not None
    outcomes = [  # submitted = handed over with a final answer; sent = accepted
        (member[2], row[0] == "accepted")
        for member, row in zip(members, updates, strict=True)
        if row[0] != "pending"
    ]
    counters.add_send_counts(
        session,
        workspace_id=campaign.workspace_id,
        campaign_id=campaign.id,
        at=now,
        template_id=batch.template_id,
        sender_id=batch.sender_id,
        outcomes=outcomes,
    )
    settled = quota.settle(session, batch.grant, accepted + unknown)
    closed = {"bid": batch.id, "at": now}
    counted = {"cid": campaign.id, "sent": accepted, "failed": failed + unknown}
    if _is_postgres(session):  # batch closed and campaign counted in one statement
        _CLOSE_AND_COUNT_HOT[bool(accepted)].run(session, {**closed, **counted, "touched": utcnow()})
    else:
        session.execute(_BATCH_SENT, closed)
        session.execute(_ADD_OUTCOMES_AND_RESET if accepted else _ADD_OUTCOMES, counted)
    return settled


#: A recipient's recorded result (sqlite3 ``?`` style, see ``plugin.bulk_sql``).  A deliver or
#: bounce webhook may already have arrived (it is mapped by our header before the provider id
#: is stored): such a recipient never moves back.  The SET expressions read the row as it was.
_SETTLED = "IN ('delivered', 'bounced', 'invalid')"
_RECORD_RECIPIENT = (
    "UPDATE marketing_campaign_recipients SET "  # noqa: S608 (constant fragments, no input)
    f"status = CASE WHEN status {_SETTLED} THEN status ELSE ? END, "
    f"reason = CASE WHEN status {_SETTLED} THEN reason ELSE ? END, "
    "provider_message_id = ?, sent_at = ?, attempts = ?, batch_id = ? "
    "WHERE id = ?"
)
#: The same for PostgreSQL, all rows in one statement (``bulk_sql.executemany``'s JSON form).
#: Why the ids twice (the join and ``= ANY``): joined only on ``r.id = v.rid``, the planner
#: cannot know the JSON holds a hundred ids, and below ~50,000 recipients it hashed them and
#: scanned the whole recipients table (3.9 ms per batch at 10,000 rows, growing with the
#: campaign); ``= ANY`` of the materialized ids is an index condition, 100 lookups at any size.
_RECORD_RECIPIENT_PG = (
    "WITH v AS MATERIALIZED (SELECT e->>0 AS st, e->>1 AS rs, e->>2 AS mid, "  # noqa: S608 (constants)
    "(e->>3)::timestamptz AS at, (e->>4)::integer AS n, (e->>5)::bigint AS bid, (e->>6)::bigint AS rid "
    "FROM jsonb_array_elements(?::jsonb) AS e) "
    "UPDATE marketing_campaign_recipients AS r SET "
    f"status = CASE WHEN r.status {_SETTLED} THEN r.status ELSE v.st END, "
    f"reason = CASE WHEN r.status {_SETTLED} THEN r.reason ELSE v.rs END, "
    "provider_message_id = v.mid, sent_at = v.at, attempts = v.n, batch_id = v.bid "
    "FROM v WHERE r.id = v.rid AND r.id = ANY (ARRAY(SELECT rid FROM v))"
)
_BATCH_SENT = (
    SendBatch.__table__.update()
    .where(SendBatch.__table__.c.id == bindparam("bid"))
    .values(status="sent", sent_at=bindparam("at"), error=None)
)
_CAMPAIGN = Campaign.__table__
_ADD_OUTCOMES = (
    _CAMPAIGN.update()
    .where(_CAMPAIGN.c.id == bindparam("cid"))
    .values(
        sent=_CAMPAIGN.c.sent + bindparam("sent"),
        failed=_CAMPAIGN.c.failed + bindparam("failed"),
    )
)
#: An accepted mail also ends a run of consecutive failures.
_ADD_OUTCOMES_AND_RESET = _ADD_OUTCOMES.values(consecutive_failures=0)
#: PostgreSQL: ``_BATCH_SENT`` as a data-modifying WITH of the campaign's count (without and
#: with the reset).  The batch row is this worker's own (leased; nobody else writes it), so
#: writing it in the same statement adds no lock another transaction could be waiting for.
#: (``updated_at`` as a parameter: the column's ``onupdate`` is not applied inside this form.)
_CLOSE_AND_COUNT_PG = tuple(
    count.values(updated_at=bindparam("touched", type_=_CAMPAIGN.c.updated_at.type)).add_cte(
        _BATCH_SENT.cte("closed")
    )
    for count in (_ADD_OUTCOMES, _ADD_OUTCOMES_AND_RESET)
)
_CLOSE_AND_COUNT_HOT = tuple(bulk_sql.Hot(statement) for statement in _CLOSE_AND_COUNT_PG)


def _row(
    recipient_id: int,
    status: str,
    reason: str | None,
    message_id: str | None,
    sent_at: Any,
    attempts: int,
    batch_id: int | None,
) -> tuple[Any, ...]:
    """One recipient's ``_RECORD_RECIPIENT`` parameters, in its order (``sent_at`` already as the
    driver takes it).  A recipient going back to ``pending`` keeps naming its batch: that tells
    it from the members of a range batch not yet recorded (see ``_pending_query``)."""
    return (
        status,
        (reason or None) and str(reason)[:255],
        message_id,
        sent_at,
        attempts,
        batch_id,
        recipient_id,
    )


def _backoff(ctx: RunContext, failures: int, *, throttled: bool) -> float:
    base = ctx.backoff_base * (2 ** max(0, failures - 1))
    if throttled:
        base = max(base, ctx.backoff_base)
    return min(MAX_BACKOFF_SECONDS, base) * (0.75 + random.random() * 0.5)


def _retry_later(
    session: Session,
    campaign: _CampaignLike,
    batch: _Batch,
    error: str,
    ctx: RunContext,
    now: dt.datetime,
    *,
    throttled: bool,
) -> str:
    """A temporary failure: keep the batch and its quota, free its lease, back off the campaign.

    The batch keeps its key, so the retry cannot duplicate what the provider may already have
    accepted (a timeout after acceptance).
    """
    failures = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id)
        .values(
            consecutive_failures=Campaign.consecutive_failures
            + (0 if throttled or not ctx._count_failures else 1),
            last_error=error[:2000],
        )
        .returning(Campaign.consecutive_failures)
    ).scalar_one()
    delay = _backoff(ctx, failures or 1, throttled=throttled)
    retry_at = now + dt.timedelta(seconds=delay)
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id)
        .values(lease_until=now, error=error[:2000])
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id)
        .values(retry_at=retry_at)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if failures >= ctx.settings.max_consecutive_failures:
        fresh = _campaign(session, campaign.id)
        if fresh is not None and fresh.status == lifecycle.RUNNING:
            _pause(session, fresh, "provider", detail=error[:500], retry_at=now + PROVIDER_COOLDOWN, now=now)
        return BLOCKED
    return RETRY


def _provider_refused_quota(
    session: Session, campaign: _CampaignLike, batch: _Batch, error: str, ctx: RunContext, now: dt.datetime
) -> str:
    """SendCloud says the quota (or the balance) is used up: nothing was sent; pause at once."""
    assert batch.grant is not None
    quota.give_back(session, batch.grant)
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id)
        .values(status="claimed", lease_until=now, error=error[:2000])
        .execution_options(synchronize_session=False)
    )
    session.commit()
    balance = "余额" in error or "balance" in error.lower()
    fresh = _campaign(session, campaign.id)
    if fresh is not None and fresh.status == lifecycle.RUNNING:
        if balance:
            _pause(session, fresh, "balance", detail=error[:500], retry_at=now + quota.RECHECK_AFTER, now=now)
        else:
            _pause(session, fresh, "quota", detail=None, retry_at=quota.next_provider_midnight(now), now=now)
    return BLOCKED


def _hold_batch_and_pause(
    session: Session,
    campaign: _CampaignLike,
    batch: _Batch,
    reason: str,
    error: str,
    ctx: RunContext,
    now: dt.datetime,
) -> str:
    """A refusal a person must fix (credentials, template review): keep the batch for later."""
    assert batch.grant is not None
    quota.give_back(session, batch.grant)
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id)
        .values(status="claimed", lease_until=now, error=error[:2000])
        .execution_options(synchronize_session=False)
    )
    session.commit()
    fresh = _campaign(session, campaign.id)
    if fresh is not None and fresh.status == lifecycle.RUNNING:
        _pause(session, fresh, reason, detail=error[:500], now=now)
    return BLOCKED


def _fail_batch(
    session: Session,
    campaign: _CampaignLike,
    batch: _Batch,
    members: Sequence[tuple[int, int | None, str, int]],
    error: str,
    ctx: RunContext,
    now: dt.datetime,
    *,
    permanent: bool,
) -> str:
    """A permanent refusal of the whole batch: its recipients fail with the reason; never re-sent."""
    assert batch.grant is not None
    batch = _mark_range(session, campaign, batch)
    quota.give_back(session, batch.grant)
    session.execute(
        update(CampaignRecipient)
        .where(CampaignRecipient.batch_id == batch.id, CampaignRecipient.status == "sending")
        .values(status="failed", reason=error[:255])
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id)
        .values(status="failed", error=error[:2000])
        .execution_options(synchronize_session=False)
    )
    failures = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id)
        .values(
            failed=Campaign.failed + len(members),
            consecutive_failures=Campaign.consecutive_failures + (1 if ctx._count_failures else 0),
            last_error=error[:2000],
        )
        .returning(Campaign.consecutive_failures)
    ).scalar_one()
    session.commit()
    if failures >= ctx.settings.max_consecutive_failures:
        fresh = _campaign(session, campaign.id)
        if fresh is not None and fresh.status == lifecycle.RUNNING:
            _pause(session, fresh, "provider", detail=error[:500], retry_at=now + PROVIDER_COOLDOWN, now=now)
        return BLOCKED
    return SENT


# --------------------------------------------------------------------------- the loop


def run_campaign(
    session: Session, campaign_id: int, ctx: RunContext, *, should_stop: Callable[[], bool] = lambda: False
) -> str:
    """Run batches until the campaign is done, paused, backing off or stopped; pace at its rate.

    Returns the last ``run_batch`` outcome (``done``, ``blocked``, ``retry``, ``idle``), or
    ``idle`` when stopped.  A ``retry`` with a short back-off is waited out here, so a worker
    rides through brief provider hiccups without giving the campaign back.

    Without a rate, up to ``campaign_in_flight`` SendCloud batches are sent before the oldest
    answer is awaited (``IN_FLIGHT``): the provider works on them while this thread claims,
    builds and records.  Every batch is claimed and committed before it is sent and recorded
    after its answer, as with one at a time, so a crash leaves nothing a take-over would not
    mend (re-sent batches keep their ``sendRequestId``).  Whatever the next step, the batches in
    flight are landed first, so a pause, a back-off or the end is decided on recorded results.
    """
    rate = _rate(session, campaign_id, ctx)
    depth = 1 if rate else max(1, int(getattr(ctx.settings, "campaign_in_flight", 1)))
    in_flight: deque[_InFlight] = deque()
    ctx._in_flight = in_flight if depth > 1 else None
    started = time.monotonic()
    sent_total = 0
    paused = None  # a landed batch paused the campaign: that is what this run ended with
    try:
        while not should_stop():
            if len(in_flight) >= depth:
                paused = _land(session, in_flight.popleft(), campaign_id, ctx, paused)
                continue
            before = _sent_count(session, campaign_id) if rate else 0
            outcome = run_batch(session, campaign_id, ctx)
            if outcome == IN_FLIGHT:
                continue
            if in_flight and outcome != SENT:  # land the batches in flight first
                paused = _land_all(session, in_flight, campaign_id, ctx, paused)
                if outcome == IDLE:  # nothing was claimable: their results may change that
                    continue
            if outcome == SENT:
                sent_total += max(0, _sent_count(session, campaign_id) - before) if rate else 0
                if rate:
                    ahead = sent_total / rate - (time.monotonic() - started)
                    if ahead > 0:
                        ctx.sleep(ahead)
                continue
            if outcome == RETRY:
                wait = _retry_wait(session, campaign_id, ctx)
                if wait is not None and wait <= 30:
                    ctx.sleep(max(0.0, wait))
                    continue
            if outcome == IDLE and _open_batches_elsewhere(session, campaign_id):
                ctx.sleep(0.2)
                continue
            return paused if outcome == IDLE and paused else outcome
        return _land_all(session, in_flight, campaign_id, ctx, paused) or IDLE  # stopped: still recorded
    except BaseException:
        _land_after_error(session, in_flight, campaign_id, ctx)
        raise
    finally:
        ctx._in_flight = None


def _land(
    session: Session,
    entry: _InFlight,
    campaign_id: int,
    ctx: RunContext,
    paused: str | None,
) -> str | None:
    """Await and record a batch in flight (``_finish_delivery``); returns ``BLOCKED`` once one
    paused the campaign (the next ``run_batch`` only sees a campaign that is not running)."""
    _batch_id, send_number, finish = entry
    session.commit()  # no transaction (a read's included) stays open while the answer comes
    ctx._count_failures = send_number > ctx._failures_count_from
    try:
        outcome = finish()
    finally:
        ctx._count_failures = True
    if outcome != SENT:  # as ``run_batch``: a released batch is looked for next time
        ctx._stale_check_due.pop(campaign_id, None)
        ctx._failures_count_from = ctx._sends  # what is already out failed in the same outage
    return BLOCKED if outcome == BLOCKED else paused


def _land_all(
    session: Session,
    in_flight: deque[_InFlight],
    campaign_id: int,
    ctx: RunContext,
    paused: str | None,
) -> str | None:
    """``_land`` every batch in flight, oldest first."""
    while in_flight:
        paused = _land(session, in_flight.popleft(), campaign_id, ctx, paused)
    return paused


def _land_after_error(
    session: Session, in_flight: deque[_InFlight], campaign_id: int, ctx: RunContext
) -> None:
    """Record what the batches in flight got, although the run stops on an error: a batch left
    unrecorded would wait for its lease to end before being taken over (and sent again, under
    its key).  Each one on a clean session; one that fails too is left to that take-over."""
    while in_flight:
        entry = in_flight.popleft()
        try:
            session.rollback()
            _land(session, entry, campaign_id, ctx, None)
        except Exception:
            log.warning("campaign %s: a batch in flight could not be recorded", campaign_id, exc_info=True)


def _rate(session: Session, campaign_id: int, ctx: RunContext) -> float:
    value = session.scalar(select(Campaign.send_rate).where(Campaign.id == campaign_id))
    rate = float(value) if value is not None else float(ctx.settings.send_rate)
    return rate if rate > 0 else 0.0


def _sent_count(session: Session, campaign_id: int) -> int:
    return int(session.scalar(select(Campaign.sent + Campaign.failed).where(Campaign.id == campaign_id)) or 0)


def _retry_wait(session: Session, campaign_id: int, ctx: RunContext) -> float | None:
    retry_at = session.scalar(select(Campaign.retry_at).where(Campaign.id == campaign_id))
    session.rollback()
    if retry_at is None:
        return 0.0
    return (retry_at - ctx.clock()).total_seconds()


def _open_batches_elsewhere(session: Session, campaign_id: int) -> bool:
    """Another worker still holds a batch of this campaign: wait for it (or its lease) to end."""
    found = session.scalar(
        select(SendBatch.id)
        .where(SendBatch.campaign_id == campaign_id, SendBatch.status.in_(("claimed", "sending")))
        .limit(1)
    )
    status = session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
    session.rollback()
    return found is not None and status == lifecycle.RUNNING


__all__ = [
    "BLOCKED",
    "DONE",
    "IDLE",
    "RETRY",
    "SENT",
    "RunContext",
    "cancel",
    "context_from_app",
    "pause",
    "resume",
    "resume_if_possible",
    "run_batch",
    "run_campaign",
    "start",
]
