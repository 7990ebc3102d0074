"""Trigger mail service against the SendCloud simulator over HTTP and a real aiosmtpd server:
rendering, idempotency (also under concurrency), retries with one provider key, the quota gate,
independence from the batch ledger, and secrets kept out of the logs."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from zoneinfo import ZoneInfo

import campaign_kit as kit
import pytest
from campaign_kit import BATCH_KEY, TRIGGER_KEY, TRIGGER_USER
from flask_babel import force_locale
from sqlalchemy import func, select

from plugin import allocation, quota, trigger_mail
from plugin.errors import InvalidInput
from plugin.extension import get_state
from plugin.models import ProviderAccount, QuotaLedger, TriggerMail, utcnow
from tests import smtp_tls
from tests.smtp_tls import PASSWORD, USER

certs = smtp_tls.certs
tls_sink = smtp_tls.tls_sink


@pytest.fixture(autouse=True)
def _english_messages(app):
    """Messages outside a request follow the default UI language (Chinese); these tests quote
    the English source strings."""
    with force_locale("en"):
        yield


@pytest.fixture
def sim():
    with kit.acme_simulator(seed=7) as simulator:
        yield simulator


@pytest.fixture
def app_config(app_config, sim):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=sim.url, MARKETING_PROVIDER_TIMEOUT=1.0)
    return app_config


@pytest.fixture
def slept():
    return []


@pytest.fixture
def ctx(app, slept):
    context = trigger_mail.context_from_app(app)
    context.sleep = slept.append
    return context


@pytest.fixture
def account(session, workspace):
    return kit.acme_account(session, workspace.id, address="orders@mail.example.com", from_name="Acme 商城")


@pytest.fixture
def template(session, workspace):
    return kit.template(
        session,
        workspace.id,
        name="Order confirmation",
        subject="订单 {{order_no}} 已确认",
        html="<html><body><p>Dear {{name|customer}}, order {{order_no}} ships {{ship_date}}.</p>"
        "</body></html>",
    )


def _send(session, workspace, ctx, key="order-1001", **overrides):
    values = {"to": "buyer@example.org", "idempotency_key": key, "ctx": ctx}
    values.update(overrides)
    return trigger_mail.send_trigger_mail(session, workspace.id, **values)


def _send_requests(sim):
    return [r for r in sim.requests() if r.endpoint == "mail/send"]


# --------------------------------------------------------------------------- sending


def test_a_templated_mail_goes_out_at_once_through_the_trigger_api_user(
    session, workspace, account, template, ctx, sim
):
    mail = _send(
        session,
        workspace,
        ctx,
        template_id=template.id,
        variables={"name": "Ann <b>", "order_no": "A-1001", "ship_date": "2024-06-01"},
    )
    assert mail.status == "sent"
    assert mail.attempts == 1
    assert mail.error is None
    assert mail.sent_at is not None
    assert mail.account_id == account.id
    assert mail.subject == "订单 A-1001 已确认"
    [delivered] = sim.mails()
    assert delivered.api_user == TRIGGER_USER
    assert delivered.recipient == "buyer@example.org"
    assert delivered.subject == "订单 A-1001 已确认"
    assert "Dear Ann &lt;b&gt;, order A-1001 ships 2024-06-01." in delivered.html
    assert "unsubscribe" not in delivered.html.lower()
    assert delivered.send_request_id == trigger_mail.provider_key(workspace.id, "order-1001")
    assert mail.provider_message_id == delivered.email_id
    assert delivered.from_address == "orders@mail.example.com"


def test_trigger_mail_counts_as_sent_outside_campaigns_so_deliveries_never_exceed_it(
    session, workspace, account, ctx, sim
):
    """Mail outside campaigns counts in campaign 0 when sent, as its delivery events do: the
    account's daily table adds both up (a delivery without its send read as 104 % delivered)."""
    from plugin import counters, events, stats

    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert mail.status == "sent"
    totals = counters.totals(session, 0)
    assert (totals["submitted"], totals["sent"]) == (1, 1)
    assert events.record(
        session,
        workspace_id=workspace.id,
        type="deliver",
        dedupe_key="deliver-trigger-1",
        occurred_at=dt.datetime.now(dt.UTC),
        data={"recipient": mail.to_email},
    )
    session.commit()
    assert counters.totals(session, 0)["delivered"] == 1
    today = mail.sent_at.astimezone(ZoneInfo("Asia/Shanghai")).date()
    [day], _total = stats.account_daily(session, workspace.id, start=today, end=today, tz="Asia/Shanghai")
    assert (day.total, day.delivered) == (1, 1)


