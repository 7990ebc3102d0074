"""The setup wizard service, step by step, against the SendCloud simulator and the DNS responder
on loopback (real HTTP and real DNS; nothing mocked)."""

from __future__ import annotations

import re

import pytest
from flask_babel import force_locale
from sqlalchemy import func, select

from plugin.access import ensure_workspace
from plugin.demo.app import create_app
from plugin.demo.models import db
from plugin.errors import InvalidInput, InvalidTransition
from plugin.extension import get_state
from plugin.models import AccountSnapshot, ProviderAccount, Sender, SendingDomain, SetupState
from plugin.sandbox.dns import DnsResponder
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.setup_wizard import SetupWizard, confirm_reply_to


@pytest.fixture(autouse=True)
def _english_messages(app):
    """Service messages outside a request follow the default UI language (Chinese); these tests
    quote the English source strings."""
    with force_locale("en"):
        yield


API_USER = "acme_main_user"
API_KEY = "k3y-Plaintext-For-Acme-0001"
DOMAIN = "newsletter.example.com"


@pytest.fixture
def dns_server():
    with DnsResponder() as responder:
        yield responder


@pytest.fixture
def simulator(dns_server):
    sim = SendCloudSimulator(
        dns_nameserver=dns_server.nameserver, check_webhook_urls=False, deliver_delay=0.01
    )
    sim.add_account(API_USER, API_KEY, quota=5000, used=12)
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator, dns_server):
    app_config.update(
        MARKETING_SENDCLOUD_API_BASE=simulator.url,
        MARKETING_DNS_NAMESERVERS=[dns_server.host],
        MARKETING_DNS_PORT=dns_server.port,
        MARKETING_DNS_TIMEOUT=1.0,
        MARKETING_PROVIDER_TIMEOUT=5.0,
    )
    return app_config


def make_wizard(session, workspace_id: int, **kw) -> SetupWizard:
    state = get_state()
    return SetupWizard(session, workspace_id, state.settings, state.secrets, **kw)


def count(simulator, endpoint: str) -> int:
    return sum(1 for r in simulator.simulator.requests(endpoint) if r.result)


def through_credentials(session, workspace_id: int) -> SetupWizard:
    wizard = make_wizard(session, workspace_id)
    wizard.submit_domain(DOMAIN, confirmed=True)
    wizard.submit_credentials(API_USER, API_KEY)
    session.commit()
    return wizard


def through_dns(session, workspace_id: int, dns_server) -> SetupWizard:
    wizard = through_credentials(session, workspace_id)
    wizard.register_domain()
    dns_server.publish(wizard.records())
    wizard.finish_dns()
    session.commit()
    return wizard


def checks_by_purpose(wizard: SetupWizard) -> dict:
    return {c.purpose: c for c in wizard.check_dns()}


# -- step 1 -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("news_letter.example.com", "underscore"),
        ("news letter.example.com", "space"),
        ("新闻.example.com", "position 1"),
        ("newsletter", "dot"),
        ("", "Enter"),
        ("news.demo-shop.test", "reserved for tests"),
        ("mail.intranet.local", "reserved for tests"),
    ],
)
def test_invalid_domain_names_are_refused_beside_the_field(session, workspace, name, fragment):
    wizard = make_wizard(session, workspace.id)
    with pytest.raises(InvalidInput) as caught:
        wizard.submit_domain(name, confirmed=True)
    assert caught.value.field == "domain"
    assert fragment in str(caught.value)
    assert wizard.state().domain_name is None
    assert wizard.current_step() == "domain"


def test_apex_domain_with_mail_is_warned_about_and_needs_acknowledgement(session, workspace, dns_server):
    dns_server.set("example.com", "MX", ["10 mx.company-mail.example."])
    wizard = make_wizard(session, workspace.id)
    review = wizard.submit_domain("Example.com", confirmed=True, warnings_acknowledged=False)
    assert not review.saved
    assert review.is_apex
    assert review.has_mx
    assert review.mx_hosts == ("mx.company-mail.example",)
    assert review.suggestion == "newsletter.example.com"
    assert wizard.state().domain_name is None
    saved = wizard.submit_domain("example.com", confirmed=True, warnings_acknowledged=True)
    assert saved.saved
    assert wizard.state().domain_name == "example.com"
    assert wizard.state().notes["domain"]["has_mx"] is True


