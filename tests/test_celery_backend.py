"""The celery backend for real: ``flask marketing worker`` subprocesses on the Redis broker
(127.0.0.1:6379, a queue of this test run's own), the runner sending to the SendCloud simulator on
loopback, and the simulator's record as the judge of duplicates."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from plugin.campaigns import lifecycle, runner
from plugin.extension import get_state
from plugin.models import Campaign, utcnow
from plugin.tasks import CeleryExecutor, get_executor
from tests.conftest import BACKEND
from tests.scheduler_kit import add_campaign, build_world, simulator_server

BROKER = "redis://127.0.0.1:6379/11"
QUEUE = f"marketing-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
FLASK = str(Path(sys.executable).with_name("flask"))


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(BROKER, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="needs the Redis broker on 127.0.0.1:6379")


@pytest.fixture
def sim():
    with simulator_server() as server:
        yield server


@pytest.fixture
def app_config(app_config, sim):
    return {
        **app_config,
        "MARKETING_SENDCLOUD_API_BASE": sim.url,
        "MARKETING_EXECUTION_BACKEND": "celery",
        "MARKETING_CELERY_BROKER_URL": BROKER,
        "MARKETING_CELERY_QUEUE": QUEUE,
        "MARKETING_SEND_RATE": 10_000,
    }


class Worker:
    """One ``flask marketing worker`` process; its output is kept with arrival times."""

    def __init__(self, database_url: str, api_base: str, instance: Path, keys: list[str]) -> None:
        env = {
            **os.environ,
            "CRM_SQLALCHEMY_DATABASE_URI": database_url,
            "CRM_SECRET_KEY": "test-secret-key",
            "CRM_MARKETING_SECRET_KEYS": json.dumps(list(keys)),
            "CRM_MARKETING_SENDCLOUD_API_BASE": api_base,
            "CRM_MARKETING_EXECUTION_BACKEND": "celery",
            "CRM_MARKETING_CELERY_BROKER_URL": BROKER,
            "CRM_MARKETING_CELERY_QUEUE": QUEUE,
            "CRM_MARKETING_SEND_RATE": "10000",
            "CRM_INSTANCE_PATH": str(instance),
        }
        self.proc = subprocess.Popen(
            [
                FLASK,
                "--app",
                "plugin.demo.app:create_app",
                "marketing",
                "worker",
                "-c",
                "1",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def first(self, fragment: str) -> float | None:
        return next((t for t, line in self.lines if fragment in line), None)

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def workers(app, database_url, sim, tmp_path):
    started: list[Worker] = []

    def _start(n: int) -> list[Worker]:
        for _ in range(n):
            started.append(Worker(database_url, sim.url, tmp_path, app.config["MARKETING_SECRET_KEYS"]))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(w.first(" ready.") for w in started):
            dead = [w for w in started if w.proc.poll() is not None]
            assert not dead, dead[0].output()[-3000:]
            time.sleep(0.1)
        assert all(w.first(" ready.") for w in started), started[0].output()[-3000:]
        return started

    yield _start
    for worker in started:
        worker.stop()


def _wait_status(session, campaign_id: int, wanted: set[str], timeout: float, workers=()) -> Campaign:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        campaign = session.get(Campaign, campaign_id)
        if campaign.status in wanted:
            return campaign
        session.rollback()
        time.sleep(0.2)
    logs = "\n---\n".join(w.output()[-3000:] for w in workers)
    raise AssertionError(f"campaign {campaign_id} still {campaign.status}\n{logs}")


def test_one_celery_worker_finishes_a_campaign(app, session, workspace, sim, workers):
    world = build_world(session, workspace.id, sim, contacts=250)
    campaign = add_campaign(session, world, send_at=utcnow())
    runner.start(session, campaign.id, runner.context_from_app(app))
    executor = get_executor(app)
    assert isinstance(executor, CeleryExecutor)
    (worker,) = workers(1)
    assert executor.submit(campaign.id)
    assert executor.active(campaign.id), "queued counts as alive: the next tick does not queue it again"
    done = _wait_status(session, campaign.id, {lifecycle.COMPLETED}, 120, [worker])
    assert done.sent == 250
    assert sorted(world.recipients_seen(sim)) == sorted(world.emails)
    assert worker.first("] received") is not None


@pytest.mark.skipif(
    BACKEND != "postgres",
    reason="several workers share one campaign through FOR UPDATE SKIP LOCKED, which only PostgreSQL "
    "has; run with MARKETING_TEST_DATABASE=postgres",
)
def test_two_celery_workers_share_one_campaign_with_no_duplicates(app, session, workspace, sim, workers):
    assert get_state().db.engine.dialect.name == "postgresql"
    contacts = 3000
    world = build_world(session, workspace.id, sim, contacts=contacts)
    # 30 batches of 100 at 500 mails/s per worker: long enough (about 3 s alone) for both to work
    campaign = add_campaign(session, world, send_at=utcnow(), send_rate=500)
    runner.start(session, campaign.id, runner.context_from_app(app))
    pair = workers(2)
    executor = get_executor(app)
    assert executor.submit(campaign.id, parallel=2)
    done = _wait_status(session, campaign.id, {lifecycle.COMPLETED}, 180, pair)
    seen = world.recipients_seen(sim)
    assert len(seen) == contacts, "each recipient exactly once on the simulator's side"
    assert sorted(seen) == sorted(world.emails)
    assert done.sent == contacts
    # both workers took a task, and the two runs overlapped in time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(w.first("succeeded in") for w in pair):
        time.sleep(0.1)
    received = [w.first("] received") for w in pair]
    finished = [w.first("succeeded in") for w in pair]
    assert all(t is not None for t in received), [w.output()[-2000:] for w in pair]
    assert all(t is not None for t in finished), [w.output()[-2000:] for w in pair]
    assert max(received) < min(finished), "the second worker joined while the first was still sending"
    for worker in pair:
        match = re.search(r"sent (\d+) batches here", worker.output())
        assert match is not None, worker.output()[-2000:]
        assert int(match.group(1)) >= 1, "each worker sent some of the campaign's batches"


def _queued(queue: str) -> int:
    import redis

    return int(redis.Redis.from_url(BROKER).llen(queue))


@pytest.mark.parametrize("send_rate", [0, 200])
def test_submit_queues_one_task_per_worker_where_workers_may_share(app, session, workspace, sim, send_rate):
    """Without a rate limit, on PostgreSQL, MARKETING_CAMPAIGN_WORKERS tasks (default 2) share the
    campaign; a paced campaign, or any on SQLite (one writer), gets one.  Counted on the broker."""
    import redis

    world = build_world(session, workspace.id, sim, contacts=10)
    campaign = add_campaign(session, world, send_at=utcnow(), send_rate=send_rate)
    executor = get_executor(app)
    assert isinstance(executor, CeleryExecutor)
    assert executor.workers_per_campaign == 2
    queue = f"{QUEUE}-count-{send_rate}"
    app.config["MARKETING_CELERY_QUEUE"] = queue
    try:
        assert executor.submit(campaign.id)
        several = send_rate == 0 and BACKEND == "postgres"
        assert _queued(queue) == (2 if several else 1)
        assert executor.submit(campaign.id, parallel=3)  # an explicit count is taken as given
        assert _queued(queue) == (5 if several else 4)
    finally:
        redis.Redis.from_url(BROKER).delete(queue)