def test_inline_subject_and_html_with_a_fallback(session, workspace, account, ctx, sim):
    mail = _send(
        session,
        workspace,
        ctx,
        subject="Your code",
        html="<p>Code {{code}} for {{name|you}}</p>",
        variables={"code": 482913},
    )
    assert mail.status == "sent"
    [delivered] = sim.mails()
    assert "Code 482913 for you" in delivered.html
    assert "Code 482913 for you" in delivered.text


def test_the_same_key_twice_sends_one_mail(session, workspace, account, template, ctx, sim):
    variables = {"order_no": "A-1", "ship_date": "today"}
    first = _send(session, workspace, ctx, template_id=template.id, variables=variables)
    again, created = trigger_mail.submit(
        session,
        workspace.id,
        to="Buyer@Example.org",
        idempotency_key="order-1001",
        template_id=template.id,
        variables=variables,
        ctx=ctx,
    )
    assert created is False
    assert again.id == first.id
    assert again.status == "sent"
    assert len(sim.mails()) == 1
    assert len(_send_requests(sim)) == 1
    assert session.scalar(select(func.count()).select_from(TriggerMail)) == 1


def test_a_key_reused_for_another_recipient_is_refused(session, workspace, account, ctx, sim):
    _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    with pytest.raises(InvalidInput) as info:
        _send(session, workspace, ctx, to="someone-else@example.org", subject="Hi", html="<p>x</p>")
    assert info.value.field == "idempotency_key"
    assert len(sim.mails()) == 1


def test_the_same_key_in_two_workspaces_is_two_mails(session, workspace, other_workspace, account, ctx, sim):
    kit.sendcloud_account(
        session, other_workspace.id, api_user=TRIGGER_USER, api_key=TRIGGER_KEY, name="Other"
    )
    kit.sender(
        session,
        other_workspace.id,
        address="o@mail.example.com",
        from_name=None,
        reply_to=None,
        company_name=None,
        postal_address=None,
    )
    one = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    two = _send(session, other_workspace, ctx, subject="Hi", html="<p>x</p>")
    assert one.id != two.id
    assert two.status == "sent"
    assert len(sim.mails()) == 2


def test_concurrent_calls_with_the_same_key_produce_one_mail(app, session, workspace, account, sim):
    sim.faults.latency = 0.2  # the first sender is still talking to the provider when the others arrive
    workspace_id = workspace.id
    barrier = threading.Barrier(4)
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def call() -> None:
        with app.app_context():
            from plugin.demo.models import db

            try:
                context = trigger_mail.context_from_app(app)
                barrier.wait(timeout=10)
                mail = trigger_mail.send_trigger_mail(
                    db.session,
                    workspace_id,
                    to="buyer@example.org",
                    idempotency_key="race-1",
                    subject="Race",
                    html="<p>once</p>",
                    ctx=context,
                )
                results.append((mail.id, mail.status))
            except BaseException as exc:
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(results) == 4
    assert len({mail_id for mail_id, _ in results}) == 1
    assert len(sim.mails()) == 1
    assert len(_send_requests(sim)) == 1
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(TriggerMail)) == 1
    assert session.scalar(select(TriggerMail.status)) == "sent"


# --------------------------------------------------------------------------- retries


def test_http_500_is_retried_with_the_same_send_request_id(session, workspace, account, ctx, sim, slept):
    _send(session, workspace, ctx, key="warm-up", subject="Hi", html="<p>x</p>")  # syncs the quota
    sim.faults.fail_next = 2
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert mail.status == "sent"
    assert mail.attempts == 3
    requests = _send_requests(sim)[1:]
    assert [r.http_status for r in requests] == [500, 500, 200]
    ids = {r.param("sendRequestId") for r in requests}
    assert ids == {trigger_mail.provider_key(workspace.id, "order-1001")}
    assert [m.recipient for m in sim.mails()] == ["buyer@example.org", "buyer@example.org"]
    assert slept == [0.2, 0.5]


def test_retries_that_never_succeed_leave_the_mail_failed_and_give_the_quota_back(
    session, workspace, account, ctx, sim, slept
):
    _send(session, workspace, ctx, key="warm-up", subject="Hi", html="<p>x</p>")  # syncs the quota
    sim.faults.fail_next = 100
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert mail.status == "failed"
    assert mail.attempts == 4
    assert "500" in mail.error
    assert len(sim.mails()) == 1  # the warm-up only
    assert slept == [0.2, 0.5, 1.0]
    from plugin import counters

    totals = counters.totals(session, 0)  # refused requests never reached a recipient: not counted
    assert (totals["submitted"], totals["sent"]) == (1, 1)
    ledger = session.scalars(select(QuotaLedger).where(QuotaLedger.channel == "trigger")).one()
    assert (ledger.reserved, ledger.committed) == (0, 1)


