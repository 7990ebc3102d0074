"""Statistics service: rates users know, funnel, outcomes, human vs machine opens, per-hour and
per-day series in the user's zone, breakdowns with names, the account's daily table, workspace
isolation, and a 1,000,000-recipient campaign (counter rows only) read fast."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest
from flask_babel import force_locale

from bench.stats import counter_cells, load
from plugin import counters, stats
from plugin.errors import NotFound
from plugin.models import Campaign, Sender, Template, TrackedLink

AT = dt.datetime(2024, 3, 1, 15, 30, tzinfo=dt.UTC)  # 23:30 in Shanghai


def make_campaign(session, workspace_id: int, **values) -> Campaign:
    campaign = Campaign(workspace_id=workspace_id, name=values.pop("name", "Spring fair"), status="completed")
    for key, value in values.items():
        setattr(campaign, key, value)
    session.add(campaign)
    session.commit()
    return campaign


def bump(session, campaign: Campaign, metric: str, n: int, at: dt.datetime = AT, **dims) -> None:
    counters.bump(
        session,
        workspace_id=campaign.workspace_id,
        campaign_id=campaign.id,
        metric=metric,
        at=at,
        n=n,
        **dims,
    )


@pytest.fixture
def filled(session, workspace):
    """200 submitted, 198 sent, 180 delivered, 60 openers (90 opens), 20 machine opens,
    15 clickers (25 clicks), 6 repliers, 8 bounced, 10 invalid, 3 unsubscribed, 1 complaint."""
    campaign = make_campaign(session, workspace.id, total=200, sent=198, failed=2)
    for metric, n in {
        "submitted": 200,
        "sent": 198,
        "delivered": 180,
        "opened": 90,
        "unique_opened": 60,
        "machine_opened": 20,
        "clicked": 25,
        "unique_clicked": 15,
        "replied": 6,
        "bounced": 8,
        "invalid": 10,
        "unsubscribed": 3,
        "complained": 1,
    }.items():
        bump(session, campaign, metric, n)
    session.commit()
    return campaign


def test_rates_are_the_ones_users_know(session, workspace, filled):
    summary = stats.campaign_stats(session, workspace.id, filled.id)
    assert summary.totals["delivered"] == 180
    r = summary.rates
    assert r["send_rate"] == pytest.approx(198 / 200)
    assert r["delivery_rate"] == pytest.approx(180 / 198)
    assert r["open_rate"] == pytest.approx(60 / 180)
    assert r["click_rate"] == pytest.approx(15 / 180)
    assert r["reply_rate"] == pytest.approx(6 / 180)
    assert r["unsubscribe_rate"] == pytest.approx(3 / 180)
    assert [(m, n) for m, n, _s in summary.funnel] == [
        ("submitted", 200),
        ("sent", 198),
        ("delivered", 180),
        ("unique_opened", 60),
        ("unique_clicked", 15),
        ("replied", 6),
    ]
    assert summary.funnel[2][2] == pytest.approx(180 / 200)


def test_machine_opens_are_not_openers(session, workspace, filled):
    summary = stats.campaign_stats(session, workspace.id, filled.id)
    assert summary.totals["machine_opened"] == 20
    assert summary.totals["unique_opened"] == 60
    bump(session, filled, "machine_opened", 500)
    session.commit()
    after = stats.campaign_stats(session, workspace.id, filled.id)
    assert after.rates["open_rate"] == summary.rates["open_rate"]
    assert after.totals["machine_opened"] == 520


def test_outcomes_add_up_to_every_recipient(session, workspace, filled):
    outcomes = stats.campaign_stats(session, workspace.id, filled.id).outcomes
    assert outcomes["delivered"] == 180
    assert outcomes["bounced"] == 8
    assert outcomes["invalid"] == 10
    assert outcomes["failed"] == 2
    assert outcomes["in_flight"] == 198 - 180 - 8 - 10
    assert outcomes["pending"] == 0
    assert sum(outcomes.values()) == 200


def test_rates_without_a_denominator_are_none_not_zero(session, workspace):
    campaign = make_campaign(session, workspace.id)
    summary = stats.campaign_stats(session, workspace.id, campaign.id)
    assert summary.rates["open_rate"] is None
    assert summary.rates["send_rate"] is None
    assert all(n == 0 for n in summary.totals.values())


def test_other_workspace_cannot_read(session, workspace, other_workspace, filled):
    with pytest.raises(NotFound):
        stats.campaign_stats(session, other_workspace.id, filled.id)
    with pytest.raises(NotFound):
        stats.breakdown(session, other_workspace.id, filled.id, "domain")
    with pytest.raises(NotFound):
        stats.time_series(session, other_workspace.id, filled.id)


def test_series_per_day_and_hour_in_the_users_zone(session, workspace):
    campaign = make_campaign(session, workspace.id)
    bump(session, campaign, "sent", 5, AT)  # 23:30 Shanghai, 1 March
    bump(session, campaign, "sent", 7, AT + dt.timedelta(minutes=40))  # 00:10 Shanghai, 2 March
    bump(session, campaign, "delivered", 3, AT + dt.timedelta(hours=3))  # 02:30, 2 March
    session.commit()
    days = stats.time_series(session, workspace.id, campaign.id, by="day", tz="Asia/Shanghai")
    assert [p.date() for p in days.periods] == [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    assert days.values["sent"] == [5, 7]
    assert days.values["delivered"] == [0, 3]
    utc_days = stats.time_series(session, workspace.id, campaign.id, by="day", tz="UTC")
    assert utc_days.values["sent"] == [12]
    hours = stats.time_series(session, workspace.id, campaign.id, by="hour", tz="Asia/Shanghai")
    assert [p.hour for p in hours.periods] == [23, 0, 1, 2]  # the empty hour is filled
    assert hours.values["sent"] == [5, 7, 0, 0]
    assert hours.values["delivered"] == [0, 0, 0, 3]


def test_breakdowns_name_templates_senders_and_links(session, workspace):
    campaign = make_campaign(session, workspace.id)
    t1 = Template(workspace_id=workspace.id, name="Plain offer")
    t2 = Template(workspace_id=workspace.id, name="Picture offer")
    sender = Sender(workspace_id=workspace.id, from_address="news@mail.example.com")
    session.add_all([t1, t2, sender])
    session.flush()
    url = "https://shop.example.com/offer?a=1"
    link = TrackedLink(
        workspace_id=workspace.id,
        campaign_id=campaign.id,
        url=url,
        url_hash=hashlib.sha256(url.encode()).hexdigest(),
    )
    session.add(link)
    session.commit()
    for template, sent, opened in ((t1, 100, 10), (t2, 120, 40)):
        bump(session, campaign, "sent", sent, template_id=template.id, sender_id=sender.id)
        bump(session, campaign, "delivered", sent, template_id=template.id, sender_id=sender.id)
        bump(session, campaign, "unique_opened", opened, template_id=template.id, sender_id=sender.id)
    bump(session, campaign, "sent", 5, template_id=999_999)  # a template deleted since
    bump(session, campaign, "clicked", 4, link_id=link.id)
    session.commit()
    rows = stats.breakdown(session, workspace.id, campaign.id, "template")
    assert [r.label for r in rows[:2]] == ["Picture offer", "Plain offer"]
    assert rows[0].rates["open_rate"] == pytest.approx(40 / 120)
    assert rows[1].rates["open_rate"] == pytest.approx(10 / 100)
    assert "#999999" in rows[2].label
    senders = stats.breakdown(session, workspace.id, campaign.id, "sender")
    assert [(r.label, r.counts["sent"]) for r in senders] == [("news@mail.example.com", 220)]
    links = stats.breakdown(session, workspace.id, campaign.id, "link")
    assert [(r.label, r.counts["clicked"]) for r in links] == [(url, 4)]


def test_domain_table_keeps_the_top_and_sums_the_rest(session, workspace):
    campaign = make_campaign(session, workspace.id)
    for i in range(30):
        n = 100 - i
        bump(session, campaign, "sent", n, domain=f"d{i:02d}.example")
        bump(session, campaign, "delivered", n - 1, domain=f"d{i:02d}.example")
    session.commit()
    with force_locale("en"):
        rows = stats.breakdown(session, workspace.id, campaign.id, "domain", limit=5)
    assert [r.key for r in rows] == [
        "d00.example",
        "d01.example",
        "d02.example",
        "d03.example",
        "d04.example",
        "",
    ]
    rest = rows[-1]
    assert rest.label == "All other domains"
    assert rest.counts["sent"] == sum(100 - i for i in range(5, 30))
    assert rest.counts["delivered"] == sum(99 - i for i in range(5, 30))
    full = stats.breakdown(session, workspace.id, campaign.id, "domain")
    assert len(full) == 30


def test_account_table_per_day_over_campaigns_and_trigger_mail(session, workspace, other_workspace):
    a = make_campaign(session, workspace.id, name="A")
    b = make_campaign(session, workspace.id, name="B")
    foreign = make_campaign(session, other_workspace.id, name="Theirs")
    day1 = dt.datetime(2024, 3, 1, 2, 0, tzinfo=dt.UTC)  # 10:00 Shanghai, 1 March
    late = dt.datetime(2024, 3, 1, 17, 0, tzinfo=dt.UTC)  # 01:00 Shanghai, 2 March
    bump(session, a, "sent", 100, day1)
    bump(session, a, "delivered", 90, day1)
    bump(session, a, "bounced", 4, day1)
    bump(session, a, "invalid", 6, day1)
    bump(session, b, "sent", 50, late)
    bump(session, b, "delivered", 50, late)
    bump(session, foreign, "sent", 1000, day1)
    counters.bump(session, workspace_id=workspace.id, campaign_id=0, metric="delivered", at=day1, n=7)
    session.commit()
    days, total = stats.account_daily(
        session, workspace.id, start=dt.date(2024, 2, 29), end=dt.date(2024, 3, 2), tz="Asia/Shanghai"
    )
    assert [d.day for d in days] == [dt.date(2024, 3, 2), dt.date(2024, 3, 1), dt.date(2024, 2, 29)]
    march1 = days[1]
    assert (march1.total, march1.delivered, march1.failed, march1.invalid) == (100, 97, 4, 6)
    assert march1.failure_rate == pytest.approx(10 / 100)
    assert days[0].total == 50
    assert days[0].delivery_rate == pytest.approx(1.0)
    assert days[2].total == 0
    assert days[2].delivery_rate is None
    assert (total.total, total.delivered) == (150, 147)
    utc_days, _ = stats.account_daily(
        session, workspace.id, start=dt.date(2024, 3, 1), end=dt.date(2024, 3, 1), tz="UTC"
    )
    assert utc_days[0].total == 150  # both campaigns on 1 March in UTC


def test_the_first_hour_of_a_day_counts_in_that_day(session, workspace):
    """The hour that starts a day in the user's zone belongs to it, and the hour that starts the
    next day does not (on SQLite the counters' hour and the query's bound are compared as text,
    so both must be written in one format)."""
    a = make_campaign(session, workspace.id, name="A")
    midnight = dt.datetime(2024, 3, 1, 16, 0, tzinfo=dt.UTC)  # 00:00 Shanghai, 2 March
    bump(session, a, "sent", 5, midnight)
    bump(session, a, "sent", 7, midnight - dt.timedelta(hours=1))  # 23:00 Shanghai, 1 March
    bump(session, a, "sent", 11, midnight + dt.timedelta(days=1))  # 00:00 Shanghai, 3 March
    session.commit()
    days, total = stats.account_daily(
        session, workspace.id, start=dt.date(2024, 3, 2), end=dt.date(2024, 3, 2), tz="Asia/Shanghai"
    )
    assert [(d.day, d.total) for d in days] == [(dt.date(2024, 3, 2), 5)]
    assert total.total == 5


@pytest.fixture
def million(session, workspace):
    """The counter rows a 1,000,000-recipient campaign leaves (bench.stats generator)."""
    templates = [Template(workspace_id=workspace.id, name=f"Template {i}") for i in range(3)]
    senders = [Sender(workspace_id=workspace.id, from_address=f"news{i}@mail.example.com") for i in range(2)]
    session.add_all([*templates, *senders])
    campaign = make_campaign(session, workspace.id, name="A million", total=1_000_000, sent=1_000_000)
    links = [
        TrackedLink(
            workspace_id=workspace.id,
            campaign_id=campaign.id,
            url=f"https://shop.example.com/{i}",
            url_hash=hashlib.sha256(str(i).encode()).hexdigest(),
        )
        for i in range(10)
    ]
    session.add_all(links)
    session.commit()
    cells = counter_cells(
        template_ids=[t.id for t in templates],
        sender_ids=[s.id for s in senders],
        link_ids=[x.id for x in links],
    )
    started = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    rows = load(session.get_bind(), cells, workspace_id=workspace.id, campaign_id=campaign.id, start=started)
    return campaign, cells, rows


def test_a_million_recipient_campaign_reads_in_well_under_a_second(session, workspace, million):
    campaign, cells, rows = million
    assert rows > 500_000  # mostly per-domain cells: the long tail of company domains
    started = time.perf_counter()
    summary = stats.campaign_stats(session, workspace.id, campaign.id)
    stats.time_series(session, workspace.id, campaign.id, by="day", tz="Asia/Shanghai")
    stats.time_series(session, workspace.id, campaign.id, by="hour", tz="Asia/Shanghai")
    for dimension in ("template", "sender", "link"):
        stats.breakdown(session, workspace.id, campaign.id, dimension)
    domains = stats.breakdown(session, workspace.id, campaign.id, "domain", limit=stats.DOMAIN_ROWS)
    today = dt.datetime.now(dt.UTC).date()
    days, month = stats.account_daily(
        session, workspace.id, start=today - dt.timedelta(days=29), end=today, tz="Asia/Shanghai"
    )
    elapsed = time.perf_counter() - started
    assert month.total == 1_000_000
    assert len(days) == 30
    print(f"stats of a 1M-recipient campaign ({rows} counter rows): {elapsed:.3f} s")
    assert summary.totals["submitted"] == 1_000_000
    expected = sum(n for (m, d, _k, _h), n in cells.items() if d == "all" and m == "delivered")
    assert summary.totals["delivered"] == expected
    assert domains[0].key == "mail0.example.com"
    assert sum(r.counts["sent"] for r in domains) == summary.totals["sent"]
    assert elapsed < 1.5, f"stats took {elapsed:.2f} s"


def test_top_domains_are_exact_when_a_domain_is_spread_thin(session, workspace):
    """200 domains with one big hour each, and one domain with a little every hour whose total
    beats them all: the ranking that skips small cells must still find it first."""
    campaign = make_campaign(session, workspace.id)
    for hour in range(72):
        bump(session, campaign, "sent", 10, AT + dt.timedelta(hours=hour), domain="spread.example")
    for i in range(200):
        bump(
            session,
            campaign,
            "sent",
            700 - (i % 3),
            AT + dt.timedelta(hours=i % 72),
            domain=f"big{i:03d}.example",
        )
    session.commit()
    with force_locale("en"):
        rows = stats.breakdown(session, workspace.id, campaign.id, "domain", limit=5)
    assert [r.key for r in rows[:5]] == [
        "spread.example",
        "big000.example",
        "big003.example",
        "big006.example",
        "big009.example",
    ]
    assert rows[0].counts["sent"] == 720
    assert rows[-1].counts["sent"] == 720 + sum(700 - (i % 3) for i in range(200)) - sum(
        r.counts["sent"] for r in rows[:5]
    )