def test_the_binding_confirmation_is_required(session, workspace):
    wizard = make_wizard(session, workspace.id)
    with pytest.raises(InvalidInput) as caught:
        wizard.submit_domain(DOMAIN, confirmed=False)
    assert caught.value.field == "confirm"
    assert wizard.current_step() == "domain"


def test_later_steps_are_locked_until_earlier_ones_are_done(session, workspace):
    wizard = make_wizard(session, workspace.id)
    with pytest.raises(InvalidTransition):
        wizard.submit_credentials(API_USER, API_KEY)
    assert not wizard.reachable("dns")
    assert [s.status for s in wizard.steps()] == ["current", "todo", "todo", "todo", "todo", "todo"]


# -- step 2 -------------------------------------------------------------------------------------
def test_wrong_api_key_says_sendcloud_refused_the_pair(session, workspace):
    wizard = make_wizard(session, workspace.id)
    wizard.submit_domain(DOMAIN, confirmed=True)
    session.commit()
    with pytest.raises(InvalidInput) as caught:
        wizard.submit_credentials(API_USER, "not-the-key")
    assert caught.value.field == "api_key"
    assert "SendCloud refused this API_USER/API_KEY pair" in str(caught.value)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(ProviderAccount)) == 0
    assert make_wizard(session, workspace.id).current_step() == "credentials"


def test_unreachable_sendcloud_gives_a_clear_message(session, workspace):
    from plugin.providers.sendcloud import SendCloudClient
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}/apiv2"
    wizard = make_wizard(
        session, workspace.id, client_factory=lambda u, k: SendCloudClient(u, k, base_url=dead, timeout=2)
    )
    wizard.submit_domain(DOMAIN, confirmed=True)
    with pytest.raises(InvalidInput) as caught:
        wizard.submit_credentials(API_USER, API_KEY)
    assert "could not be reached" in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_credentials_are_verified_and_stored_encrypted(session, workspace):
    wizard = through_credentials(session, workspace.id)
    account = wizard.account()
    assert account.api_user == API_USER
    assert API_KEY not in account.api_key_encrypted
    assert get_state().secrets.decrypt(account.api_key_encrypted) == API_KEY
    assert wizard.state().notes["account"]["daily_quota"] == 5000
    assert wizard.latest_snapshot().daily_quota == 5000, "the account bar has figures from step 2 on"
    assert wizard.current_step() == "dns"
    # An empty key keeps the stored one (the page never shows it back).
    wizard.submit_credentials(API_USER, "")
    assert get_state().secrets.decrypt(wizard.account().api_key_encrypted) == API_KEY


# -- step 3 -------------------------------------------------------------------------------------
def test_missing_dkim_fails_until_it_is_published(session, workspace, dns_server):
    wizard = through_credentials(session, workspace.id)
    wizard.register_domain()
    records = wizard.records()
    dns_server.publish([r for r in records if r.purpose != "dkim"])
    checks = checks_by_purpose(wizard)
    assert checks["dkim"].status == "fail"
    assert checks["dkim"].code in {"nxdomain", "dkim_missing"}
    assert checks["spf"].status == "pass"
    assert checks["mx"].status == "pass"
    with pytest.raises(InvalidInput) as caught:
        wizard.finish_dns()
    assert "DKIM" in str(caught.value)
    assert wizard.current_step() == "dns"

    dns_server.publish([r for r in records if r.purpose == "dkim"])
    assert checks_by_purpose(wizard)["dkim"].status == "pass"
    wizard.finish_dns()
    assert wizard.current_step() == "api_users"
    assert wizard.domain().status == "verified"


def test_two_spf_records_are_reported_and_fixing_turns_green(session, workspace, dns_server):
    wizard = through_credentials(session, workspace.id)
    wizard.register_domain()
    dns_server.publish(wizard.records())
    dns_server.add(DOMAIN, "TXT", "v=spf1 include:_spf.company-mail.example ~all")
    spf = checks_by_purpose(wizard)["spf"]
    assert spf.status == "fail"
    assert spf.code == "spf_multiple"
    assert "include:spf.sendcloud.org" in spf.hint
    assert "include:_spf.company-mail.example" in spf.hint
    assert not wizard.dns_ready()

    kept = [v for v in dns_server.get(DOMAIN, "TXT") if not v.startswith("v=spf1")]
    dns_server.set(
        DOMAIN, "TXT", [*kept, "v=spf1 include:_spf.company-mail.example include:spf.sendcloud.org ~all"]
    )
    assert checks_by_purpose(wizard)["spf"].status == "pass"
    assert wizard.dns_ready()