def test_a_provider_that_cannot_be_read_before_the_first_send_blocks_with_the_reason(
    session, workspace, account, ctx, sim, slept
):
    sim.faults.fail_next = 100  # the quota sync that precedes the first send fails too
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert mail.status == "failed"
    assert mail.attempts == 0
    assert "could not be read" in mail.error
    assert sim.mails() == []
    assert slept == [0.2, 0.5, 1.0]  # the sync was retried like a send


def test_an_answer_lost_after_acceptance_is_not_sent_twice(session, workspace, account, ctx, sim):
    sim.faults.timeout_after_accept = 1.5  # longer than MARKETING_PROVIDER_TIMEOUT
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    sim.faults.timeout_after_accept = 0
    assert mail.status == "sent"
    assert mail.attempts == 2
    assert len(sim.mails()) == 1
    requests = _send_requests(sim)
    assert requests[-1].status_code == 40000  # the provider recognised the repeat


# --------------------------------------------------------------------------- quota


def test_a_blocked_quota_leaves_the_mail_failed_with_the_reason(session, workspace, account, ctx, sim):
    sim.set_account(TRIGGER_USER, quota=0)
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert mail.status == "failed"
    assert "quota for trigger mail is used up" in mail.error
    assert mail.attempts == 0
    assert sim.mails() == []
    assert _send_requests(sim) == []


def test_every_gate_reason_reads_as_its_own_sentence_and_an_unknown_one_shows_no_code():
    # The reasons quota.reserve_for_send answers with (its Blocked(...) returns).
    gate_reasons = ("quota", "balance", "cap", "not_synced")
    generic = trigger_mail._blocked_text(quota.Blocked("some_new_reason"))
    assert generic == "Sending is blocked for now. Nothing was sent."
    sentences = {reason: trigger_mail._blocked_text(quota.Blocked(reason)) for reason in gate_reasons}
    assert generic not in sentences.values()
    assert len(set(sentences.values())) == len(gate_reasons)
    assert "not_synced" not in sentences["not_synced"]
    # The provider's own words follow the sentence.
    detail = trigger_mail._blocked_text(quota.Blocked("some_new_reason", "SendCloud 500: down"))
    assert detail == generic + " SendCloud 500: down"


def test_a_trigger_mail_goes_out_while_campaigns_hold_the_whole_batch_quota(
    session, workspace, account, ctx, sim
):
    sim.set_account(TRIGGER_USER, quota=100)
    allocation.set_share(session, workspace.id, percent=10)
    session.commit()
    from plugin import quota_sync
    from plugin.channels import build_provider

    state = get_state()
    provider = build_provider(account, "batch", secrets=state.secrets, settings=state.settings)
    quota_sync.sync_account(session, workspace.id, account, provider)
    provider.close()
    batch_ledger = quota.ensure_ledger(
        session, workspace.id, account.id, "batch", quota.provider_day(utcnow()), 90
    )
    held = quota.reserve(session, batch_ledger, 1000)
    assert held is not None
    assert quota.remaining(session, batch_ledger) == 0
    blocked = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=1, settings=state.settings
    )
    assert isinstance(blocked, quota.Blocked)  # a campaign could send nothing now

    mail = _send(session, workspace, ctx, subject="Verification", html="<p>123456</p>")
    assert mail.status == "sent"
    assert mail.attempts == 1
    assert [m.recipient for m in sim.mails()] == ["buyer@example.org"]
    trigger_ledger = session.scalars(select(QuotaLedger).where(QuotaLedger.channel == "trigger")).one()
    assert trigger_ledger.limit == 10
    assert trigger_ledger.committed == 1


# --------------------------------------------------------------------------- SMTP


@pytest.fixture
def smtp_account(session, workspace):
    def make(port: int, *, daily_limit: int = 100) -> ProviderAccount:
        return kit.smtp_account(
            session,
            workspace.id,
            host="127.0.0.1",
            port=port,
            security="starttls",
            username=USER,
            password=PASSWORD,
            from_address=USER,
            daily_limit=daily_limit,
        )

    return make


