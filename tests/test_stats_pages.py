"""Statistics pages: the campaign page (figures, rates, funnel/outcome/series chart data, hour and
day toggle, per-template/sender/link/domain tables, links into the recipients), its empty state,
the account page (daily table for a date range, errors beside the dates, CSV export with BOM),
roles and workspace isolation."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import json
import re

import pytest

from plugin import counters
from plugin.models import Campaign, Sender, Template, TrackedLink

SHANGHAI_1_MARCH = dt.datetime(2024, 3, 1, 2, 0, tzinfo=dt.UTC)  # 10:00 in Shanghai


def text(response) -> str:
    return response.get_data(as_text=True)


def chart_data(body: str, element_id: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', body, re.S)
    assert match, f"{element_id} missing"
    return json.loads(match.group(1))


@pytest.fixture
def campaign(session, workspace):
    template = Template(workspace_id=workspace.id, name="Spring picture offer")
    sender = Sender(workspace_id=workspace.id, from_address="news@mail.example.com")
    session.add_all([template, sender])
    row = Campaign(
        workspace_id=workspace.id,
        name="Spring fair",
        status="completed",
        total=100,
        sent=100,
        started_at=SHANGHAI_1_MARCH,
        tracking=True,
    )
    session.add(row)
    session.flush()
    url = "https://shop.example.com/spring"
    link = TrackedLink(
        workspace_id=workspace.id,
        campaign_id=row.id,
        url=url,
        url_hash=hashlib.sha256(url.encode()).hexdigest(),
    )
    session.add(link)
    session.commit()
    dims = {"template_id": template.id, "sender_id": sender.id, "domain": "qq.com"}
    for metric, n, hours in (
        ("submitted", 100, 0),
        ("sent", 100, 0),
        ("delivered", 90, 0),
        ("invalid", 6, 0),
        ("bounced", 4, 1),
        ("opened", 45, 2),
        ("unique_opened", 30, 2),
        ("machine_opened", 12, 0),
        ("unique_clicked", 9, 3),
        ("replied", 3, 20),
        ("unsubscribed", 2, 3),
    ):
        counters.bump(
            session,
            workspace_id=workspace.id,
            campaign_id=row.id,
            metric=metric,
            at=SHANGHAI_1_MARCH + dt.timedelta(hours=hours),
            n=n,
            **dims,
        )
    counters.bump(
        session,
        workspace_id=workspace.id,
        campaign_id=row.id,
        metric="clicked",
        at=SHANGHAI_1_MARCH,
        n=14,
        link_id=link.id,
        **dims,
    )
    session.commit()
    return row


def test_campaign_page_shows_figures_rates_charts_and_tables(login, campaign):
    page = login("sales").get(f"/marketing/campaigns/{campaign.id}/stats")
    assert page.status_code == 200
    body = text(page)
    assert 'data-metric="delivered"' in body
    assert re.search(r'data-rate="delivered">\s*Delivery rate 90\.0%', body)
    assert re.search(r'data-rate="unique_opened">\s*Open rate 33\.3%', body)
    assert re.search(r'data-rate="replied">\s*Reply rate 3\.3%', body)
    assert re.search(r'data-opens="machine">12', body)
    assert f'href="/marketing/campaigns/{campaign.id}/recipients?filter=replied"' in body
    data = chart_data(body, "stats-chart-data")
    assert data["funnel"]["values"] == [100, 100, 90, 30, 9, 3]
    outcomes = dict(zip(data["outcomes"]["keys"], data["outcomes"]["values"], strict=True))
    assert (outcomes["delivered"], outcomes["invalid"], outcomes["bounced"]) == (90, 6, 4)
    assert data["series"]["labels"] == ["Mar 1", "Mar 2"]  # replies arrived the next day in Shanghai
    replied = next(d for d in data["series"]["datasets"] if d["key"] == "replied")
    assert replied["data"] == [0, 3]
    assert "Spring picture offer" in body
    assert "news@mail.example.com" in body
    assert "https://shop.example.com/spring" in body
    assert re.search(r'<tr data-key="qq\.com">.*?data-col="sent">100<', body, re.S)
    assert "vendor/chart.umd.min.js" in body


def test_opens_and_clicks_of_an_untracked_campaign_read_not_tracked(login, session, workspace):
    """Tracking off and no open or click reported: "Not tracked", not a rate of 0 %."""
    row = Campaign(
        workspace_id=workspace.id, name="Plain", status="completed", total=5, sent=5, tracking=False
    )
    session.add(row)
    session.flush()
    for metric in ("submitted", "sent", "delivered"):
        counters.bump(
            session, workspace_id=workspace.id, campaign_id=row.id, metric=metric, at=SHANGHAI_1_MARCH, n=5
        )
    session.commit()
    body = text(login("sales").get(f"/marketing/campaigns/{row.id}/stats"))
    assert re.search(r'data-rate="unique_opened">\s*Not tracked in this campaign', body)
    assert re.search(r'data-rate="unique_clicked">\s*Not tracked in this campaign', body)
    assert "Open rate 0.0%" not in body
    assert re.search(r'data-rate="delivered">\s*Delivery rate 100\.0%', body)


def test_hour_toggle_draws_hours(login, campaign):
    body = text(login("sales").get(f"/marketing/campaigns/{campaign.id}/stats?by=hour"))
    data = chart_data(body, "stats-chart-data")
    assert data["series"]["labels"][0] == "Mar 1 10:00"
    assert len(data["series"]["labels"]) == 21  # 10:00 to 06:00 the next day, gaps filled
    assert 'id="by-hour"' in body
    assert re.search(r'class="btn small primary" id="by-hour"', body)


def test_a_campaign_of_one_day_opens_on_its_hours(login, session, workspace):
    """Unasked, a campaign whose activity fits in one day shows its hours, not one lone point per
    metric; a campaign spanning two days opens on days (the ``campaign`` fixture above)."""
    row = Campaign(workspace_id=workspace.id, name="Flash sale", status="completed", total=9, sent=9)
    session.add(row)
    session.flush()
    for hour, n in ((0, 6), (2, 3)):
        counters.bump(
            session,
            workspace_id=workspace.id,
            campaign_id=row.id,
            metric="sent",
            at=SHANGHAI_1_MARCH + dt.timedelta(hours=hour),
            n=n,
        )
    session.commit()
    body = text(login("sales").get(f"/marketing/campaigns/{row.id}/stats"))
    data = chart_data(body, "stats-chart-data")
    assert data["series"]["labels"] == ["Mar 1 10:00", "Mar 1 11:00", "Mar 1 12:00"]
    sent = next(d for d in data["series"]["datasets"] if d["key"] == "sent")
    assert sent["data"] == [6, 0, 3]
    assert re.search(r'class="btn small primary" id="by-hour"', body)
    asked = text(login("sales").get(f"/marketing/campaigns/{row.id}/stats?by=day"))
    assert chart_data(asked, "stats-chart-data")["series"]["labels"] == ["Mar 1"]
    assert re.search(r'class="btn small primary" id="by-day"', asked)


def test_a_campaign_without_figures_says_what_comes(login, session, workspace):
    draft = Campaign(workspace_id=workspace.id, name="Draft", status="draft")
    session.add(draft)
    session.commit()
    body = text(login("marketer").get(f"/marketing/campaigns/{draft.id}/stats"))
    assert 'id="stats-empty"' in body
    assert "as soon as the campaign starts sending" in body
    assert "stats-chart-data" not in body


def test_other_organization_gets_404(login, campaign):
    assert login("other").get(f"/marketing/campaigns/{campaign.id}/stats").status_code == 404
    assert login("other").get(f"/marketing/campaigns/{campaign.id}/recipients").status_code == 404


def test_login_required(app, campaign):
    response = app.test_client().get(f"/marketing/campaigns/{campaign.id}/stats")
    assert response.status_code in (302, 401)


def test_account_page_daily_table_for_a_range(login, campaign, session, workspace):
    counters.bump(session, workspace_id=workspace.id, campaign_id=0, metric="sent", at=SHANGHAI_1_MARCH, n=5)
    session.commit()
    browser = login("sales")
    body = text(browser.get("/marketing/stats?start=2024-02-28&end=2024-03-02"))
    rows = re.findall(r'<tr data-day="([\d-]+)">', body)
    assert rows == ["2024-03-02", "2024-03-01", "2024-02-29", "2024-02-28"]
    march1 = re.search(r'<tr data-day="2024-03-01">(.*?)</tr>', body, re.S).group(1)
    assert 'data-col="total">105<' in march1
    assert 'data-col="delivered">90<' in march1
    assert 'data-col="invalid">6<' in march1
    assert "85.7%" in march1  # 90 / 105
    assert "<td>Mar 1, 2024</td>" in march1  # the day in words, as every page writes dates
    assert "Feb 28, 2024 – Mar 2, 2024" in body
    assert f'data-campaign="{campaign.id}"' in body
    chart = chart_data(body, "account-chart-data")
    assert chart["total"] == [0, 0, 105, 0]
    assert chart["labels"] == ["Feb 28", "Feb 29", "Mar 1", "Mar 2"]
    browser.post("/marketing/preferences", data={"locale": "zh_CN", "next": "/marketing/stats"})
    chinese = text(browser.get("/marketing/stats?start=2024-02-28&end=2024-03-02"))
    assert "<td>2024年3月1日</td>" in chinese
    assert chart_data(chinese, "account-chart-data")["labels"] == ["2月28日", "2月29日", "3月1日", "3月2日"]
    nav = re.search(r'<nav class="subnav plugin-nav".*?</nav>', body, re.S).group(0)
    assert 'href="/marketing/stats"' in nav
    assert 'href="/marketing/suppressions"' in nav


def test_account_page_refuses_a_backwards_range_beside_the_field(login):
    response = login("sales").get("/marketing/stats?start=2024-03-05&end=2024-03-01")
    assert response.status_code == 422
    assert re.search(r'id="range-end-error">The end date is before the start date', text(response))


def test_account_csv_has_a_bom_and_every_day(login, campaign):
    response = login("sales").get("/marketing/stats?start=2024-03-01&end=2024-03-02&format=csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    raw = response.get_data()
    assert raw.startswith(codecs.BOM_UTF8)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0][:4] == ["Date", "Total", "Delivered", "Failed"]
    assert [r[0] for r in rows[1:]] == ["2024-03-02", "2024-03-01", "Total"]
    assert rows[2][1:5] == ["100", "90", "4", "6"]
    assert rows[2][7] == "0.9000"


def test_rates_render_in_the_chinese_locale(login, campaign):
    browser = login("sales")
    body = text(
        browser.get(f"/marketing/campaigns/{campaign.id}/stats", headers={"Accept-Language": "zh-CN"})
    )
    assert "Spring fair" in body
    assert "90.0%" in body
