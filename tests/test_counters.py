"""counters: upserts per cell and dimension, totals, hourly/daily series in a time zone, breakdowns,
and concurrent bumps from several threads losing nothing."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from plugin import counters
from plugin.models import StatCounter

T0 = dt.datetime(2026, 3, 1, 15, 30, tzinfo=dt.UTC)  # 23:30 in Shanghai


def test_a_bump_writes_the_campaign_cell_and_each_given_dimension(session, workspace):
    counters.bump(
        session,
        workspace_id=workspace.id,
        campaign_id=7,
        metric="clicked",
        at=T0,
        template_id=1,
        sender_id=2,
        domain="Example.ORG",
        link_id=9,
    )
    counters.bump(
        session, workspace_id=workspace.id, campaign_id=7, metric="clicked", at=T0, n=2, template_id=1
    )
    session.commit()
    cells = {
        (c.dimension, c.key): c.count
        for c in session.scalars(select(StatCounter).where(StatCounter.metric == "clicked"))
    }
    assert cells == {
        ("all", ""): 3,
        ("template", "1"): 3,
        ("sender", "2"): 1,
        ("link", "9"): 1,
        ("domain", "example.org"): 1,
    }
    assert counters.totals(session, 7)["clicked"] == 3
    assert counters.totals(session, 7)["opened"] == 0
    assert counters.breakdown(session, 7, "template") == {
        "1": {**dict.fromkeys(counters.METRICS, 0), "clicked": 3}
    }
    with pytest.raises(ValueError, match="metric"):
        counters.bump(session, workspace_id=workspace.id, campaign_id=7, metric="nope", at=T0)


def test_series_by_hour_and_by_day_in_the_users_time_zone(session, workspace):
    for minutes in (0, 20, 40, 60, 120):
        counters.bump(
            session,
            workspace_id=workspace.id,
            campaign_id=8,
            metric="delivered",
            at=T0 + dt.timedelta(minutes=minutes),
        )
    session.commit()
    hourly = counters.series(session, 8, "delivered", by="hour", tz="UTC")
    assert [(t.hour, n) for t, n in hourly] == [(15, 2), (16, 2), (17, 1)]
    daily = counters.series(session, 8, "delivered", by="day", tz="Asia/Shanghai")
    assert [(t.date().isoformat(), n) for t, n in daily] == [("2026-03-01", 2), ("2026-03-02", 3)]


def test_send_rows_count_submitted_and_sent_per_domain(session, workspace):
    rows = counters.send_rows(
        workspace_id=workspace.id,
        campaign_id=9,
        at=T0,
        template_id=5,
        sender_id=None,
        outcomes=[("a@x.org", True), ("b@x.org", False), ("c@y.org", True)],
    )
    counters.add_rows(session, rows)
    session.commit()
    assert (counters.totals(session, 9)["submitted"], counters.totals(session, 9)["sent"]) == (3, 2)
    domains = counters.breakdown(session, 9, "domain")
    assert (domains["x.org"]["submitted"], domains["x.org"]["sent"], domains["y.org"]["sent"]) == (2, 1, 1)


def test_concurrent_bumps_lose_nothing(app, session, workspace):
    from plugin.extension import get_state

    bound = get_state().session.get_bind()
    if bound.dialect.name == "sqlite":
        pytest.skip("SQLite serializes writers; the upsert race matters on PostgreSQL")
    engine = create_engine(bound.url.render_as_string(hide_password=False), pool_size=8)
    errors: list[BaseException] = []
    workspace_id = workspace.id

    def work(seed: int) -> None:
        try:
            with Session(engine) as s:
                for i in range(50):
                    counters.bump(
                        s,
                        workspace_id=workspace_id,
                        campaign_id=10,
                        metric="opened",
                        at=T0,
                        template_id=seed % 2,
                        domain=f"d{i % 3}.org",
                    )
                    s.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    assert not errors
    assert counters.totals(session, 10)["opened"] == 400
    assert session.scalar(select(func.sum(StatCounter.count)).where(StatCounter.dimension == "domain")) == 400