def test_smtp_account_with_starttls_and_auth_sends_once_per_key(
    session, workspace, smtp_account, tls_sink, ctx, caplog
):
    caplog.set_level(logging.DEBUG)
    sink = tls_sink()
    account = smtp_account(sink.port)
    kwargs = {
        "subject": "Quote {{quote}}",
        "html": "<p>Quote {{quote}} for {{name}}</p>",
        "variables": {"quote": "Q-7", "name": "王五"},
        "account_id": account.id,
    }
    mail = _send(session, workspace, ctx, **kwargs)
    again = _send(session, workspace, ctx, **kwargs)
    assert mail.status == "sent"
    assert again.id == mail.id
    [message] = sink.messages()
    assert message.subject == "Quote Q-7"
    assert "Quote Q-7 for 王五" in message.html
    assert message.envelope_from == USER
    assert message.message_id == mail.provider_message_id
    assert message.message_id == f"<{trigger_mail.provider_key(workspace.id, 'order-1001')}@example.com>"
    assert PASSWORD not in caplog.text


def test_an_smtp_4xx_is_retried_and_the_mail_goes_out_once(
    session, workspace, smtp_account, tls_sink, ctx, slept
):
    sink = tls_sink(smtp_tls.GreylistOnce)
    account = smtp_account(sink.port)
    mail = _send(session, workspace, ctx, subject="Greylisted", html="<p>x</p>", account_id=account.id)
    assert mail.status == "sent"
    assert mail.attempts == 2
    assert slept == [0.2]
    assert [m.subject for m in sink.messages()] == ["Greylisted"]


def test_smtp_daily_limit_is_the_gate(session, workspace, smtp_account, tls_sink, ctx):
    sink = tls_sink()
    account = smtp_account(sink.port, daily_limit=1)
    first = _send(session, workspace, ctx, key="a", subject="One", html="<p>1</p>", account_id=account.id)
    second = _send(session, workspace, ctx, key="b", subject="Two", html="<p>2</p>", account_id=account.id)
    assert first.status == "sent"
    assert second.status == "failed"
    assert "used up" in second.error
    assert [m.subject for m in sink.messages()] == ["One"]


def test_a_wrong_smtp_password_fails_readably_without_retrying(
    session, workspace, smtp_account, tls_sink, ctx, slept
):
    sink = tls_sink()
    account = smtp_account(sink.port)
    account.smtp_password_encrypted = get_state().secrets.encrypt("wrong-password")
    session.commit()
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>", account_id=account.id)
    assert mail.status == "failed"
    assert "refused the user name or password" in mail.error
    assert mail.attempts == 1
    assert slept == []
    assert len(sink) == 0