def test_dmarc_is_advice_only(session, workspace, dns_server):
    wizard = through_credentials(session, workspace.id)
    wizard.register_domain()
    dns_server.publish([r for r in wizard.records() if r.purpose != "dmarc"])
    checks = checks_by_purpose(wizard)
    assert checks["dmarc"].status == "advice"
    wizard.finish_dns()
    assert wizard.current_step() == "api_users"


def test_existing_domain_at_sendcloud_is_reused(session, workspace, simulator):
    simulator.simulator.add_domain(API_USER, DOMAIN)
    wizard = through_credentials(session, workspace.id)
    domain = wizard.register_domain()
    assert domain.name == DOMAIN
    assert domain.dns_records
    assert count(simulator, "domain/add") == 0


# -- step 4 and idempotency ---------------------------------------------------------------------
def test_steps_three_and_four_twice_create_nothing_new(session, workspace, simulator, dns_server):
    wizard = through_dns(session, workspace.id, dns_server)
    wizard.finish_api_users("app-key-from-console-123")
    session.commit()
    account = wizard.account()
    batch, trigger = account.batch_api_user, account.trigger_api_user
    assert re.fullmatch(r"[A-Za-z0-9_]{6,32}", batch)
    assert batch.endswith("_batch")
    assert re.fullmatch(r"[A-Za-z0-9_]{6,32}", trigger)
    assert trigger.endswith("_trigger")
    first = {e: count(simulator, e) for e in ("domain/add", "apiuser/add", "webhook/add")}
    assert first == {"domain/add": 1, "apiuser/add": 2, "webhook/add": 1}

    again = make_wizard(session, workspace.id)
    again.register_domain()
    again.check_dns()
    again.finish_dns()
    again.finish_api_users("")
    session.commit()
    assert {e: count(simulator, e) for e in first} == first
    assert (again.account().batch_api_user, again.account().trigger_api_user) == (batch, trigger)
    assert session.scalar(select(func.count()).select_from(SendingDomain)) == 1
    assert wizard.webhook_url() in account.webhook_url


def test_webhook_app_key_is_required(session, workspace, simulator, dns_server):
    """Refused before anything is created at SendCloud: a form error used to leave two API_USERs
    behind whose keys were rolled back, and the retry created two more."""
    wizard = through_dns(session, workspace.id, dns_server)
    for bad in ("", "has spaces in it"):
        with pytest.raises(InvalidInput) as caught:
            wizard.finish_api_users(bad)
        assert caught.value.field == "app_key"
        session.rollback()
    assert count(simulator, "apiuser/add") == 0
    wizard.finish_api_users("app-key-from-console-123")
    session.commit()
    assert wizard.account().batch_api_user.endswith("_batch")  # no numbered sibling


def test_a_created_api_user_is_kept_when_the_next_one_fails(session, workspace, simulator, dns_server):
    """The batch user exists, the trigger user's creation fails: the batch key is committed."""
    wizard = through_dns(session, workspace.id, dns_server)
    wizard_add = wizard._add_api_user

    def add_then_fail(client, kind, domain_name, taken):  # SendCloud fails the second apiuser/add
        if kind == "trigger":
            simulator.simulator.faults.fail_endpoints = "apiuser/add"
        return wizard_add(client, kind, domain_name, taken)

    wizard._add_api_user = add_then_fail
    with pytest.raises(InvalidInput):
        wizard.finish_api_users("app-key-from-console-123")
    session.rollback()
    simulator.simulator.faults.fail_endpoints = ""
    account = make_wizard(session, workspace.id).account()
    assert account.batch_api_user.endswith("_batch")
    assert account.batch_api_key_encrypted
    again = make_wizard(session, workspace.id)
    again.finish_api_users("app-key-from-console-123")
    session.commit()
    assert again.account().batch_api_user == account.batch_api_user  # reused, not "_batch2"


def test_api_users_are_kept_when_the_webhook_call_fails(session, workspace, simulator, dns_server):
    """SendCloud shows a new API_USER's key once: a failing webhook call must not roll it back."""
    wizard = through_dns(session, workspace.id, dns_server)
    simulator.simulator.faults.fail_endpoints = "webhook/list"
    with pytest.raises(InvalidInput):
        wizard.finish_api_users("app-key-from-console-123")
    session.rollback()
    account = make_wizard(session, workspace.id).account()
    assert account.batch_api_user.endswith("_batch")
    assert account.batch_api_key_encrypted
    simulator.simulator.faults.fail_endpoints = ""
    wizard = make_wizard(session, workspace.id)
    wizard.finish_api_users("app-key-from-console-123")
    session.commit()
    assert count(simulator, "apiuser/add") == 2  # the first two, reused


