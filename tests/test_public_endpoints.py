"""The public /m endpoints on mail the runner really sent (SendCloud simulator, SMTP sink): tracked
links and pixel, RFC 8058 headers per recipient, GET-confirm/POST unsubscribe taking effect for
the next batch of a running campaign, machine opens, rate limits (memory and Redis)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from decimal import Decimal

import campaign_kit as kit
import pytest
from sqlalchemy import func, select, update

from plugin import counters, ratelimit, suppression
from plugin.campaigns import runner
from plugin.models import Campaign, CampaignRecipient, Event, Suppression, TrackedLink
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.sandbox.smtp_sink import SmtpSink

HTML = (
    '<html><body><p>Dear {name|friend},</p><p><a href="https://shop.example.org/spring?a=1&amp;b=2">Spring</a>'
    ' and <a href="http://blog.example.org/post">our blog</a>, <a href="mailto:sales@example.com">mail</a>'
    ' <a href="https://shop.example.org/spring?a=1&amp;b=2">again</a></p></body></html>'
)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


@pytest.fixture(scope="module")
def simulator():
    sim = SendCloudSimulator(deliver_delay=3600, price_per_mail=Decimal("0.001"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config["MARKETING_SENDCLOUD_API_BASE"] = simulator.url
    app_config["MARKETING_PROVIDER_TIMEOUT"] = 2.0
    app_config["MARKETING_PUBLIC_BASE_URL"] = "https://news.example.com"
    return app_config


@pytest.fixture
def sim(simulator):
    simulator.simulator.clear()
    return simulator.simulator


@pytest.fixture
def client(app):
    return app.test_client()


def _campaign(session, workspace, sim, *, n: int, tracking: bool = True, batch_tag: str = "all"):
    user = f"pub_{uuid.uuid4().hex[:8]}"
    sim.add_account(user, kit.API_KEY, quota=10_000, balance=Decimal("1000"))
    account = kit.sendcloud_account(session, workspace.id, api_user=user)
    sender = kit.sender(session, workspace.id, address=f"news-{batch_tag}@mail.example.com")
    template = kit.template(session, workspace.id, html=HTML)
    kit.contacts(
        session,
        workspace.id,
        n,
        tags=[batch_tag],
        domain="example.net" if batch_tag == "all" else f"{batch_tag}.example.net",
    )
    c = kit.campaign(
        session,
        workspace.id,
        account=account,
        template=template,
        sender=sender,
        include_tags=[kit.tag_id(session, workspace.id, batch_tag)],
    )
    c.tracking = tracking
    session.commit()
    return c, user


def _ctx(app, **kw):
    return runner.context_from_app(app, backoff_base=0.01, **kw)


def _mail(sim, user, address):
    return next(m for m in sim.mails() if m.api_user == user and m.recipient == address)


def _recipient(session, campaign_id, email) -> CampaignRecipient:
    session.expire_all()
    return session.scalar(
        select(CampaignRecipient).where(
            CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.email == email
        )
    )


def _age(session, campaign_id, minutes=60):
    """Pretend the mail went out a while ago (opens within seconds of the send are machines)."""
    session.execute(
        update(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == campaign_id)
        .values(sent_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes))
    )
    session.commit()


def _path(url: str) -> str:
    return re.sub(r"^https://news\.example\.com", "", url)


def test_sent_mail_has_tracked_links_pixel_and_its_own_one_click_headers(
    app, session, workspace, sim, client
):
    c, user = _campaign(session, workspace, sim, n=3)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    links = {
        link.url: link.id
        for link in session.scalars(select(TrackedLink).where(TrackedLink.campaign_id == c.id))
    }
    assert set(links) == {"https://shop.example.org/spring?a=1&b=2", "http://blog.example.org/post"}

    mail0, mail1 = _mail(sim, user, "user0@example.net"), _mail(sim, user, "user1@example.net")
    hrefs = re.findall(r'href="([^"]+)"', mail0.html)
    spring = [h for h in hrefs if f"/m/c/{links['https://shop.example.org/spring?a=1&b=2']}/" in h]
    assert len(spring) == 2  # both occurrences rewritten to the same link
    assert "mailto:sales@example.com" in hrefs
    assert not any("shop.example.org" in h or "blog.example.org" in h for h in hrefs)
    assert re.search(r'<img src="https://news\.example\.com/m/o/[^"%]+\.gif"', mail0.html)
    assert "%" not in "".join(hrefs).replace("mailto:", "")  # every placeholder substituted

    h0, h1 = mail0.headers["List-Unsubscribe"], mail1.headers["List-Unsubscribe"]
    assert h0 != h1  # a token per recipient
    assert re.fullmatch(
        r"<https://news\.example\.com/m/u/[\w.\-]+>, "
        r"<mailto:reply@example\.com\?subject=unsubscribe-[\w.\-]+>",
        h0,
    )
    assert mail0.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = re.search(r"/m/u/([\w.\-]+)>", h0).group(1)
    assert f"/m/u/{token}" in mail0.html  # the footer link is the same unsubscribe token

    # counters bumped at record time: per template, sender and recipient domain
    totals = counters.totals(session, c.id)
    assert totals["submitted"] == 3
    assert totals["sent"] == 3
    assert counters.breakdown(session, c.id, "domain")["example.net"]["sent"] == 3
    assert counters.breakdown(session, c.id, "template")[str(c.template_ids[0])]["submitted"] == 3


def test_open_and_click_are_recorded_once_per_person_and_redirect_to_the_stored_url(
    app, session, workspace, sim, client
):
    c, user = _campaign(session, workspace, sim, n=2)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    _age(session, c.id)
    html = _mail(sim, user, "user0@example.net").html
    pixel = _path(re.search(r'<img src="([^"]+)"', html).group(1))
    click = _path(next(h for h in re.findall(r'href="([^"]+)"', html) if "/m/c/" in h))

    first = client.get(pixel, headers={"User-Agent": BROWSER})
    assert first.status_code == 200
    assert first.mimetype == "image/gif"
    assert first.data.startswith(b"GIF89a")
    assert len(first.data) < 64
    assert "no-store" in first.headers["Cache-Control"]
    assert first.headers["Pragma"] == "no-cache"
    client.get(pixel, headers={"User-Agent": BROWSER})
    answer = client.get(click, headers={"User-Agent": BROWSER})
    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://shop.example.org/spring?a=1&b=2"

    r = _recipient(session, c.id, "user0@example.net")
    assert r.opened_at is not None
    assert r.clicked_at is not None
    assert r.status == "delivered"
    totals = counters.totals(session, c.id)
    assert (totals["opened"], totals["unique_opened"], totals["clicked"], totals["unique_clicked"]) == (
        2,
        1,
        1,
        1,
    )
    assert totals["delivered"] == 1
    assert totals["machine_opened"] == 0
    link_id = int(click.split("/")[3])
    assert counters.breakdown(session, c.id, "link")[str(link_id)]["clicked"] == 1


def test_click_links_of_another_campaign_or_unknown_ids_never_redirect(app, session, workspace, sim, client):
    c1, user1 = _campaign(session, workspace, sim, n=1, batch_tag="a")
    c2, _ = _campaign(session, workspace, sim, n=1, batch_tag="b")
    session.add(
        TrackedLink(
            workspace_id=workspace.id, campaign_id=c2.id, url="https://evil.example/", url_hash="x" * 64
        )
    )
    session.commit()
    ctx = _ctx(app)
    for c in (c1, c2):
        runner.start(session, c.id, ctx)
        runner.run_campaign(session, c.id, ctx)
    evil = session.scalar(select(TrackedLink.id).where(TrackedLink.url == "https://evil.example/"))
    html = _mail(sim, user1, "user0@a.example.net").html
    click = _path(next(h for h in re.findall(r'href="([^"]+)"', html) if "/m/c/" in h))
    token = click.rsplit("/", 1)[1]
    for path in (f"/m/c/{evil}/{token}", f"/m/c/999999/{token}", f"/m/c/1/{token}x", "/m/c/1/abc"):
        answer = client.get(path, headers={"User-Agent": BROWSER})
        assert answer.status_code == 404, path
        assert "Location" not in answer.headers
    assert session.scalar(select(func.count()).select_from(Event).where(Event.type == "click")) == 0


@pytest.mark.parametrize(
    ("method", "agent"),
    [
        ("GET", "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"),
        ("GET", "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"),
        ("GET", ""),
        ("HEAD", BROWSER),
    ],
)
def test_proxy_and_scanner_opens_count_as_machine_opens(app, session, workspace, sim, client, method, agent):
    c, user = _campaign(session, workspace, sim, n=1)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    _age(session, c.id)
    pixel = _path(re.search(r'<img src="([^"]+)"', _mail(sim, user, "user0@example.net").html).group(1))
    answer = client.open(pixel, method=method, headers={"User-Agent": agent})
    assert answer.status_code == 200
    r = _recipient(session, c.id, "user0@example.net")
    assert r.machine_opened_at is not None
    assert r.opened_at is None
    totals = counters.totals(session, c.id)
    assert totals["machine_opened"] == 1
    assert totals["opened"] == 0
    assert totals["unique_opened"] == 0


def test_opens_right_after_the_send_and_click_sweeps_are_machines(app, session, workspace, sim, client):
    c, user = _campaign(session, workspace, sim, n=1)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    html = _mail(sim, user, "user0@example.net").html
    pixel = _path(re.search(r'<img src="([^"]+)"', html).group(1))
    client.get(pixel, headers={"User-Agent": BROWSER})  # seconds after the send: a prefetch
    assert counters.totals(session, c.id)["machine_opened"] == 1
    _age(session, c.id)
    clicks = [_path(h) for h in dict.fromkeys(re.findall(r'href="([^"]+)"', html)) if "/m/c/" in h]
    assert len(clicks) == 2
    for path in clicks:  # a scanner follows every link at once: still redirected
        assert client.get(path, headers={"User-Agent": BROWSER}).status_code == 302
    totals = counters.totals(session, c.id)
    assert totals["clicked"] == 1
    assert totals["unique_clicked"] == 1
    assert totals["machine_opened"] == 2


def test_get_on_unsubscribe_changes_nothing_and_one_click_post_stops_the_next_batch(
    app, app_config, session, workspace, sim, client
):
    c, user = _campaign(session, workspace, sim, n=6)
    settings = app.extensions["marketing"].settings
    ctx = _ctx(app, settings=dataclasses.replace(settings, batch_size=2))
    runner.start(session, c.id, ctx)
    assert runner.run_batch(session, c.id, ctx) == runner.SENT
    sent_to = {m.recipient for m in sim.mails() if m.api_user == user}
    assert len(sent_to) == 2
    session.expire_all()
    pending = session.scalar(
        select(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == c.id, CampaignRecipient.status == "pending")
        .order_by(CampaignRecipient.id)
    )
    from plugin.tracking import unsubscribe_token

    token = unsubscribe_token(settings, workspace.id, pending.id)

    for _ in range(3):  # scanners and prefetchers follow GETs
        page = client.get(f"/m/u/{token}", headers={"User-Agent": BROWSER})
        assert page.status_code == 200
        assert b'method="post"' in page.data
        assert pending.email.encode() in page.data
    assert not suppression.is_suppressed(session, workspace.id, pending.email)
    assert session.scalar(select(func.count()).select_from(Event)) == 0

    answer = client.post(f"/m/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    again = client.post(f"/m/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200  # idempotent
    row = session.scalar(select(Suppression).where(Suppression.email == pending.email))
    assert (row.reason, row.source, row.campaign_id) == ("unsubscribed", "link", c.id)
    assert counters.totals(session, c.id)["unsubscribed"] == 1

    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    received = [m.recipient for m in sim.mails() if m.api_user == user]
    assert pending.email not in received
    assert len(received) == 5
    r = _recipient(session, c.id, pending.email)
    assert (r.status, r.reason) == ("skipped", "suppressed")
    assert r.unsubscribed_at is not None
    page = client.get(f"/m/u/{token}")
    assert b"You are unsubscribed" in page.data


def test_unsubscribe_form_post_and_invalid_tokens(app, session, workspace, sim, client):
    c, user = _campaign(session, workspace, sim, n=1)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    header = _mail(sim, user, "user0@example.net").headers["List-Unsubscribe"]
    token = re.search(r"/m/u/([\w.\-]+)>", header).group(1)
    done = client.post(f"/m/u/{token}")
    assert done.status_code == 200
    assert b"You are unsubscribed" in done.data
    assert suppression.is_suppressed(session, workspace.id, "user0@example.net")
    for bad in (token[:-2], token + "A", "x", token.replace(".", "_", 1)):
        assert client.get(f"/m/u/{bad}").status_code == 404
        assert client.post(f"/m/u/{bad}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert session.scalar(select(func.count()).select_from(Suppression)) == 1


def test_the_confirmation_page_speaks_chinese(app, session, workspace, sim, client):
    c, user = _campaign(session, workspace, sim, n=1)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    token = re.search(r"/m/u/([\w.\-]+)>", _mail(sim, user, "user0@example.net").headers["List-Unsubscribe"])
    page = client.get(f"/m/u/{token.group(1)}", headers={"Accept-Language": "zh-CN"})
    assert page.status_code == 200
    assert b'lang="zh-CN"' in page.data


def test_smtp_mail_carries_each_recipients_list_unsubscribe(app, session, workspace, client):
    with SmtpSink() as sink:
        account = kit.smtp_account(session, workspace.id, host="127.0.0.1", port=sink.port)
        snd = kit.sender(session, workspace.id)
        tpl = kit.template(session, workspace.id, html=HTML)
        kit.contacts(session, workspace.id, 3, tags=["all"])
        c = kit.campaign(
            session,
            workspace.id,
            account=account,
            template=tpl,
            sender=snd,
            include_tags=[kit.tag_id(session, workspace.id, "all")],
        )
        c.tracking = True
        session.commit()
        ctx = _ctx(app)
        runner.start(session, c.id, ctx)
        assert runner.run_campaign(session, c.id, ctx) == runner.DONE
        ctx.close()
        messages = sink.messages()
    headers = {m.envelope_to[0]: m.header("List-Unsubscribe") for m in messages}
    assert len(set(headers.values())) == 3
    assert all("%" not in h for h in headers.values())
    assert all(m.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click" for m in messages)
    totals = counters.totals(session, c.id)
    assert (totals["submitted"], totals["sent"]) == (3, 3)  # counted per SMTP record
    one = next(m for m in messages if m.envelope_to[0] == "user1@example.net")
    token = re.search(r"/m/u/([\w.\-]+)>", one.header("List-Unsubscribe")).group(1)
    assert client.post(f"/m/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert suppression.is_suppressed(session, workspace.id, "user1@example.net")
    assert re.search(r'href="https://news\.example\.com/m/c/\d+/[\w.\-]+"', one.html)


class TestRateLimits:
    @pytest.fixture
    def app_config(self, app_config):
        app_config["MARKETING_RATE_LIMIT_UNSUBSCRIBE"] = "3/minute"
        app_config["MARKETING_RATE_LIMIT_TRACKING"] = "5/minute"
        return app_config

    def test_over_the_limit_is_429_with_retry_after(self, client):
        answers = [client.get("/m/u/not-a-token").status_code for _ in range(4)]
        assert answers == [404, 404, 404, 429]
        limited = client.get("/m/u/not-a-token")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # another group keeps its own count; other clients their own
        assert client.get("/m/o/x.gif").status_code == 404
        other = client.get("/m/u/not-a-token", environ_base={"REMOTE_ADDR": "127.0.0.9"})
        assert other.status_code == 404
        assert client.get("/m/health").status_code == 200  # not limited


def test_redis_storage_shares_the_window_between_limiters():
    url = "redis://127.0.0.1:6379/15"
    clock = [1_000_000.0]
    first = ratelimit.RateLimiter(url, clock=lambda: clock[0])
    second = ratelimit.RateLimiter(url, clock=lambda: clock[0])
    group, limit = f"test-{uuid.uuid4().hex}", ratelimit.parse("3/minute")
    assert [first.hit(group, "1.2.3.4", limit) for _ in range(2)] == [0, 0]
    assert second.hit(group, "1.2.3.4", limit) == 0
    assert first.hit(group, "1.2.3.4", limit) == 20  # window ends at 1_000_020
    assert second.hit(group, "5.6.7.8", limit) == 0
    clock[0] += 20
    assert second.hit(group, "1.2.3.4", limit) == 0
    assert ratelimit.parse("0") is None
    assert ratelimit.parse("10/s") == ratelimit.Limit(10, 1)
    with pytest.raises(ValueError, match="rate limit"):
        ratelimit.parse("ten per minute")


def test_a_campaign_without_tracking_keeps_its_links(app, session, workspace, sim):
    c, user = _campaign(session, workspace, sim, n=1, tracking=False)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    mail = _mail(sim, user, "user0@example.net")
    assert 'href="https://shop.example.org/spring?a=1&amp;b=2"' in mail.html
    assert "/m/o/" not in mail.html
    assert "List-Unsubscribe" in mail.headers
    assert session.scalar(select(func.count()).select_from(TrackedLink)) == 0
    assert session.get(Campaign, c.id).status == "completed"
