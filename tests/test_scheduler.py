"""Scheduler: the database lease (one ticking process), timed starts, the misfire policy, resumption
of auto-paused campaigns and resubmission of campaigns whose worker died.

Campaigns run for real: the runner sends to the SendCloud simulator over loopback through the
threads executor; nothing of the runner is replaced.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import time

import pytest
from sqlalchemy import select

from plugin import leases
from plugin.campaigns import lifecycle
from plugin.extension import get_state
from plugin.models import Campaign, Lease, utcnow
from plugin.scheduler import SCHEDULER_LEASE, Scheduler, start_campaign, tick
from plugin.tasks import ThreadExecutor, run_lease_name
from tests.scheduler_kit import add_campaign, build_world, simulator_server

# --------------------------------------------------------------------------------------- lease


def test_lease_goes_to_one_holder_until_it_expires(app, session):
    engine = get_state().db.engine
    t0 = utcnow()
    assert leases.acquire(engine, "x", "a", 30, now=t0)
    assert not leases.acquire(engine, "x", "b", 30, now=t0 + dt.timedelta(seconds=10))
    assert leases.acquire(engine, "x", "a", 30, now=t0 + dt.timedelta(seconds=20)), "holder renews"
    # a's renewal moved the expiry to t0+50: b still waits at t0+45, takes over after
    assert not leases.acquire(engine, "x", "b", 30, now=t0 + dt.timedelta(seconds=45))
    assert leases.acquire(engine, "x", "b", 30, now=t0 + dt.timedelta(seconds=51))
    assert not leases.acquire(engine, "x", "a", 30, now=t0 + dt.timedelta(seconds=52)), "a lost it"
    assert leases.holder_of(engine, "x", now=t0 + dt.timedelta(seconds=52)) == "b"
    assert not leases.release(engine, "x", "a"), "only the holder releases"
    assert leases.release(engine, "x", "b")
    assert leases.acquire(engine, "x", "a", 30)


def test_two_schedulers_in_one_process_only_one_ticks(app, session):
    first = Scheduler(app, holder="first", lease_seconds=30, executor=_Null())
    second = Scheduler(app, holder="second", lease_seconds=30, executor=_Null())
    t0 = utcnow()
    assert first.run_once(t0) is not None
    assert second.run_once(t0 + dt.timedelta(seconds=5)) is None
    assert first.run_once(t0 + dt.timedelta(seconds=5)) is not None
    # first dies (stops renewing): second takes over once the lease ran out, and first is out
    assert second.run_once(t0 + dt.timedelta(seconds=40)) is not None
    assert first.run_once(t0 + dt.timedelta(seconds=41)) is None
    assert (first.ticks, second.ticks) == (2, 1)


def test_stopping_hands_the_lease_on_at_once(app, session):
    first = Scheduler(app, holder="first", lease_seconds=300, executor=_Null())
    second = Scheduler(app, holder="second", lease_seconds=300, executor=_Null())
    assert first.run_once() is not None
    assert second.run_once() is None
    first.stop(stop_executor=False)
    assert second.run_once() is not None


def _scheduler_process(url: str, key: str, instance: str, seconds: float, queue) -> None:
    """A second OS process with its own app and a real APScheduler; reports its holder and ticks."""
    import os

    os.environ["CRM_INSTANCE_PATH"] = instance
    from plugin.demo.app import create_app
    from tests.conftest import _config

    app = create_app(_config(url, MARKETING_SECRET_KEYS=[key], MARKETING_SCHEDULER_TICK_SECONDS=0.2))
    scheduler = Scheduler(app, lease_seconds=2, executor=_Null()).start()
    time.sleep(seconds)
    scheduler.stop(stop_executor=False)
    queue.put((scheduler.holder, scheduler.ticks))


def test_two_scheduler_processes_only_one_ticks_then_the_other_takes_over(app, session, tmp_path):
    from tests.conftest import FERNET_KEY

    url = str(get_state().db.engine.url.render_as_string(hide_password=False))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    first = ctx.Process(target=_scheduler_process, args=(url, FERNET_KEY, str(tmp_path), 4.0, queue))
    first.start()
    _wait_for(lambda: leases.holder_of(get_state().db.engine, SCHEDULER_LEASE) is not None, 30)
    second = ctx.Process(target=_scheduler_process, args=(url, FERNET_KEY, str(tmp_path), 6.0, queue))
    second.start()
    first_holder, first_ticks = queue.get(timeout=60)
    # while the first ran, the second (started ~0.5-2 s later) never ticked: it only ticks after
    # the first released the lease on stop, for the rest of its 6 s
    second_holder, second_ticks = queue.get(timeout=60)
    first.join(10)
    second.join(10)
    assert first_ticks >= 5, "the first process ticked every 0.2 s"
    assert second_ticks >= 1, "the second took over after the first stopped"
    assert first_holder != second_holder


def test_second_process_does_nothing_while_the_first_holds_the_lease(app, session, tmp_path):
    from tests.conftest import FERNET_KEY

    engine = get_state().db.engine
    leases.acquire(engine, SCHEDULER_LEASE, "someone-else", 60)
    url = str(engine.url.render_as_string(hide_password=False))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scheduler_process, args=(url, FERNET_KEY, str(tmp_path), 2.0, queue))
    proc.start()
    _holder, ticks = queue.get(timeout=60)
    proc.join(10)
    assert ticks == 0
    assert session.scalar(select(Lease.holder).where(Lease.name == SCHEDULER_LEASE)) == "someone-else"


# ------------------------------------------------------------------------------- campaigns


@pytest.fixture
def sim():
    with simulator_server() as server:
        yield server


@pytest.fixture
def app_config(app_config, sim):
    return {
        **app_config,
        "MARKETING_SENDCLOUD_API_BASE": sim.url,
        "MARKETING_SEND_RATE": 10_000,
        "MARKETING_BATCH_SIZE": 10,
    }


@pytest.fixture
def world(app, session, workspace, sim):
    return build_world(session, workspace.id, sim, contacts=30)


@pytest.fixture
def executor(app):
    ex = ThreadExecutor(app)
    yield ex
    ex.shutdown(wait=True)


def test_due_campaign_starts_and_is_sent_once(app, session, world, executor, sim):
    now = utcnow()
    due = add_campaign(session, world, send_at=now - dt.timedelta(seconds=1))
    later = add_campaign(session, world, send_at=now + dt.timedelta(minutes=5), name="later")
    report = tick(app, now, executor=executor)
    assert report.started == [due.id]
    assert executor.wait_idle(60)
    session.expire_all()
    assert session.get(Campaign, due.id).status == lifecycle.COMPLETED
    assert session.get(Campaign, later.id).status == lifecycle.SCHEDULED
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)


def test_campaign_past_the_grace_period_becomes_missed_and_sends_nothing(app, session, world, executor, sim):
    grace = get_state().settings.missed_grace_minutes
    now = utcnow()
    within = add_campaign(session, world, send_at=now - dt.timedelta(minutes=grace - 1), name="within")
    late = add_campaign(session, world, send_at=now - dt.timedelta(minutes=grace + 1), name="late")
    report = tick(app, now, executor=executor)
    assert report.missed == [late.id]
    assert report.started == [within.id]
    assert executor.wait_idle(60)
    session.expire_all()
    assert session.get(Campaign, late.id).status == lifecycle.MISSED
    # a later tick leaves it alone: it waits for a user's decision
    assert tick(app, now + dt.timedelta(minutes=5), executor=executor).started == []
    assert session.get(Campaign, late.id).status == lifecycle.MISSED
    assert len(world.recipients_seen(sim)) == len(world.emails), "only the campaign within grace sent"


def test_running_campaign_without_a_live_worker_is_resubmitted(app, session, world, executor, sim):
    campaign = add_campaign(session, world, send_at=utcnow())
    from plugin.campaigns import runner

    runner.start(session, campaign.id, runner.context_from_app(app))  # started, then the worker "died"
    session.expire_all()
    assert session.get(Campaign, campaign.id).status == lifecycle.RUNNING
    engine = get_state().db.engine
    # a live heartbeat from another process: leave it alone
    leases.touch(engine, [run_lease_name(campaign.id)], "other-process", 30)
    assert tick(app, executor=executor).resubmitted == []
    # the heartbeat expired (that process died): resubmit, and the campaign completes
    leases.touch(engine, [run_lease_name(campaign.id)], "other-process", -1, now=utcnow())
    session.execute(Lease.__table__.delete().where(Lease.name == run_lease_name(campaign.id)))
    session.commit()
    assert tick(app, executor=executor).resubmitted == [campaign.id]
    assert executor.wait_idle(60)
    session.expire_all()
    assert session.get(Campaign, campaign.id).status == lifecycle.COMPLETED
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)


def test_one_campaign_is_never_run_twice_in_one_process(app, session, world, executor, sim):
    # 3 batches of 10 at 10 mails/s: about 2 s of sending, long enough to try a second start
    campaign = add_campaign(session, world, send_at=utcnow(), send_rate=10)
    assert start_campaign(app, campaign.id, executor=executor)
    assert executor.active(campaign.id)
    assert not executor.submit(campaign.id), "a second thread on the same campaign is refused"
    assert not start_campaign(app, campaign.id, executor=executor), "a second trigger is a no-op"
    assert tick(app, executor=executor).resubmitted == [], "a live worker is not resubmitted"
    assert executor.wait_idle(60)
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)


def test_quota_paused_campaign_resumes_after_the_provider_day_rolls_over(
    app, session, workspace, sim, executor
):
    world = build_world(session, workspace.id, sim, contacts=30, quota=12)
    campaign = add_campaign(session, world, send_at=utcnow())
    report = tick(app, executor=executor)
    assert report.started == [campaign.id]
    assert executor.wait_idle(60)
    session.expire_all()
    paused = session.get(Campaign, campaign.id)
    assert (paused.status, paused.pause_reason) == (lifecycle.PAUSED, "quota")
    first_day = world.recipients_seen(sim)
    assert 0 < len(first_day) <= 12
    # still the same day: a tick syncs, sees no room, and the campaign stays paused
    later = tick(app, executor=executor)
    assert later.resumed == []
    # the provider's day rolls over; the sync shows room again and the tick resumes the campaign
    sim.simulator.roll_day()
    session.execute(Lease.__table__.delete())  # the next sync is due now (not in quota_sync_minutes)
    session.execute(
        Campaign.__table__.update().where(Campaign.id == campaign.id).values(retry_at=None)
    )  # as if the retry time (provider midnight) had come
    session.commit()
    resumed = tick(app, executor=executor)
    assert resumed.synced
    assert resumed.resumed == [campaign.id]
    assert executor.wait_idle(60)
    session.expire_all()
    seen = world.recipients_seen(sim)
    assert len(first_day) < len(seen) <= 24, "the second day sent more, within its quota"
    assert len(set(seen)) == len(seen), "nobody twice"


def test_scheduler_starts_a_timed_campaign_within_a_second(app, session, world, sim):
    """The real APScheduler with a 5 s tick: the exact-time date job starts the campaign on time."""
    scheduler = Scheduler(app, tick_seconds=5)
    send_at = utcnow() + dt.timedelta(seconds=3)
    campaign = add_campaign(session, world, send_at=send_at)
    scheduler.start()
    try:
        _wait_for(lambda: _status(session, campaign.id) != lifecycle.SCHEDULED, 15)
        session.expire_all()
        started = session.get(Campaign, campaign.id).started_at
        assert started is not None
        lateness = (started - send_at).total_seconds()
        assert -0.05 <= lateness < 1.0, lateness
    finally:
        scheduler.stop()


# ------------------------------------------------------------------------------- helpers


class _Null:
    """An executor that records and runs nothing (lease tests do not need campaigns to run)."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, campaign_id: int) -> bool:
        self.submitted.append(campaign_id)
        return True

    def active(self, campaign_id: int) -> bool:
        return campaign_id in self.submitted

    def shutdown(self, wait: bool = True) -> None:
        pass


def _status(session, campaign_id: int) -> str:
    session.expire_all()
    return session.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar()


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