def test_api_user_name_taken_elsewhere_gets_a_sibling(session, workspace, simulator, dns_server):
    """API_USER names are unique across SendCloud: another account's name means the next number."""
    simulator.simulator.add_account("someone_else", "their-key", domain=None)
    simulator.simulator.add_domain("someone_else", "other.example.org")
    simulator.simulator.add_api_user(
        "someone_else",
        "newsletter_example_com_batch",
        "x" * 20,
        email_type="batch",
        domain="other.example.org",
    )
    wizard = through_dns(session, workspace.id, dns_server)
    batch, trigger = wizard.setup_api_users()
    assert batch == "newsletter_example_com_batch2"
    assert trigger == "newsletter_example_com_trigger"


# -- step 5 -------------------------------------------------------------------------------------
def through_api_users(session, workspace_id: int, dns_server) -> SetupWizard:
    wizard = through_dns(session, workspace_id, dns_server)
    wizard.finish_api_users("app-key-from-console-123")
    session.commit()
    return wizard


SENDER = {
    "from_address": f"news@{DOMAIN}",
    "from_name": "Example News",
    "reply_to": "marketing@example.com",
    "company_name": "Example Ltd.",
    "postal_address": "1 Example Road, Shanghai",
}


def test_sender_fields_are_checked_beside_each_field(session, workspace, dns_server):
    wizard = through_api_users(session, workspace.id, dns_server)
    with pytest.raises(InvalidInput) as caught:
        wizard.submit_sender(
            from_address="news@elsewhere.example",
            from_name="",
            reply_to="nope",
            company_name="",
            postal_address="",
        )
    errors = caught.value.errors
    assert set(errors) == {"from_address", "from_name", "reply_to", "company_name", "postal_address"}
    assert DOMAIN in errors["from_address"]


def test_reply_to_is_confirmed_through_the_link_in_the_trigger_mail(
    session, workspace, simulator, dns_server
):
    wizard = through_api_users(session, workspace.id, dns_server)
    sender = wizard.submit_sender(**SENDER)
    session.commit()
    assert sender.reply_to_verified_at is None
    assert sender.reply_to_verification_sent_at is not None
    with pytest.raises(InvalidInput):
        wizard.finish_senders()

    mails = [m for m in simulator.simulator.mails() if m.recipient == SENDER["reply_to"]]
    assert len(mails) == 1
    assert mails[0].api_user == wizard.account().trigger_api_user
    from plugin import counters

    sent_outside_campaigns = counters.totals(session, 0)  # as its delivery will be: campaign 0
    assert (sent_outside_campaigns["submitted"], sent_outside_campaigns["sent"]) == (1, 1)
    link = re.search(r'href="([^"]+/confirm-reply-to/[^"]+)"', mails[0].html).group(1)
    token = link.rsplit("/", 1)[1]
    confirm_reply_to(session, get_state().settings, token)
    session.commit()
    assert wizard.sender().reply_to_verified_at is not None
    wizard.finish_senders()
    assert wizard.current_step() == "done"


def test_changing_the_reply_to_needs_a_new_confirmation(session, workspace, simulator, dns_server):
    wizard = through_api_users(session, workspace.id, dns_server)
    old = wizard.submit_sender(**SENDER)
    old_token = wizard.reply_to_token(old)
    wizard.submit_sender(**{**SENDER, "reply_to": "replies@example.com"})
    session.commit()
    from plugin.errors import NotFound

    with pytest.raises(NotFound):
        confirm_reply_to(session, get_state().settings, old_token)
    assert len([m for m in simulator.simulator.mails() if m.recipient == "replies@example.com"]) == 1


# -- step 6, resume, purge ------------------------------------------------------------------------
def complete(session, workspace_id: int, simulator, dns_server) -> SetupWizard:
    wizard = through_api_users(session, workspace_id, dns_server)
    sender = wizard.submit_sender(**SENDER)
    confirm_reply_to(session, get_state().settings, wizard.reply_to_token(sender))
    wizard.finish_senders()
    wizard.finish()
    session.commit()
    return wizard