# --------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"to": "not an address"}, "to"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 129}, "idempotency_key"),
        ({"subject": None, "html": None}, "subject"),
        ({"html": ""}, "html"),
        ({"template_id": 999_999}, "template_id"),
        ({"account_id": 999_999}, "account_id"),
        ({"html": "<p>{{order_no}}</p>"}, "variables"),
        ({"variables": {"x": {"nested": 1}}}, "variables"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(
    session, workspace, account, ctx, sim, overrides, field
):
    values = {"to": "buyer@example.org", "idempotency_key": "k1", "subject": "Hi", "html": "<p>x</p>"}
    values.update(overrides)
    with pytest.raises(InvalidInput) as info:
        trigger_mail.send_trigger_mail(session, workspace.id, ctx=ctx, **values)
    assert info.value.field == field
    assert session.scalar(select(func.count()).select_from(TriggerMail)) == 0
    assert sim.mails() == []


def test_without_any_account_the_error_says_what_to_do(session, workspace, ctx):
    with pytest.raises(InvalidInput) as info:
        _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert info.value.field == "account_id"
    assert "SMTP account" in str(info.value)


def test_secrets_stay_out_of_the_logs(session, workspace, account, ctx, sim, caplog):
    caplog.set_level(logging.DEBUG)
    sim.faults.fail_next = 1
    mail = _send(session, workspace, ctx, subject="Hi", html="<p>x</p>")
    assert mail.status == "sent"
    assert "trigger mail" in caplog.text  # something was logged
    assert TRIGGER_KEY not in caplog.text
    assert BATCH_KEY not in caplog.text


def test_list_filters_search_and_sorts(session, workspace, account, ctx, sim):
    for i in range(3):
        _send(
            session, workspace, ctx, key=f"k{i}", to=f"user{i}@example.org", subject=f"S{i}", html="<p>x</p>"
        )
    page = trigger_mail.list_mails(session, workspace.id)
    assert page.total == 3
    assert [m.idempotency_key for m in page.items] == ["k2", "k1", "k0"]
    assert [m.to_email for m in trigger_mail.list_mails(session, workspace.id, q="USER1").items] == [
        "user1@example.org"
    ]
    assert trigger_mail.list_mails(session, workspace.id, q="k_").total == 0  # LIKE wildcards are literal
    assert trigger_mail.list_mails(session, workspace.id, status="failed").total == 0
    by_to = trigger_mail.list_mails(session, workspace.id, sort="to", order="asc", per_page=2, page=2)
    assert [m.to_email for m in by_to.items] == ["user2@example.org"]
    assert by_to.pages == 2
    assert trigger_mail.status_counts(session, workspace.id) == {"sent": 3}


# --------------------------------------------------------------------------- the log page


def _row(workspace_id: int, n: int, **values) -> TriggerMail:
    defaults = {
        "workspace_id": workspace_id,
        "idempotency_key": f"key-{n:03d}",
        "to_email": f"user{n:03d}@example.org",
        "subject": f"Subject {n}",
        "status": "sent",
        "attempts": 1,
        "created_at": dt.datetime(2024, 1, 1, 0, 30, tzinfo=dt.UTC) + dt.timedelta(minutes=n),
    }
    defaults.update(values)
    return TriggerMail(**defaults)


def test_log_page_empty_state_tells_how_to_send(login, workspace):
    page = login("sales").get("/marketing/trigger-mail")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="trigger-empty"' in html
    assert "/marketing/api/v1/trigger-mails" in html


def test_log_page_searches_filters_sorts_and_pages(login, session, workspace, other_workspace):
    session.add_all([_row(workspace.id, n) for n in range(55)])
    session.add(
        _row(
            workspace.id,
            99,
            to_email="vip@example.org",
            status="failed",
            attempts=4,
            error="sendcloud: SendCloud answered HTTP 500 to mail/send.",
            variables={"code": "SECRET-CODE-991"},
        )
    )
    session.add(_row(other_workspace.id, 1, to_email="foreign@example.org"))
    session.commit()
    browser = login("sales")

    first = browser.get("/marketing/trigger-mail").get_data(as_text=True)
    assert first.count('class="trigger-row"') == 50
    assert 'data-total="56"' in first
    assert "vip@example.org" in first.split('class="trigger-row"')[1]  # newest first
    assert "foreign@example.org" not in first
    assert "SECRET-CODE-991" not in first  # variables are never shown
    assert "answered HTTP 500" in first
    second = browser.get("/marketing/trigger-mail?page=2").get_data(as_text=True)
    assert second.count('class="trigger-row"') == 6

    found = browser.get("/marketing/trigger-mail?q=VIP@").get_data(as_text=True)
    assert found.count('class="trigger-row"') == 1
    by_key = browser.get("/marketing/trigger-mail?q=key-007").get_data(as_text=True)
    assert by_key.count('class="trigger-row"') == 1
    failed = browser.get("/marketing/trigger-mail?status=failed").get_data(as_text=True)
    assert failed.count('class="trigger-row"') == 1
    assert 'data-status-count="failed"' in failed
    none = browser.get("/marketing/trigger-mail?q=nobody").get_data(as_text=True)
    assert 'id="trigger-no-match"' in none

    by_to = browser.get("/marketing/trigger-mail?sort=to&order=asc").get_data(as_text=True)
    rows = by_to.split('class="trigger-row"')[1:]
    assert "user000@example.org" in rows[0]
    assert 'aria-sort="ascending"' in by_to
    # A hand-edited URL with bad values still shows the page with defaults.
    assert browser.get("/marketing/trigger-mail?sort=evil&page=-3&status=x").status_code == 200


def test_log_page_shows_times_in_the_users_time_zone(login, session, workspace):
    session.add(_row(workspace.id, 0))  # 2024-01-01 00:30 UTC
    session.commit()
    browser = login("marketer")
    browser.post("/marketing/preferences", data={"timezone": "Asia/Shanghai"})
    assert "Jan 1, 2024, 8:30" in browser.get("/marketing/trigger-mail").get_data(as_text=True)
    browser.post("/marketing/preferences", data={"timezone": "America/Los_Angeles"})
    assert "Dec 31, 2023, 4:30" in browser.get("/marketing/trigger-mail").get_data(as_text=True)


def test_a_mail_sent_through_the_service_appears_in_the_log(login, session, workspace, account, ctx, sim):
    _send(session, workspace, ctx, subject="Receipt", html="<p>x</p>")
    html = login("admin").get("/marketing/trigger-mail").get_data(as_text=True)
    assert "buyer@example.org" in html
    assert "Receipt" in html
    assert 'data-status="sent"' in html
    assert "SendCloud" in html  # the account's name
