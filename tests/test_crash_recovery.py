"""kill -9 of the worker at random moments and at every step boundary of the runner; each time a
new worker process takes over.  The simulator (or the SMTP sink) must see every recipient, and
SendCloud each exactly once; over SMTP only the mail in flight at a kill may arrive twice, flagged.

The quick versions run in ``make test``; the full ones (100,000 recipients, 20 random kills) are
marked ``slow`` and run in ``make soak``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import campaign_kit as kit
import pytest
from sqlalchemy import select

from plugin.models import Campaign, CampaignRecipient
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.sandbox.smtp_sink import SmtpSink

WORKER = Path(__file__).with_name("crash_worker.py")
STEPS = (
    "start:before_freeze",
    "start:after_freeze",
    "batch:reserved",
    "batch:claimed",
    "batch:before_send",
    "batch:after_send",
    "batch:recorded",
    "batch:taken_over",
)
#: PostgreSQL's SendCloud claim takes a range of recipients (``runner._claim_range``): killed
#: after its commit, before its members are read on, the batch is taken over by its range.
PG_STEPS = ("batch:ranged",)
SMTP_STEPS = ("batch:claimed", "batch:before_send", "smtp:after_send", "smtp:recorded", "batch:taken_over")


@pytest.fixture(scope="module")
def simulator():
    sim = SendCloudSimulator(deliver_delay=36_000, price_per_mail=Decimal("0.0001"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config["MARKETING_SENDCLOUD_API_BASE"] = simulator.url
    app_config["MARKETING_PROVIDER_TIMEOUT"] = 5.0
    app_config["MARKETING_SEND_RATE"] = 0
    return app_config


def _spawn(app_config, campaign_id: int, kill_at: str = "") -> subprocess.Popen:
    env = dict(os.environ, CRASH_APP_CONFIG=json.dumps(app_config), CRASH_AT=kill_at)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(campaign_id)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (out + err).decode(errors="replace")


def _kill_when(proc: subprocess.Popen, progressed, budget: float = 30.0) -> bool:
    """SIGKILL the worker once ``progressed()`` is true (or its time budget is up); False if it ended."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if progressed():
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _sendcloud_campaign(session, workspace, sim, n: int):
    user = f"crash_{random.randrange(10**9)}"
    sim.simulator.add_account(user, kit.API_KEY, quota=10 * n, balance=Decimal("100000"))
    account = kit.sendcloud_account(session, workspace.id, api_user=user)
    kit.contacts(session, workspace.id, n, tags=["all"])
    c = kit.campaign(
        session,
        workspace.id,
        account=account,
        template=kit.template(session, workspace.id),
        sender=kit.sender(session, workspace.id),
        include_tags=[kit.tag_id(session, workspace.id, "all")],
    )
    return c.id, user


def _steps(session) -> tuple[str, ...]:
    return STEPS + PG_STEPS if session.get_bind().dialect.name == "postgresql" else STEPS


def _run_with_kills(
    app_config, campaign_id: int, mails, *, random_kills: int, step_kills, seed: int
) -> list[str]:
    rng = random.Random(seed)
    log = []
    for step in step_kills:
        code, output = _finish(_spawn(app_config, campaign_id, kill_at=f"{step}:2"))
        log.append(f"{step}: exit {code}")
        assert code in (-signal.SIGKILL, 0), output[-3000:]
    for _ in range(random_kills):
        before = len(mails())
        target = before + rng.randrange(20, 300)
        proc = _spawn(app_config, campaign_id)
        killed = _kill_when(proc, lambda target=target: len(mails()) >= target)
        if not killed:
            code, output = _finish(proc)
            assert code == 0, output[-3000:]
            break
        log.append(f"killed after {len(mails()) - before} new mails")
    code, output = _finish(_spawn(app_config, campaign_id))
    assert code == 0, output[-3000:]
    return log


def _assert_completed(session, campaign_id: int, n: int) -> None:
    session.expire_all()
    campaign = session.get(Campaign, campaign_id)
    assert campaign.status == "completed", (campaign.status, campaign.pause_reason, campaign.last_error)
    assert campaign.sent == n
    assert kit.recipient_statuses(session, campaign_id) == {"accepted": n}


@pytest.mark.parametrize(("n", "random_kills"), [pytest.param(3000, 6, id="quick")])
def test_sendcloud_campaign_survives_kill_9_exactly_once(
    app, app_config, session, workspace, simulator, n, random_kills
):
    campaign_id, user = _sendcloud_campaign(session, workspace, simulator, n)

    def mails():
        return [m for m in simulator.simulator.mails() if m.api_user == user]

    log = _run_with_kills(
        app_config, campaign_id, mails, random_kills=random_kills, step_kills=_steps(session), seed=n
    )
    counts = Counter(m.recipient for m in mails())
    assert len(counts) == n, log
    assert max(counts.values()) == 1, [r for r, k in counts.items() if k > 1][:5]
    _assert_completed(session, campaign_id, n)


@pytest.mark.slow
def test_sendcloud_campaign_of_100k_survives_20_random_kills(app, app_config, session, workspace, simulator):
    n = 100_000
    campaign_id, user = _sendcloud_campaign(session, workspace, simulator, n)

    def mails():
        return [m for m in simulator.simulator.mails() if m.api_user == user]

    _run_with_kills(app_config, campaign_id, mails, random_kills=20, step_kills=_steps(session), seed=7)
    counts = Counter(m.recipient for m in mails())
    assert len(counts) == n
    assert max(counts.values()) == 1
    _assert_completed(session, campaign_id, n)


def _smtp_run(app, app_config, session, workspace, n: int, random_kills: int) -> None:
    with SmtpSink(capacity=10 * n + 100) as sink:
        account = kit.smtp_account(session, workspace.id, host="127.0.0.1", port=sink.port)
        kit.contacts(session, workspace.id, n, tags=["all"])
        c = kit.campaign(
            session,
            workspace.id,
            account=account,
            template=kit.template(session, workspace.id),
            sender=kit.sender(session, workspace.id),
            include_tags=[kit.tag_id(session, workspace.id, "all")],
        )
        log = _run_with_kills(
            app_config, c.id, sink.messages, random_kills=random_kills, step_kills=SMTP_STEPS, seed=n
        )
        received = Counter(m.envelope_to[0] for m in sink.messages())
        assert len(received) == n, log  # nobody missing
        duplicates = {r for r, k in received.items() if k > 1}
        flagged = set(
            session.scalars(
                select(CampaignRecipient.email).where(
                    CampaignRecipient.campaign_id == c.id, CampaignRecipient.possible_duplicate
                )
            )
        )
        assert duplicates <= flagged, (duplicates - flagged, log)
        # at most one mail in flight per kill
        assert sum(received.values()) - n <= random_kills + len(SMTP_STEPS)
        _assert_completed(session, c.id, n)


def test_smtp_campaign_survives_kill_9_with_only_in_flight_duplicates_flagged(
    app, app_config, session, workspace
):
    _smtp_run(app, app_config, session, workspace, n=400, random_kills=5)


@pytest.mark.slow
def test_smtp_campaign_of_5000_survives_20_random_kills(app, app_config, session, workspace):
    _smtp_run(app, app_config, session, workspace, n=5000, random_kills=20)
