"""An admin walks the whole setup wizard in headless Chromium against the SendCloud simulator and
the DNS responder, through every failure path the issue names: an invalid domain name, a wrong
API key, a missing DKIM record and two SPF records — each with its own message, and each fix
turning the row green."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect
from werkzeug.serving import make_server

from plugin.demo.app import stop_sendcloud_sandbox
from plugin.sandbox.dns import DnsResponder
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from tests.conftest import free_port

from .conftest import ARTIFACTS, log_in, submit

API_USER = "browser_user"
API_KEY = "browser-api-key-0001"
DOMAIN = "newsletter.example.com"


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def live_server(app, port):
    """The app on the port its MARKETING_PUBLIC_BASE_URL names, so the simulator's webhook URL
    check (GET and POST must answer 200) reaches it."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def dns_server():
    with DnsResponder() as responder:
        yield responder


@pytest.fixture
def simulator(dns_server):
    sim = SendCloudSimulator(dns_nameserver=dns_server.nameserver, deliver_delay=0.01)
    sim.add_account(API_USER, API_KEY, quota=2000, used=0)
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, request, port):
    app_config["MARKETING_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    app_config["MARKETING_DNS_RECHECK_SECONDS"] = 1
    if "sandbox_demo" in request.node.name:
        app_config["MARKETING_SANDBOX"] = True
        return app_config
    simulator = request.getfixturevalue("simulator")
    dns_server = request.getfixturevalue("dns_server")
    app_config.update(
        MARKETING_SENDCLOUD_API_BASE=simulator.url,
        MARKETING_DNS_NAMESERVERS=[dns_server.host],
        MARKETING_DNS_PORT=dns_server.port,
        MARKETING_DNS_TIMEOUT=1.0,
    )
    return app_config


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(Path(ARTIFACTS) / f"setup-{name}.png"), full_page=True)


def row(page, purpose: str):
    return page.locator(f'#dns-table tr[data-purpose="{purpose}"]')


def test_admin_walks_the_whole_wizard_through_the_failure_paths(
    page, users, workspace, simulator, dns_server
):
    sim = simulator.simulator
    dns_server.set("example.com", "MX", ["10 mx.company-mail.example."])
    log_in(page, "admin")
    page.goto("/marketing/setup")
    assert page.url.endswith("/marketing/setup/domain")
    assert page.locator('.mkt-step[data-step="domain"]').get_attribute("data-status") == "current"

    # 1. An invalid name, then an apex domain that receives mail, then the suggested subdomain.
    page.fill("#domain", "news_letter.example.com")
    page.check("#confirm")
    submit(page, "#domain-submit")
    error = page.locator('[data-error="domain"]')
    expect(error).to_be_visible()
    assert "_" in error.inner_text()
    shot(page, "1-invalid-domain")

    page.fill("#domain", "example.com")
    submit(page, "#domain-submit")
    expect(page.locator('[data-warning="apex"]')).to_be_visible()
    expect(page.locator('[data-warning="mx"]')).to_be_visible()
    shot(page, "1-apex-warning")
    page.click(f'[data-suggest="{DOMAIN}"]')
    assert page.input_value("#domain") == DOMAIN
    page.uncheck("#confirm")
    submit(page, "#domain-submit")
    expect(page.locator('[data-error="confirm"]')).to_be_visible()
    page.check("#confirm")
    submit(page, "#domain-submit")
    page.wait_for_url("**/marketing/setup/credentials")

    # 2. A wrong key, then the right one.
    page.fill("#api_user", API_USER)
    page.fill("#api_key", "not-the-right-key")
    submit(page, "#credentials-submit")
    key_error = page.locator('[data-error="api_key"]')
    expect(key_error).to_be_visible()
    assert "API_KEY" in key_error.inner_text()
    assert page.input_value("#api_key") == ""  # never echoed back
    shot(page, "2-wrong-key")
    page.fill("#api_key", API_KEY)
    submit(page, "#credentials-submit")
    page.wait_for_url("**/marketing/setup/dns")

    # 3. Everything but DKIM, plus a second SPF record: both rows say what is wrong.
    records = sim.domain_records(DOMAIN)
    assert set(records) >= {"ownership", "spf", "dkim", "mx"}
    from plugin.providers.sendcloud import DnsRecord

    def record(purpose: str) -> DnsRecord:
        rtype, host, value = records[purpose]
        return DnsRecord(purpose, rtype, host, value, 10 if rtype == "MX" else None)

    dns_server.publish([record(p) for p in ("ownership", "spf", "mx", "dmarc")])
    dns_server.add(DOMAIN, "TXT", "v=spf1 include:_spf.company-mail.example ~all")
    submit(page, "#dns-check")
    assert row(page, "dkim").get_attribute("data-status") == "fail"
    assert row(page, "spf").get_attribute("data-status") == "fail"
    assert row(page, "ownership").get_attribute("data-status") == "pass"
    assert "2" in row(page, "spf").locator('[data-cell="message"]').inner_text()
    assert "include:spf.sendcloud.org" in row(page, "spf").locator('[data-cell="hint"]').inner_text()
    assert page.locator("#dns-continue").is_disabled()
    assert page.locator(f'[data-copy="{records["dkim"][2]}"]').count() == 1
    shot(page, "3-dkim-missing-two-spf")

    # Publishing DKIM turns its row green without a click (the automatic re-check)...
    dns_server.publish([record("dkim")])
    page.wait_for_selector('#dns-table tr[data-purpose="dkim"][data-status="pass"]', timeout=8000)
    assert row(page, "dkim").locator("[data-status-chip]").inner_text().strip() == "✓"
    # ... and merging the SPF records, then "Check again", turns SPF green.
    kept = [v for v in dns_server.get(DOMAIN, "TXT") if not v.startswith("v=spf1")]
    dns_server.set(
        DOMAIN, "TXT", [*kept, "v=spf1 include:_spf.company-mail.example include:spf.sendcloud.org ~all"]
    )
    submit(page, "#dns-check")
    assert row(page, "spf").get_attribute("data-status") == "pass"
    assert page.locator("#dns-continue").is_enabled()
    shot(page, "3-all-green")
    page.click("#dns-continue")
    page.wait_for_url("**/marketing/setup/api-users")

    # 4. API_USERs and the webhook, with the APP KEY the console shows.
    page.fill("#app_key", sim.webhook_app_key)
    shot(page, "4-api-users")
    page.click("#api-users-submit")
    page.wait_for_url("**/marketing/setup/senders")
    assert sum(1 for r in sim.requests("apiuser/add") if r.result) == 2

    # 5. A from address off the domain, then a good sender; the reply-to is confirmed by mail.
    page.fill("#from_address", "news@elsewhere.example")
    page.fill("#from_name", "Example News")
    page.fill("#reply_to", "marketing@example.com")
    page.fill("#company_name", "Example Ltd.")
    page.fill("#postal_address", "1 Example Road, Shanghai")
    submit(page, "#sender-submit")
    expect(page.locator('[data-error="from_address"]')).to_be_visible()
    assert DOMAIN in page.locator('[data-error="from_address"]').inner_text()
    page.fill("#from_address", f"news@{DOMAIN}")
    submit(page, "#sender-submit")
    page.wait_for_url("**/marketing/setup/senders")
    expect(page.locator('[data-reply-to="waiting"]')).to_be_visible()
    assert page.locator("#senders-continue").is_disabled()
    shot(page, "5-waiting-for-confirmation")
    mail = next(m for m in sim.mails() if m.recipient == "marketing@example.com")
    link = re.search(r'href="([^"]+/confirm-reply-to/[^"]+)"', mail.html).group(1)
    page.goto(link)
    submit(page, "#confirm-reply-to")
    expect(page.locator("[data-confirmed]")).to_be_visible()
    page.goto("/marketing/setup/senders")
    expect(page.locator('[data-reply-to="verified"]')).to_be_visible()
    page.click("#senders-continue")

    # 6. Done: the account is synced and the quota shown.
    page.wait_for_url("**/marketing/setup/done")
    assert page.locator('[data-stat="quota"]').inner_text().strip() == "2,000"
    expect(page.locator("[data-setup-completed]")).to_be_visible()
    statuses = page.locator(".mkt-step").evaluate_all("els => els.map(e => e.dataset.status)")
    assert statuses == ["done"] * 6
    shot(page, "6-done")

    # Coming back opens the done page; earlier steps can be revisited.
    page.goto("/marketing/setup")
    assert page.url.endswith("/marketing/setup/done")
    submit(page, '.mkt-step[data-step="credentials"] a')
    assert page.input_value("#api_user") == API_USER
    assert page.input_value("#api_key") == ""
    assert API_KEY not in page.content()


