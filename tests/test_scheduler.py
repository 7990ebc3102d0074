"""Scheduler: the database lease (one ticking process), timed starts, the misfire policy, resumption
of auto-paused campaigns and resubmission of campaigns whose worker died.

Campaigns run for real: the runner sends to the SendCloud simulator over loopback through the
threads executor; nothing of the runner is replaced.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
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


def _scheduler_process(url: str, key: str, instance: str, log_path: str, seconds: float) -> None:
    """Another OS process with its own app and a real APScheduler ticking every 0.2 s; appends
    ``holder time`` to ``log_path`` at each tick it really ran (flushed, so a kill -9 keeps them)."""
    import os

    os.environ["CRM_INSTANCE_PATH"] = instance
    from plugin.demo.app import create_app
    from tests.conftest import _config

    app = create_app(_config(url, MARKETING_SECRET_KEYS=[key], MARKETING_SCHEDULER_TICK_SECONDS=0.2))

    class Recording(Scheduler):
        def run_once(self, now=None):
            report = super().run_once(now)
            if report is not None:
                with open(log_path, "a") as out:
                    out.write(f"{self.holder} {time.time()}\n")
            return report

    scheduler = Recording(app, lease_seconds=2, executor=_Null()).start()
    time.sleep(seconds)
    scheduler.stop(stop_executor=False)
    os._exit(0)


def _ticks(path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    return [(h, float(t)) for h, t in (line.split() for line in path.read_text().splitlines())]


def test_two_scheduler_processes_one_ticks_and_the_other_takes_over_after_a_crash(app, session, tmp_path):
    engine = get_state().db.engine
    url = str(engine.url.render_as_string(hide_password=False))
    log_path = tmp_path / "ticks.log"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_scheduler_process,
            args=(url, app.config["MARKETING_SECRET_KEYS"][0], str(tmp_path), str(log_path), 60.0),
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        _wait_for(lambda: len(_ticks(log_path)) >= 5, 60)
        assert len({h for h, _ in _ticks(log_path)}) == 1, "only one process ticks"
        leader = leases.holder_of(engine, SCHEDULER_LEASE)
        pid = int(leader.split(":")[1])
        victim = next(p for p in procs if p.pid == pid)
        os.kill(victim.pid, signal.SIGKILL)  # no clean release: the lease has to expire (2 s)
        killed_at = time.time()
        victim.join(10)
        _wait_for(lambda: len({h for h, _ in _ticks(log_path)}) == 2, 30)
        ticks = _ticks(log_path)
        last_of_leader = max(t for h, t in ticks if h == leader)
        follower = [t for h, t in ticks if h != leader]
        assert min(follower) > last_of_leader, "never both at once"
        assert min(follower) - killed_at >= 1.0, "the follower waited for the lease to expire"
        assert min(follower) - killed_at < 10.0, "and took over soon after"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)


def test_second_process_does_nothing_while_the_first_holds_the_lease(app, session, tmp_path):
    engine = get_state().db.engine
    leases.acquire(engine, SCHEDULER_LEASE, "someone-else", 60)
    url = str(engine.url.render_as_string(hide_password=False))
    log_path = tmp_path / "ticks.log"
    proc = multiprocessing.get_context("fork").Process(
        target=_scheduler_process,
        args=(url, app.config["MARKETING_SECRET_KEYS"][0], str(tmp_path), str(log_path), 2.0),
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert _ticks(log_path) == []
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


def test_a_campaign_whose_tag_was_deleted_goes_back_to_draft_saying_why(
    app, session, world, executor, sim, login
):
    """The host's CRM deletes tags without asking the plugin: the due campaign cannot freeze its
    audience.  It used to fail on every tick while the list called it scheduled, and its page
    answered 500; now it goes back to draft with the reason, and its page says what to fix."""
    from markupsafe import escape

    from plugin.campaigns.runner import audience_gone_message
    from plugin.models import ContactTag, Tag

    campaign = add_campaign(session, world, send_at=utcnow() + dt.timedelta(hours=1))
    assert campaign.status == lifecycle.SCHEDULED
    session.execute(ContactTag.__table__.delete().where(ContactTag.tag_id == world.tag_id))
    session.execute(Tag.__table__.delete().where(Tag.id == world.tag_id))
    session.commit()
    browser = login("marketer")
    page = browser.get(f"/marketing/campaigns/{campaign.id}")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Some of the chosen tags or views no longer exist; pick again." in body
    assert "data-deleted>(deleted)</span>" in body
    assert not start_campaign(app, campaign.id, executor=executor)
    session.expire_all()
    row = session.get(Campaign, campaign.id)
    assert row.status == lifecycle.DRAFT
    assert row.frozen_at is None
    with app.app_context():  # said in the workspace's language: no user asked
        assert row.last_error == audience_gone_message()
    shown = browser.get(f"/marketing/campaigns/{campaign.id}").get_data(as_text=True)
    assert str(escape(row.last_error)) in shown
    assert world.recipients_seen(sim) == []
    lifecycle.transition(session, row, lifecycle.SCHEDULED)  # scheduled again once fixed
    session.commit()
    assert session.get(Campaign, campaign.id).last_error is None


def test_going_back_to_draft_never_ends_the_tick(app, session):
    """A campaign deleted meanwhile (or a database error) is logged, not raised into the tick."""
    from plugin.scheduler import _back_to_draft

    with app.app_context():
        _back_to_draft(session, 987654, "gone")  # no such campaign: nothing to do, no error


def test_quota_paused_campaign_resumes_after_the_provider_day_rolls_over(
    app, session, workspace, sim, executor
):
    world = build_world(session, workspace.id, sim, contacts=30, quota=40)
    # today's quota was used elsewhere (the provider's console, another tool): 40 of 40
    sim.simulator.set_account(world.api_user, used=40)
    campaign = add_campaign(session, world, send_at=utcnow())
    report = tick(app, executor=executor)
    assert report.started == [campaign.id]
    assert executor.wait_idle(60)
    session.expire_all()
    paused = session.get(Campaign, campaign.id)
    assert (paused.status, paused.pause_reason) == (lifecycle.PAUSED, "quota")
    assert world.recipients_seen(sim) == []
    # same day: the tick's sync still shows no room and the campaign stays paused
    _sync_due_now(session, campaign.id)
    again = tick(app, executor=executor)
    assert again.synced
    assert again.resumed == []
    session.expire_all()
    assert session.get(Campaign, campaign.id).status == lifecycle.PAUSED
    # the provider's day rolls over: the next sync shows room and the tick resumes the campaign
    sim.simulator.roll_day()
    _as_if_midnight_passed(session)
    _sync_due_now(session, campaign.id)
    resumed = tick(app, executor=executor)
    assert resumed.synced
    assert resumed.resumed == [campaign.id]
    assert executor.wait_idle(60)
    session.expire_all()
    assert session.get(Campaign, campaign.id).status == lifecycle.COMPLETED
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails), "everyone once, nobody twice"


def _as_if_midnight_passed(session) -> None:
    """Today's quota ledgers become yesterday's, which is what the database holds once the
    provider's midnight (Asia/Shanghai) has passed: the runner's gate keys ledgers by that day."""
    from plugin.models import QuotaLedger

    for ledger in session.scalars(select(QuotaLedger)).all():
        ledger.day = ledger.day - dt.timedelta(days=1)
    session.commit()


def _sync_due_now(session, campaign_id: int) -> None:
    """Make the next tick sync now (not quota_sync_minutes later) and treat the pause's retry
    time (the provider's midnight) as come."""
    from plugin.scheduler import QUOTA_SYNC_LEASE

    session.execute(Lease.__table__.delete().where(Lease.name == QUOTA_SYNC_LEASE))
    session.execute(Campaign.__table__.update().where(Campaign.id == campaign_id).values(retry_at=None))
    session.commit()


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


def test_scheduler_command_ticks_in_the_foreground_and_hands_the_lease_on_at_sigterm(app, session, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    engine = get_state().db.engine
    env = {
        **os.environ,
        "CRM_SQLALCHEMY_DATABASE_URI": engine.url.render_as_string(hide_password=False),
        "CRM_SECRET_KEY": "test-secret-key",
        "CRM_MARKETING_SECRET_KEYS": json.dumps(list(app.config["MARKETING_SECRET_KEYS"])),
        "CRM_INSTANCE_PATH": str(tmp_path),
    }
    flask = str(Path(sys.executable).with_name("flask"))
    proc = subprocess.Popen(
        [flask, "--app", "plugin.demo.app:create_app", "marketing", "scheduler", "--tick", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: leases.holder_of(engine, SCHEDULER_LEASE) is not None, 60)
        assert f":{proc.pid}:" in leases.holder_of(engine, SCHEDULER_LEASE)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "tick every 0.2 s" in output
    assert leases.holder_of(engine, SCHEDULER_LEASE) is None, "released at exit: another can start now"
