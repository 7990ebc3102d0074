"""``/marketing/api/v1/trigger-mails`` over the real SendCloud simulator: 201 then 200 for a repeated
key (also for two concurrent requests over HTTP), the Idempotency-Key header, errors naming the
field, roles, retries on HTTP 500, a blocked quota, the log's filters, and no secret in any
response or log line."""

from __future__ import annotations

import logging
import threading

import pytest
import requests
from flask_babel import force_locale
from sqlalchemy import func, select

from plugin.extension import get_state
from plugin.models import ProviderAccount, Sender, Template, TriggerMail
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer

API = "/marketing/api/v1/trigger-mails"
BATCH_USER, BATCH_KEY = "api_batch", "api-batch-key-0123456789abcdef"
TRIGGER_USER, TRIGGER_KEY = "api_trigger", "api-trigger-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _english_messages(app):
    with force_locale("en"):
        yield


@pytest.fixture
def sim():
    simulator = SendCloudSimulator(deliver_delay=0, seed=3)
    simulator.add_account(BATCH_USER, BATCH_KEY, quota=1000)
    simulator.add_api_user(BATCH_USER, TRIGGER_USER, TRIGGER_KEY, email_type="trigger")
    with SimulatorServer(simulator) as server:
        simulator.url = server.url
        yield simulator


@pytest.fixture
def app_config(app_config, sim):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=sim.url, MARKETING_PROVIDER_TIMEOUT=2.0)
    return app_config


@pytest.fixture
def account(session, workspace):
    secrets = get_state().secrets
    row = ProviderAccount(
        workspace_id=workspace.id,
        kind="sendcloud",
        name="SendCloud",
        api_user=BATCH_USER,
        api_key_encrypted=secrets.encrypt(BATCH_KEY),
        trigger_api_user=TRIGGER_USER,
        trigger_api_key_encrypted=secrets.encrypt(TRIGGER_KEY),
    )
    session.add(row)
    session.add(Sender(workspace_id=workspace.id, from_address="noreply@mail.example.com", is_default=True))
    session.commit()
    return row


@pytest.fixture
def template(session, workspace):
    row = Template(
        workspace_id=workspace.id, name="Code", subject="Your code {{code}}", html="<p>Code: {{code}}</p>"
    )
    session.add(row)
    session.commit()
    return row


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def _mails_sent(sim) -> list[str]:
    return [m.recipient for m in sim.mails()]


def test_post_sends_at_once_then_the_same_key_answers_200_with_the_same_body(
    app, api_token, account, template, sim
):
    client, headers = app.test_client(), bearer(api_token("marketer"))
    body = {
        "to": "user@example.org",
        "template_id": template.id,
        "variables": {"code": "482913"},
        "idempotency_key": "signup-42",
    }
    created = client.post(API, json=body, headers=headers)
    assert created.status_code == 201, created.get_json()
    mail = created.get_json()
    assert mail["status"] == "sent"
    assert mail["to"] == "user@example.org"
    assert mail["subject"] == "Your code 482913"
    assert mail["attempts"] == 1
    assert mail["provider_message_id"]
    assert mail["idempotency_key"] == "signup-42"
    assert sim.mails()[0].subject == "Your code 482913"

    again = client.post(API, json=body, headers=headers)
    assert again.status_code == 200
    assert again.get_json() == mail
    assert _mails_sent(sim) == ["user@example.org"]

    one = client.get(f"{API}/{mail['id']}", headers=headers)
    assert one.status_code == 200
    assert one.get_json() == mail


def test_the_key_may_come_from_the_idempotency_key_header(app, api_token, account, sim):
    client, token = app.test_client(), api_token("admin")
    body = {"to": "a@example.org", "subject": "Hello", "html": "<p>Hi</p>"}
    first = client.post(API, json=body, headers=bearer(token, **{"Idempotency-Key": "hdr-1"}))
    assert first.status_code == 201
    assert first.get_json()["idempotency_key"] == "hdr-1"
    repeat = client.post(API, json={**body, "idempotency_key": "hdr-1"}, headers=bearer(token))
    assert repeat.status_code == 200
    clash = client.post(
        API, json={**body, "idempotency_key": "other"}, headers=bearer(token, **{"Idempotency-Key": "hdr-1"})
    )
    assert clash.status_code == 422
    assert "idempotency_key" in clash.get_json()["errors"]["json"]
    assert _mails_sent(sim) == ["a@example.org"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "Hi", "html": "<p>x</p>", "idempotency_key": "k"}, "to"),
        ({"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>"}, "idempotency_key"),
        (
            {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "k" * 129},
            "idempotency_key",
        ),
        ({"to": "a@example.org", "idempotency_key": "k"}, "subject"),
        ({"to": "a@example.org", "subject": "Hi", "idempotency_key": "k"}, "html"),
        ({"to": "not-an-address", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "k"}, "to"),
        ({"to": "a@example.org", "template_id": "1", "idempotency_key": "k"}, "template_id"),
        ({"to": "a@example.org", "template_id": 99999, "idempotency_key": "k"}, "template_id"),
        (
            {"to": "a@example.org", "subject": "Hi", "html": "<p>{{missing}}</p>", "idempotency_key": "k"},
            "variables",
        ),
        (
            {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "k", "cc": "x"},
            "cc",
        ),
        (
            {
                "to": "a@example.org",
                "subject": "Hi",
                "html": "<p>x</p>",
                "idempotency_key": "k",
                "account_id": 999,
            },
            "account_id",
        ),
    ],
)
def test_errors_name_the_field_and_send_nothing(app, session, api_token, account, sim, body, field):
    response = app.test_client().post(API, json=body, headers=bearer(api_token("marketer")))
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]
    assert sim.mails() == []
    assert session.scalar(select(func.count()).select_from(TriggerMail)) == 0


