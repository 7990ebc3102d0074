"""The threads execution backend and the ``flask marketing send`` command, with the real runner
sending to the SendCloud simulator over loopback."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import select

from plugin import leases
from plugin.campaigns import lifecycle, runner
from plugin.demo.models import db
from plugin.extension import get_state
from plugin.models import Campaign, Lease, utcnow
from plugin.scheduler import tick
from plugin.tasks import (
    CeleryExecutor,
    ThreadExecutor,
    get_executor,
    run_lease_name,
    shutdown_executor,
    threads_per_campaign,
)
from tests.scheduler_kit import add_campaign, build_world, simulator_server


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
    return build_world(session, workspace.id, sim, contacts=60)


def _started(app, session, world, **kw) -> Campaign:
    campaign = add_campaign(session, world, send_at=utcnow(), **kw)
    runner.start(session, campaign.id, runner.context_from_app(app))
    return campaign


def _status(session, campaign_id):
    session.expire_all()
    return session.get(Campaign, campaign_id)


def test_default_backend_is_one_thread_executor_per_app(app):
    first = get_executor(app)
    assert isinstance(first, ThreadExecutor)
    assert get_executor(app) is first
    shutdown_executor(app)
    assert get_executor(app) is not first
    shutdown_executor(app)


def test_celery_backend_is_chosen_by_setting(app_config, tmp_path):
    from plugin.demo.app import create_app

    other = create_app({**app_config, "MARKETING_EXECUTION_BACKEND": "celery"})
    executor = get_executor(other)
    assert isinstance(executor, CeleryExecutor)
    assert executor.celery.conf.broker_url == "redis://127.0.0.1:6379/0"
    assert "marketing.run_campaign" in executor.celery.tasks


def test_thread_runs_a_campaign_to_completion_in_its_own_session(app, session, world, sim):
    campaign = _started(app, session, world)
    registry = db.session.registry.registry
    scopes_before = len(registry) if isinstance(registry, dict) else None
    executor = ThreadExecutor(app)
    try:
        assert executor.submit(campaign.id)
        assert executor.wait_idle(60)
        assert executor.results[campaign.id] == "done"
    finally:
        executor.shutdown()
    assert _status(session, campaign.id).status == lifecycle.COMPLETED
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)
    if scopes_before is not None:
        assert len(registry) == scopes_before, "the job's session was removed"
    # the heartbeat was released with the run: the scheduler would see no live worker now
    assert not leases.alive(get_state().db.engine, [run_lease_name(campaign.id)])


def test_heartbeat_says_alive_while_running(app, session, world):
    campaign = _started(app, session, world, send_rate=20)  # 60 mails at 20/s: about 3 s
    executor = ThreadExecutor(app)
    try:
        executor.submit(campaign.id)
        engine = get_state().db.engine
        assert leases.alive(engine, [run_lease_name(campaign.id)])
        holder = session.scalar(select(Lease.holder).where(Lease.name == run_lease_name(campaign.id)))
        assert holder == executor.worker_id
        # another executor (another process, say) sees the campaign as taken
        other = ThreadExecutor(app)
        try:
            assert other.active(campaign.id)
        finally:
            other.shutdown()
        assert executor.wait_idle(60)
    finally:
        executor.shutdown()


def test_shutdown_stops_after_the_batch_and_a_new_worker_finishes_without_duplicates(
    app, session, world, sim
):
    campaign = _started(app, session, world, send_rate=20)
    executor = ThreadExecutor(app)
    executor.submit(campaign.id)
    deadline = time.monotonic() + 30
    while not world.recipients_seen(sim) and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - began < 5, "stops after the current batch, not at the end"
    stopped = _status(session, campaign.id)
    assert stopped.status == lifecycle.RUNNING
    assert 0 < len(world.recipients_seen(sim)) < len(world.emails)
    assert not executor.submit(campaign.id), "a stopped executor takes no work"
    # a restarted process: the scheduler finds the running campaign without a live worker
    fresh = ThreadExecutor(app)
    try:
        report = tick(app, executor=fresh)
        assert report.resubmitted == [campaign.id]
        assert fresh.wait_idle(60)
    finally:
        fresh.shutdown()
    assert _status(session, campaign.id).status == lifecycle.COMPLETED
    seen = world.recipients_seen(sim)
    assert sorted(seen) == sorted(world.emails), "everyone exactly once across the two workers"


def test_send_command_starts_and_runs_a_campaign_in_the_foreground(app, session, world, sim):
    campaign = add_campaign(session, world, send_at=utcnow() + dt.timedelta(hours=1))
    result = app.test_cli_runner().invoke(args=["marketing", "send", str(campaign.id)])
    assert result.exit_code == 0, result.output
    assert f"campaign {campaign.id}: done; status completed" in result.output
    assert "sent 60 of 60" in result.output
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)


def test_send_command_refuses_a_cancelled_campaign(app, session, world):
    campaign = add_campaign(session, world, send_at=None)
    runner.cancel(session, campaign.id)
    result = app.test_cli_runner().invoke(args=["marketing", "send", str(campaign.id)])
    assert result.exit_code != 0
    assert _status(session, campaign.id).status == lifecycle.CANCELLED


def test_send_command_reports_an_unknown_campaign(app, session):
    result = app.test_cli_runner().invoke(args=["marketing", "send", "999999"])
    assert result.exit_code != 0
    assert "no campaign 999999" in result.output


def test_by_default_a_campaign_gets_the_threads_its_database_runs_best_with(app):
    """One on SQLite, three on PostgreSQL, each with three batches in flight."""
    settings = app.extensions["marketing"].settings
    assert (settings.campaign_threads, settings.campaign_in_flight) == (None, 3)
    executor = ThreadExecutor(app)
    try:
        dialect = app.extensions["marketing"].db.engine.dialect.name
        assert executor.threads_per_campaign == (1 if dialect == "sqlite" else 3)
    finally:
        executor.shutdown()
    assert threads_per_campaign(None, "sqlite") == 1
    assert threads_per_campaign(None, "postgresql") == 3
    assert threads_per_campaign(2, "sqlite") == 2


def test_unrated_sendcloud_campaign_shares_out_to_three_threads_rated_one_keeps_one(
    app, session, world, sim, caplog, monkeypatch
):
    """With MARKETING_CAMPAIGN_THREADS=3, three threads of this process share an unlimited
    SendCloud campaign (each batch once, each thread with batches in flight); a campaign with
    a rate keeps one thread, which paces it."""
    import dataclasses
    import logging

    state = app.extensions["marketing"]
    monkeypatch.setattr(state, "settings", dataclasses.replace(state.settings, campaign_threads=3))
    unlimited = _started(app, session, world)
    rated = add_campaign(session, world, send_at=utcnow(), name="Rated", send_rate=500)
    executor = ThreadExecutor(app)
    try:
        assert executor.threads_per_campaign == 3
        assert executor._threads_for(unlimited.id) == 3
        assert executor._threads_for(rated.id) == 1
        with caplog.at_level(logging.INFO, logger="plugin.tasks"):
            assert executor.submit(unlimited.id)
            assert not executor.submit(unlimited.id), "already running here"
            assert executor.wait_idle(60)
        assert executor.results[unlimited.id] == "done"
    finally:
        executor.shutdown()
    runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"campaign {unlimited.id}:")]
    assert len(runs) == 3, runs
    batches = sum(int(m.split(" sent ")[1].split(" ")[0]) for m in runs)
    assert batches == 6  # 60 recipients in batches of 10, each sent by exactly one thread
    assert _status(session, unlimited.id).status == lifecycle.COMPLETED
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)
