"""The provider day: SendCloud counts on Asia/Shanghai time, whatever the server's time zone.

The ledger runs in a child process whose local time zone is set (``TZ`` + ``time.tzset()``) to UTC
or America/Los_Angeles; it walks through a day in small steps and must switch ledgers exactly
once, at 16:00:00 UTC (midnight in Shanghai), and not at UTC or Los Angeles midnight.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys

import pytest

from plugin import quota
from plugin.models import ProviderAccount

CHILD = r"""
import datetime as dt, json, sys, time
time.tzset()
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from plugin import quota

url, workspace_id, account_id, limit, start = sys.argv[1:6]
start = dt.datetime.fromisoformat(start)
instants = {start + dt.timedelta(minutes=30 * i) for i in range(24 * 2 + 1)}
boundary = start.replace(hour=16, minute=0, second=0)
instants |= {boundary + dt.timedelta(seconds=s) for s in (-1, 0, 1)}
instants.add(boundary - dt.timedelta(microseconds=1))
steps = []
engine = create_engine(url)
with Session(engine) as session:
    for t in sorted(instants):
        day = quota.provider_day(t)
        ledger = quota.ensure_ledger(session, int(workspace_id), int(account_id), "batch", day, int(limit))
        res = quota.reserve(session, ledger, 1, now=t, lease_seconds=86400)
        local_day = dt.datetime.fromtimestamp(t.timestamp()).date()  # the server's own calendar
        granted = res.amount if res else 0
        steps.append([t.isoformat(), day.isoformat(), ledger, granted, local_day.isoformat()])
engine.dispose()
print(json.dumps({"offset": -time.timezone, "steps": steps}))
"""


@pytest.fixture
def account(session, workspace) -> ProviderAccount:
    acct = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="main", api_user="u")
    session.add(acct)
    session.commit()
    return acct


def _shanghai_day(t: dt.datetime) -> dt.date:
    """Independent oracle: Shanghai has been UTC+8 all year round since 1991."""
    return (t.astimezone(dt.UTC) + dt.timedelta(hours=8)).date()


@pytest.mark.parametrize(("tz", "offset"), [("UTC", 0), ("America/Los_Angeles", None)])
@pytest.mark.parametrize(
    "date", ["2024-06-15", "2024-03-10", "2024-11-03"]
)  # plain day and both US DST switches
def test_counters_roll_over_once_at_midnight_shanghai(
    session, workspace, account, database_url, tz, offset, date
):
    limit = 3
    start = dt.datetime.fromisoformat(date).replace(hour=4, tzinfo=dt.UTC)  # 12:00 in Shanghai
    env = {**os.environ, "TZ": tz}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            database_url,
            str(workspace.id),
            str(account.id),
            str(limit),
            start.isoformat(),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if offset is not None:
        assert result["offset"] == offset
    else:  # the child really ran on Los Angeles time
        assert result["offset"] in (-7 * 3600, -8 * 3600)
    steps = result["steps"]

    switches = [i for i in range(1, len(steps)) if steps[i][2] != steps[i - 1][2]]
    assert len(switches) == 1
    before, after = steps[switches[0] - 1], steps[switches[0]]
    boundary = start.replace(hour=16)
    assert dt.datetime.fromisoformat(before[0]) == boundary - dt.timedelta(microseconds=1)
    assert dt.datetime.fromisoformat(after[0]) == boundary
    next_day = dt.date.fromisoformat(date) + dt.timedelta(days=1)
    assert (before[1], after[1]) == (date, next_day.isoformat())
    for t, day, _ledger, _granted, _local in steps:
        assert day == _shanghai_day(dt.datetime.fromisoformat(t)).isoformat()
    # The server's own calendar changes at other instants; the ledger ignores that.
    assert any(local != day for _t, day, _l, _g, local in steps)

    # Each provider day grants its quota once: the first ``limit`` steps of each day, then none.
    for day_steps in (steps[: switches[0]], steps[switches[0] :]):
        assert [g for *_, g, _local in day_steps] == [1] * limit + [0] * (len(day_steps) - limit)


def test_provider_day_matches_shanghai_at_any_instant():
    rng = random.Random(4)
    for _ in range(2000):
        t = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randint(0, 6 * 365 * 86400))
        assert quota.provider_day(t) == _shanghai_day(t)
        la = t.astimezone(dt.timezone(dt.timedelta(hours=-8)))
        assert quota.provider_day(la) == _shanghai_day(t)
    edge = dt.datetime(2024, 12, 31, 16, 0, tzinfo=dt.UTC)
    assert quota.provider_day(edge - dt.timedelta(microseconds=1)) == dt.date(2024, 12, 31)
    assert quota.provider_day(edge) == dt.date(2025, 1, 1)
    assert quota.provider_day(edge, tz="UTC") == dt.date(2024, 12, 31)


def test_provider_day_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="timezone-aware"):
        quota.provider_day(dt.datetime(2024, 6, 15, 16, 0))
