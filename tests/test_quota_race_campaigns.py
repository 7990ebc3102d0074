"""Eight worker processes race three campaigns for one account's daily quota Q (PostgreSQL).

The gate must stop them before the provider has to: the simulator never refuses a send for quota
(it enforces the same Q, so a refusal would mean we over-reserved), never accepts more than Q, and
when the campaigns want more than Q, at least Q minus one batch goes out.  Several randomized
rounds (quota, campaign sizes, mail already used by "another system" on the same account).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import campaign_kit as kit
import pytest
from sqlalchemy import select

from plugin.campaigns import runner
from plugin.models import Campaign
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer

WORKER = Path(__file__).with_name("race_worker.py")
WORKERS = 8


@pytest.fixture(scope="module")
def simulator():
    sim = SendCloudSimulator(deliver_delay=36_000, price_per_mail=Decimal("0.0001"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config["MARKETING_SENDCLOUD_API_BASE"] = simulator.url
    app_config["MARKETING_SEND_RATE"] = 0
    return app_config


@pytest.mark.parametrize(
    "seed", [1, 2, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(3, 13))]
)
def test_eight_workers_never_exceed_the_daily_quota(app, app_config, session, workspace, simulator, seed):
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("8 writer processes race on PostgreSQL; SQLite has one writer (its ledger race: threads)")
    rng = random.Random(seed)
    sim = simulator.simulator
    quota_q = rng.randrange(400, 1200)
    used_elsewhere = rng.randrange(0, 150)
    user = f"race_{seed}_{rng.randrange(10**9)}"
    sim.add_account(user, kit.API_KEY, quota=quota_q, used=used_elsewhere, balance=Decimal("100000"))
    account = kit.sendcloud_account(session, workspace.id, api_user=user)
    tpl, snd = kit.template(session, workspace.id), kit.sender(session, workspace.id)
    sizes = [rng.randrange(100, 700) for _ in range(3)]
    ids, start = [], 0
    for i, size in enumerate(sizes):
        kit.contacts(session, workspace.id, size, tags=[f"t{seed}_{i}"], start=start)
        start += size
        c = kit.campaign(
            session,
            workspace.id,
            account=account,
            template=tpl,
            sender=snd,
            include_tags=[kit.tag_id(session, workspace.id, f"t{seed}_{i}")],
        )
        ids.append(c.id)
    ctx = runner.context_from_app(app)
    for campaign_id in ids:
        runner.start(session, campaign_id, ctx)  # syncs: the ledger learns Q and the mail used elsewhere
    ctx.close()

    env = dict(os.environ, RACE_APP_CONFIG=json.dumps(app_config))
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *map(str, rng.sample(ids, len(ids)))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(WORKERS)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]

    sends = [r for r in sim.requests("mail/send") if r.api_user == user]
    accepted = sum(1 for m in sim.mails() if m.api_user == user)
    available = quota_q - used_elsewhere
    demand = sum(sizes)
    assert not [r for r in sends if r.status_code == 40904], "the provider had to refuse: we over-reserved"
    assert accepted <= available
    if demand >= available:
        assert accepted >= available - 100, (accepted, available)
        statuses = set(session.scalars(select(Campaign.status).where(Campaign.id.in_(ids))))
        assert "paused" in statuses
    else:
        assert accepted == demand