def test_roles_and_authentication(app, api_token, account, sim):
    client = app.test_client()
    body = {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "r1"}
    assert client.post(API, json=body).status_code == 401
    assert client.post(API, json=body, headers=bearer(api_token("sales"))).status_code == 403
    assert client.get(API, headers=bearer(api_token("sales"))).status_code == 200
    assert sim.mails() == []


def test_session_auth_needs_the_csrf_header(login, account, sim):
    browser = login("marketer")
    body = {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "s1"}
    assert browser.client.post(API, json=body).status_code == 400  # no X-CSRFToken
    response = browser.post(API, json=body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["created_by"] is not None
    assert _mails_sent(sim) == ["a@example.org"]


def test_two_concurrent_requests_with_the_same_key_make_one_mail(app, live_server, api_token, account, sim):
    token = api_token("marketer")
    sim.faults.latency = 0.3
    body = {"to": "race@example.org", "subject": "Race", "html": "<p>once</p>", "idempotency_key": "race"}
    barrier = threading.Barrier(2)
    answers: list[tuple[int, dict]] = []

    def call() -> None:
        barrier.wait(timeout=10)
        response = requests.post(f"{live_server}{API}", json=body, headers=bearer(token), timeout=30)
        answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=40)
    assert sorted(code for code, _ in answers) == [200, 201]
    assert len({answer["id"] for _, answer in answers}) == 1
    assert _mails_sent(sim) == ["race@example.org"]


def test_http_500_is_retried_and_one_mail_is_accepted(app, api_token, account, sim):
    client, headers = app.test_client(), bearer(api_token("marketer"))
    warm = {"to": "w@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "warm"}
    assert client.post(API, json=warm, headers=headers).status_code == 201  # first send syncs the quota
    sim.faults.fail_next = 2
    body = {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "retry-1"}
    response = client.post(API, json=body, headers=headers)
    assert response.status_code == 201
    assert response.get_json()["status"] == "sent"
    assert response.get_json()["attempts"] == 3
    assert _mails_sent(sim) == ["w@example.org", "a@example.org"]


def test_a_blocked_quota_answers_the_failed_mail_with_its_reason(app, api_token, account, sim):
    sim.set_account(TRIGGER_USER, quota=0)
    body = {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "q1"}
    response = app.test_client().post(API, json=body, headers=bearer(api_token("marketer")))
    assert response.status_code == 201
    mail = response.get_json()
    assert mail["status"] == "failed"
    assert "quota for trigger mail is used up" in mail["error"]
    assert sim.mails() == []


def test_list_filters_and_workspace_isolation(app, api_token, account, sim):
    client, headers = app.test_client(), bearer(api_token("marketer"))
    for i in range(3):
        body = {"to": f"u{i}@example.org", "subject": f"S{i}", "html": "<p>x</p>", "idempotency_key": f"L{i}"}
        assert client.post(API, json=body, headers=headers).status_code == 201
    listing = client.get(API, headers=headers).get_json()
    assert listing["total"] == 3
    assert [m["idempotency_key"] for m in listing["items"]] == ["L2", "L1", "L0"]
    found = client.get(API, query_string={"q": "u1@"}, headers=headers).get_json()
    assert [m["to"] for m in found["items"]] == ["u1@example.org"]
    paged = client.get(
        API, query_string={"sort": "to", "order": "asc", "per_page": 2, "page": 2}, headers=headers
    )
    assert [m["to"] for m in paged.get_json()["items"]] == ["u2@example.org"]
    assert client.get(API, query_string={"status": "failed"}, headers=headers).get_json()["total"] == 0
    assert client.get(API, query_string={"status": "bogus"}, headers=headers).status_code == 422
    other = bearer(api_token("other"))
    assert client.get(API, headers=other).get_json()["total"] == 0
    assert client.get(f"{API}/{listing['items'][0]['id']}", headers=other).status_code == 404


def test_no_secret_in_responses_or_logs(app, api_token, account, sim, caplog):
    caplog.set_level(logging.DEBUG)
    client, headers = app.test_client(), bearer(api_token("admin"))
    sim.faults.fail_next = 1
    body = {"to": "a@example.org", "subject": "Hi", "html": "<p>x</p>", "idempotency_key": "sec"}
    response = client.post(API, json=body, headers=headers)
    text = response.get_data(as_text=True) + client.get(API, headers=headers).get_data(as_text=True)
    for secret in (TRIGGER_KEY, BATCH_KEY):
        assert secret not in text
        assert secret not in caplog.text
    assert "trigger mail" in caplog.text