def test_marketer_cannot_open_the_wizard(page, users, workspace):
    log_in(page, "marketer")
    response = page.goto("/marketing/setup/domain")
    assert response.status == 403


@pytest.fixture
def sandbox_demo_app(app):
    yield app
    stop_sendcloud_sandbox(app)


def test_sandbox_demo_panel_publishes_the_records(sandbox_demo_app, page, users, workspace):
    """MARKETING_SANDBOX: the demo runs the simulator and DNS in-process; the setup page offers
    the simulator's account and publishes the records with one click."""
    log_in(page, "admin")
    page.goto("/marketing/setup/domain")
    page.fill("#domain", "news.demo-shop.example")
    page.check("#confirm")
    submit(page, "#domain-submit")
    page.wait_for_url("**/marketing/setup/credentials")
    page.click("#sandbox-fill-account")
    submit(page, "#credentials-submit")
    page.wait_for_url("**/marketing/setup/dns")
    assert row(page, "dkim").get_attribute("data-status") == "fail"
    submit(page, "#sandbox-publish")
    for purpose in ("ownership", "spf", "dkim", "mx"):
        assert row(page, purpose).get_attribute("data-status") == "pass"
    shot(page, "sandbox-dns-published")
    page.click("#dns-continue")
    page.wait_for_url("**/marketing/setup/api-users")
    page.click('[data-fill="app_key"]')
    page.click("#api-users-submit")
    page.wait_for_url("**/marketing/setup/senders")
    page.fill("#from_name", "Demo Shop")
    page.fill("#reply_to", "owner@demo-shop.example")
    page.fill("#company_name", "Demo Shop Ltd.")
    page.fill("#postal_address", "9 Demo Street")
    submit(page, "#sender-submit")
    page.wait_for_url("**/marketing/setup/senders")
    link = page.get_attribute("#sandbox-confirm-link", "href")
    page.goto(link)
    submit(page, "#confirm-reply-to")
    page.goto("/marketing/setup/senders")
    page.click("#senders-continue")
    page.wait_for_url("**/marketing/setup/done")
    assert page.locator('[data-stat="quota"]').inner_text().strip() == "2,000"
