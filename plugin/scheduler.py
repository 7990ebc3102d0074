"""The scheduler: one pass (``tick``) that moves campaigns along, run every few seconds by APScheduler
in exactly one process at a time.

APScheduler only *triggers*; every decision is a database transition (``scheduled -> running``
through the runner, ``scheduled -> missed`` through ``lifecycle``), so a second trigger of the same
start is a refused compare-and-set, not a second send.  On top of that a database lease
(``marketing:scheduler``) makes a second scheduler process idle until the first one stops renewing
it: APScheduler 3 runs a job once *per process*, and several web workers each starting a scheduler
is the classic "every mail sent four times" bug.

Misfire policy, stated once: a campaign whose time passed while no scheduler ran starts when one
comes back within ``MARKETING_MISSED_GRACE_MINUTES``; later than that it becomes ``missed`` and
waits for a user, because a newsletter sent hours late is worse than one not sent.

Timeliness: the interval tick alone would start a campaign up to one tick late, so each tick also
places an APScheduler date job at the exact ``send_at`` of campaigns due before the next tick.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Any

from flask import Flask
from sqlalchemy import or_, select

from . import leases, replies
from .campaigns import lifecycle
from .errors import InvalidInput, InvalidTransition
from .models import Campaign, utcnow
from .tasks import Executor, get_executor, shutdown_executor, worker_identity

log = logging.getLogger(__name__)

SCHEDULER_LEASE = "marketing:scheduler"
QUOTA_SYNC_LEASE = "marketing:quota-sync"

#: Serializes campaign starts in one process (the interval tick and a date job may race).
_start_lock = threading.Lock()


@dataclasses.dataclass
class TickReport:
    """What one pass did (logged, printed by the CLI, asserted by tests)."""

    now: dt.datetime
    started: list[int] = dataclasses.field(default_factory=list)
    missed: list[int] = dataclasses.field(default_factory=list)
    resumed: list[int] = dataclasses.field(default_factory=list)
    resubmitted: list[int] = dataclasses.field(default_factory=list)
    synced: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:  # "did anything happen"
        return bool(self.started or self.missed or self.resumed or self.resubmitted or self.synced)


def tick(app: Flask, now: dt.datetime | None = None, *, executor: Executor | None = None) -> TickReport:
    """One pass: sync accounts when due, mark missed, start due, resume auto-paused, resubmit orphans."""
    from .campaigns import runner
    from .extension import get_state

    now = now or utcnow()
    report = TickReport(now=now)
    executor = executor or get_executor(app)
    with app.app_context():
        state = get_state()
        session = state.session
        settings = state.settings
        ctx = None
        try:
            ctx = runner.context_from_app(app)
            _sync_accounts(state, ctx, now, report)
            _mark_missed(session, now, settings.missed_grace_minutes, report)
            for campaign_id in _due_ids(session, now):
                if start_campaign(app, campaign_id, executor=executor, ctx=ctx, session=session):
                    report.started.append(campaign_id)
            _resume_paused(session, ctx, executor, now, report)
            _resubmit_orphans(session, executor, now, report)
            replies.poll_all(session, secrets=state.secrets)  # reply mailboxes due (never raises)
        finally:
            if ctx is not None:
                ctx.close()
            session.remove() if hasattr(session, "remove") else session.close()
    if report:
        log.info(
            "tick: started %s missed %s resumed %s resubmitted %s synced %s",
            report.started,
            report.missed,
            report.resumed,
            report.resubmitted,
            report.synced,
        )
    return report


def start_campaign(
    app: Flask,
    campaign_id: int,
    *,
    executor: Executor | None = None,
    ctx: Any = None,
    session: Any = None,
) -> bool:
    """Start a due campaign (freeze, ``running``) and hand it to the executor; False if it was not
    (any longer) a scheduled campaign, e.g. another trigger or a user got there first."""
    from .campaigns import runner
    from .extension import get_state

    executor = executor or get_executor(app)
    with _start_lock, app.app_context():
        session = session or get_state().session
        ctx = ctx or runner.context_from_app(app)
        status = session.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar()
        if status != lifecycle.SCHEDULED:
            return False
        try:
            runner.start(session, campaign_id, ctx)
        except InvalidTransition:
            session.rollback()
            return False
        except InvalidInput as exc:  # it cannot start as it stands (its audience was deleted)
            session.rollback()
            _back_to_draft(session, campaign_id, str(exc))
            return False
        except Exception:
            session.rollback()
            log.exception("campaign %s could not be started", campaign_id)
            return False
        session.expire_all()
        status = session.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar()
    if status == lifecycle.RUNNING:
        executor.submit(campaign_id)
    return True


def _back_to_draft(session: Any, campaign_id: int, why: str) -> None:
    """A due campaign that cannot start goes back to draft with the reason on its page, instead
    of failing again on every tick while the list keeps calling it scheduled."""
    try:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:  # deleted meanwhile
            return
        lifecycle.transition(session, campaign, lifecycle.DRAFT)
        campaign.last_error = why[:1000]
        session.commit()
    except InvalidTransition:  # a user moved it meanwhile: theirs is the last word
        session.rollback()
        return
    except Exception:  # never the end of the tick: the other due campaigns still start
        session.rollback()
        log.exception("campaign %s could not be sent back to draft (%s)", campaign_id, why)
        return
    log.warning("campaign %s went back to draft: %s", campaign_id, why)


def _sync_accounts(state: Any, ctx: Any, now: dt.datetime, report: TickReport) -> None:
    """Every ``quota_sync_minutes``, across all scheduler processes (a lease row holds the date)."""
    minutes = state.settings.quota_sync_minutes
    if minutes <= 0:
        return
    # A fresh holder each time: the lease is only granted once the previous one expired.
    if not leases.acquire(state.db.engine, QUOTA_SYNC_LEASE, worker_identity("sync"), minutes * 60, now=now):
        return
    try:
        from . import quota_sync

        quota_sync.sync_all(state.session, factory=ctx.provider_factory)
        state.session.commit()
        report.synced = True
    except Exception as exc:
        state.session.rollback()
        report.errors.append(f"sync: {exc}")
        log.exception("account sync failed")


def _mark_missed(session: Any, now: dt.datetime, grace_minutes: int, report: TickReport) -> None:
    cutoff = now - dt.timedelta(minutes=grace_minutes)
    late = session.scalars(
        select(Campaign).where(Campaign.status == lifecycle.SCHEDULED, Campaign.send_at < cutoff)
    ).all()
    for campaign in late:
        try:
            lifecycle.transition(session, campaign, lifecycle.MISSED, now=now)
            session.commit()
            report.missed.append(campaign.id)
        except InvalidTransition:
            session.rollback()


def _due_ids(session: Any, now: dt.datetime) -> list[int]:
    return list(
        session.scalars(
            select(Campaign.id)
            .where(
                Campaign.status == lifecycle.SCHEDULED,
                or_(Campaign.send_at.is_(None), Campaign.send_at <= now),
            )
            .order_by(Campaign.send_at, Campaign.id)
        )
    )


def _ready(now: dt.datetime):
    return or_(Campaign.retry_at.is_(None), Campaign.retry_at <= now)


def _resume_paused(session: Any, ctx: Any, executor: Executor, now: dt.datetime, report: TickReport) -> None:
    from .campaigns import runner

    ids = session.scalars(
        select(Campaign.id).where(
            Campaign.status == lifecycle.PAUSED,
            # "provider": a cool-down after repeated failures, lifted once its retry time passed
            Campaign.pause_reason.in_(sorted(lifecycle.AUTO_RESUME_REASONS | {"provider"})),
            _ready(now),
        )
    ).all()
    for campaign_id in ids:
        try:
            resumed = runner.resume_if_possible(session, campaign_id, ctx)
        except Exception as exc:
            session.rollback()
            report.errors.append(f"resume {campaign_id}: {exc}")
            log.exception("campaign %s: resume check failed", campaign_id)
            continue
        if resumed:
            executor.submit(campaign_id)
            report.resumed.append(campaign_id)


def _resubmit_orphans(session: Any, executor: Executor, now: dt.datetime, report: TickReport) -> None:
    """``running`` campaigns that no live worker renews (crash, restart, finished backoff)."""
    ids = session.scalars(
        select(Campaign.id).where(Campaign.status == lifecycle.RUNNING, _ready(now)).order_by(Campaign.id)
    ).all()
    for campaign_id in ids:
        if not executor.active(campaign_id) and executor.submit(campaign_id):
            report.resubmitted.append(campaign_id)


def upcoming(app: Flask, now: dt.datetime, within: float) -> list[tuple[int, dt.datetime]]:
    """Scheduled campaigns due in ``(now, now + within]`` seconds."""
    from .extension import get_state

    with app.app_context():
        session = get_state().session
        try:
            rows = session.execute(
                select(Campaign.id, Campaign.send_at).where(
                    Campaign.status == lifecycle.SCHEDULED,
                    Campaign.send_at > now,
                    Campaign.send_at <= now + dt.timedelta(seconds=within),
                )
            ).all()
        finally:
            session.remove() if hasattr(session, "remove") else session.close()
    return [(row[0], row[1]) for row in rows]


class Scheduler:
    """APScheduler 3 ``BackgroundScheduler`` running ``tick`` under the database lease."""

    def __init__(
        self,
        app: Flask,
        *,
        holder: str | None = None,
        tick_seconds: float | None = None,
        lease_seconds: float | None = None,
        executor: Executor | None = None,
    ) -> None:
        from .extension import get_state

        self.app = app
        with app.app_context():
            state = get_state()
            self.engine = state.db.engine
            settings = state.settings
        self.holder = holder or worker_identity("scheduler")
        self.tick_seconds = float(tick_seconds or settings.scheduler_tick_seconds)
        self.lease_seconds = float(lease_seconds or max(30.0, 3 * self.tick_seconds))
        self._executor = executor
        self._scheduler: Any = None
        self.ticks = 0
        self.last_report: TickReport | None = None

    @property
    def executor(self) -> Executor:
        return self._executor or get_executor(self.app)

    def holds_lease(self, now: dt.datetime | None = None) -> bool:
        """Take or renew the scheduler lease; False while another process holds it."""
        return leases.acquire(self.engine, SCHEDULER_LEASE, self.holder, self.lease_seconds, now=now)

    def run_once(self, now: dt.datetime | None = None) -> TickReport | None:
        """One lease-guarded tick (the interval job; also handy in tests); None when not the leader."""
        try:
            if not self.holds_lease(now):
                return None
            report = tick(self.app, now, executor=self.executor)
            self.ticks += 1
            self.last_report = report
            if self._scheduler is not None:
                self._plan_exact_starts(report.now)
            return report
        except Exception:
            log.exception("scheduler tick failed")
            return None

    def start(self) -> Scheduler:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler.add_job(
            self.run_once,
            "interval",
            seconds=self.tick_seconds,
            id="marketing-tick",
            next_run_time=dt.datetime.now(dt.UTC),
        )
        self._scheduler.start()
        return self

    def stop(self, *, stop_executor: bool = True) -> None:
        """Stop ticking, hand the lease on at once, and (by default) stop the executor's runs."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        try:
            leases.release(self.engine, SCHEDULER_LEASE, self.holder)
        except Exception:  # the lease expires by itself
            log.exception("could not release the scheduler lease")
        if stop_executor:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            else:
                shutdown_executor(self.app)

    def _plan_exact_starts(self, now: dt.datetime) -> None:
        """Date jobs at the exact time of campaigns due before the next tick (plus one for slack)."""
        for campaign_id, send_at in upcoming(self.app, now, 2 * self.tick_seconds):
            self._scheduler.add_job(
                self._start_at,
                "date",
                run_date=send_at,
                args=[campaign_id, send_at],
                id=f"marketing-start-{campaign_id}",
                replace_existing=True,
            )

    def _start_at(self, campaign_id: int, send_at: dt.datetime) -> None:
        early = (send_at - utcnow()).total_seconds()
        if early > 0:
            time.sleep(min(early, 2.0))
        try:
            if self.holds_lease():
                start_campaign(self.app, campaign_id, executor=self.executor)
        except Exception:
            log.exception("campaign %s: timed start failed", campaign_id)


def start_scheduler_if_enabled(app: Flask) -> Scheduler | None:
    """For the process that should schedule (the demo server, or one process of a host):
    start the scheduler when ``MARKETING_SCHEDULER_ENABLED`` and stop it at interpreter exit."""
    from .extension import get_state

    with app.app_context():
        enabled = get_state().settings.scheduler_enabled
    if not enabled:
        return None
    scheduler = Scheduler(app).start()
    atexit.register(scheduler.stop)
    return scheduler