def test_done_syncs_the_account(session, workspace, simulator, dns_server):
    wizard = complete(session, workspace.id, simulator, dns_server)
    snapshot = wizard.latest_snapshot()
    assert snapshot.daily_quota == 5000
    assert snapshot.used_today == 13  # 12 before, plus the reply-to confirmation mail
    assert float(snapshot.balance) == pytest.approx(99.999)  # one mail at 0.001
    assert wizard.is_completed()
    assert [s.status for s in wizard.steps()] == ["done"] * 6


def test_resume_after_a_new_app_instance(app_config, session, workspace, dns_server):
    through_credentials(session, workspace.id)
    session.commit()
    workspace_id = workspace.id
    fresh = create_app(dict(app_config))
    with fresh.app_context():
        wizard = make_wizard(db.session, workspace_id)
        assert wizard.current_step() == "dns"
        assert wizard.state().domain_name == DOMAIN
        assert wizard.reachable("domain")
        assert wizard.reachable("credentials")
        wizard.register_domain()
        dns_server.publish(wizard.records())
        wizard.finish_dns()
        db.session.commit()
        db.session.remove()
    assert make_wizard(session, workspace_id).current_step() == "api_users"


def test_purge_needs_the_typed_domain_and_removes_only_this_workspace(
    session, workspace, other_workspace, simulator, dns_server
):
    wizard = complete(session, workspace.id, simulator, dns_server)
    other = make_wizard(session, other_workspace.id)
    other.submit_domain("mail.acme.example", confirmed=True)
    other.submit_credentials(API_USER, API_KEY)
    session.commit()

    with pytest.raises(InvalidInput) as caught:
        wizard.purge("something else")
    assert caught.value.field == "confirm_name"
    wizard.purge(DOMAIN.upper())
    session.commit()
    for model in (ProviderAccount, SendingDomain, Sender, SetupState, AccountSnapshot):
        assert session.scalar(select(func.count()).where(model.workspace_id == workspace.id)) == 0
    assert session.scalar(select(func.count()).where(ProviderAccount.workspace_id == other_workspace.id)) == 1
    assert make_wizard(session, other_workspace.id).state().domain_name == "mail.acme.example"
    assert make_wizard(session, workspace.id).current_step() == "domain"


def test_workspaces_do_not_see_each_others_state(session, workspace, other_workspace):
    make_wizard(session, workspace.id).submit_domain(DOMAIN, confirmed=True)
    session.commit()
    assert make_wizard(session, other_workspace.id).state().domain_name is None
    assert ensure_workspace(session, "acme").id == other_workspace.id


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_runs_the_same_steps_and_stops_where_something_outside_is_needed(
    app, session, workspace, simulator, dns_server
):
    runner = app.test_cli_runner()
    base = ["marketing", "setup", "--domain", DOMAIN, "--api-user", API_USER, "--yes"]
    first = runner.invoke(args=base, input=f"{API_KEY}\n")
    assert first.exit_code == 2, first.output
    assert API_KEY not in first.output
    assert "FAIL" in first.output
    assert "dkim" in first.output
    assert "48 hours" in first.output

    session.expire_all()
    wizard = make_wizard(session, workspace.id)
    dns_server.publish(wizard.records())
    sender = [
        "--webhook-app-key", "app-key-from-console-123",
        "--from-address", SENDER["from_address"], "--from-name", SENDER["from_name"],
        "--reply-to", SENDER["reply_to"], "--company", SENDER["company_name"],
        "--postal-address", SENDER["postal_address"],
    ]  # fmt: skip
    second = runner.invoke(args=base + sender)
    assert second.exit_code == 2, second.output
    assert "waiting for the confirmation" in second.output
    assert "app-key-from-console-123" not in second.output

    session.expire_all()
    wizard = make_wizard(session, workspace.id)
    confirm_reply_to(session, get_state().settings, wizard.reply_to_token(wizard.sender()))
    session.commit()
    third = runner.invoke(args=base)
    assert third.exit_code == 0, third.output
    assert "today's quota 5000" in third.output
    assert count(simulator, "apiuser/add") == 2
    assert count(simulator, "domain/add") == 1
    session.expire_all()
    assert make_wizard(session, workspace.id).is_completed()


def test_cli_wrong_key_is_an_error_naming_the_field(app, workspace):
    result = app.test_cli_runner().invoke(
        args=["marketing", "setup", "--domain", DOMAIN, "--api-user", API_USER, "--api-key", "wrong", "--yes"]
    )
    assert result.exit_code == 1
    assert "api_key: SendCloud refused this API_USER/API_KEY pair" in result.output


# -- pages: access, CSRF, purge -----------------------------------------------------------------
SETUP_URLS = [
    ("get", "/marketing/setup"),
    ("get", "/marketing/setup/domain"),
    ("post", "/marketing/setup/domain"),
    ("get", "/marketing/setup/credentials"),
    ("post", "/marketing/setup/credentials"),
    ("get", "/marketing/setup/dns"),
    ("post", "/marketing/setup/dns/register"),
    ("post", "/marketing/setup/dns/check"),
    ("post", "/marketing/setup/dns/continue"),
    ("get", "/marketing/setup/api-users"),
    ("post", "/marketing/setup/api-users"),
    ("get", "/marketing/setup/senders"),
    ("post", "/marketing/setup/senders"),
    ("post", "/marketing/setup/senders/resend"),
    ("post", "/marketing/setup/senders/continue"),
    ("get", "/marketing/setup/done"),
    ("post", "/marketing/setup/done"),
    ("post", "/marketing/setup/purge"),
    ("post", "/marketing/setup/sandbox-dns"),
]


@pytest.mark.parametrize("role", ["marketer", "sales"])
def test_only_admins_reach_any_wizard_page_or_endpoint(login, workspace, role):
    browser = login(role)
    for method, url in SETUP_URLS:
        assert getattr(browser, method)(url).status_code == 403, url


def test_wizard_posts_need_the_csrf_token(login, workspace):
    admin = login("admin")
    response = admin.client.post("/marketing/setup/domain", data={"domain": DOMAIN, "confirm": "1"})
    assert response.status_code == 400
    check = admin.client.post("/marketing/setup/dns/check", json={}, headers={"Accept": "application/json"})
    assert check.status_code == 400


def test_purge_page_removes_the_binding_after_typed_confirmation(
    login, session, workspace, simulator, dns_server
):
    admin = login("admin")
    admin.post("/marketing/setup/domain", data={"domain": DOMAIN, "confirm": "1"})
    admin.post("/marketing/setup/credentials", data={"api_user": API_USER, "api_key": API_KEY})
    page = admin.get("/marketing/setup/dns").get_data(as_text=True)
    assert 'id="purge-form"' in page
    wrong = admin.post("/marketing/setup/purge", data={"confirm_name": "example.com"})
    assert wrong.status_code == 302
    assert session.scalar(select(func.count()).select_from(ProviderAccount)) == 1
    right = admin.post("/marketing/setup/purge", data={"confirm_name": DOMAIN})
    assert right.headers["Location"].endswith("/marketing/setup/domain")
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(ProviderAccount)) == 0
    assert session.scalar(select(func.count()).select_from(SetupState)) == 0


def test_the_account_type_reads_in_the_page_language(app):
    """SendCloud names the account type in Chinese for people; a known one is translated, any
    other is shown as SendCloud wrote it."""
    from plugin.providers.sendcloud import account_type_label

    with app.test_request_context():
        with force_locale("en"):
            assert account_type_label("付费用户") == "Paying account"
            assert account_type_label("企业用户") == "企业用户"
            assert account_type_label(None) == ""
            assert account_type_label(3) == "3"  # whatever SendCloud sends reads as text
        with force_locale("zh_Hans_CN"):
            assert account_type_label("付费用户") == "付费用户"


def test_refused_events_show_on_step_four_and_a_new_app_key_clears_them(
    login, session, workspace, simulator, dns_server
):
    from plugin import webhooks

    wizard = through_api_users(session, workspace.id, dns_server)
    session.commit()
    assert webhooks.note_refusal(session, workspace.id, "signature")
    page = login("admin").get("/marketing/setup/api-users").get_data(as_text=True)
    assert 'data-webhook="refused"' in page
    assert "does not match the APP KEY stored here" in page
    wizard = make_wizard(session, workspace.id)
    wizard.finish_api_users("app-key-pasted-again-456")
    session.commit()
    page = login("admin").get("/marketing/setup/api-users").get_data(as_text=True)
    assert 'data-webhook="refused"' not in page
    assert 'data-webhook="ok"' not in page, "nothing has arrived under the new key yet"
    assert wizard.account().webhook_refused_since is None


def test_entering_the_app_key_again_after_setup_returns_to_the_summary(
    login, session, workspace, simulator, dns_server
):
    complete(session, workspace.id, simulator, dns_server)
    session.commit()
    admin = login("admin")
    answer = admin.post("/marketing/setup/api-users", data={"app_key": "a-new-key-from-the-console"})
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith("/marketing/setup/done")
