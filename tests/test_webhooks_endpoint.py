"""POST /m/webhooks/sendcloud/<token>: verification, store-once, workspace isolation, URL check,
and real deliveries from the SendCloud simulator to the app served over HTTP."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import requests
from sqlalchemy import func, select
from werkzeug.serving import make_server

from plugin.extension import get_state
from plugin.models import Event, ProviderAccount
from plugin.providers.base import BatchMessage, Recipient
from plugin.providers.sendcloud import SendCloudProvider, sign_webhook
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.webhooks import webhook_url, workspace_token
from tests.conftest import free_port

APP_KEY = "webhook-app-key-of-default-0001"
OTHER_APP_KEY = "webhook-app-key-of-acme-0002"


def add_account(session, workspace_id: int, app_key: str) -> ProviderAccount:
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="sendcloud",
        name="acct",
        api_user="main_user",
        webhook_app_key_encrypted=get_state().secrets.encrypt(app_key),
    )
    session.add(account)
    session.commit()
    return account


def signed(app_key: str, *, event: str = "deliver", age_minutes: float = 0, **fields: str) -> dict:
    timestamp = str(int((time.time() - age_minutes * 60) * 1000))
    token = secrets.token_hex(25)
    form = {
        "event": event,
        "message": event,
        "apiUser": "news_batch",
        "category": "news_batch",
        "emailId": "1700000000000_1_1_1.sc-10_0_0_1-inbound0$ann@example.com",
        "recipient": "ann@example.com",
        "timestamp": timestamp,
        "token": token,
        "signature": sign_webhook(app_key, timestamp, token),
    }
    form.update(fields)
    return form


def path(workspace_id: int) -> str:
    return f"/m/webhooks/sendcloud/{workspace_token(get_state().settings, workspace_id)}"


def events(session, workspace_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Event).where(Event.workspace_id == workspace_id))


@pytest.fixture
def client(app):
    return app.test_client()


def test_a_valid_event_delivered_five_times_is_stored_once(app, client, session, workspace):
    add_account(session, workspace.id, APP_KEY)
    form = signed(APP_KEY)
    answers = [client.post(path(workspace.id), data=form) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert answers[0].get_json()["status"] == "stored"
    assert {a.get_json()["status"] for a in answers[1:]} == {"duplicate"}
    assert events(session, workspace.id) == 1
    stored = session.scalar(select(Event).where(Event.workspace_id == workspace.id))
    assert stored.type == "deliver"
    assert stored.dedupe_key.startswith("sendcloud:")
    assert stored.data["recipient"] == "ann@example.com"
    assert "signature" not in str(stored.data)
    assert form["token"] not in str(stored.data)


def test_wrong_signature_is_refused(client, session, workspace):
    add_account(session, workspace.id, APP_KEY)
    form = signed(APP_KEY)
    form["signature"] = sign_webhook("some-other-key", form["timestamp"], form["token"])
    answer = client.post(path(workspace.id), data=form)
    assert answer.status_code == 403
    assert "signature" in answer.get_json()["error"]
    assert events(session, workspace.id) == 0


def test_stale_timestamp_is_refused_but_a_late_retry_inside_the_window_is_not(client, session, workspace):
    add_account(session, workspace.id, APP_KEY)
    assert get_state().settings.webhook_max_age_minutes == 45
    stale = client.post(path(workspace.id), data=signed(APP_KEY, age_minutes=50))
    assert stale.status_code == 403
    assert "window" in stale.get_json()["error"]
    # SendCloud's last retry comes about 31 minutes after the first attempt.
    late = client.post(path(workspace.id), data=signed(APP_KEY, age_minutes=32))
    assert late.status_code == 200
    assert events(session, workspace.id) == 1


def test_another_workspaces_url_cannot_store_into_this_workspace(client, session, workspace, other_workspace):
    add_account(session, workspace.id, APP_KEY)
    add_account(session, other_workspace.id, OTHER_APP_KEY)
    # Signed with this workspace's key but posted to the other workspace's URL: refused.
    forged = client.post(path(other_workspace.id), data=signed(APP_KEY))
    assert forged.status_code == 403
    # Signed with the other workspace's key: lands in the other workspace only.
    assert client.post(path(other_workspace.id), data=signed(OTHER_APP_KEY)).status_code == 200
    assert events(session, workspace.id) == 0
    assert events(session, other_workspace.id) == 1
    # A workspace id in the URL that we did not sign: unknown address.
    assert client.post(f"/m/webhooks/sendcloud/{workspace.id}", data=signed(APP_KEY)).status_code == 404
    tampered = workspace_token(get_state().settings, workspace.id)[:-2] + "xx"
    assert client.post(f"/m/webhooks/sendcloud/{tampered}", data=signed(APP_KEY)).status_code == 404


def test_url_check_and_unknown_addresses(client, session, workspace):
    add_account(session, workspace.id, APP_KEY)
    assert client.get(path(workspace.id)).get_data(as_text=True) == "ok"
    empty = client.post(path(workspace.id), json={"test": "url"})
    assert empty.status_code == 200
    assert empty.get_data(as_text=True) == "ok"
    assert client.get("/m/webhooks/sendcloud/not-a-token").status_code == 404
    assert events(session, workspace.id) == 0


def test_workspace_without_account_is_not_found(client, workspace):
    assert client.post(path(workspace.id), data=signed(APP_KEY)).status_code == 404


# -- real deliveries from the simulator ----------------------------------------------------------
@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def app_config(app_config, port):
    app_config["MARKETING_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    return app_config


@pytest.fixture
def served(app, port):
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


def test_simulator_events_arrive_once_each(served, session, workspace):
    sim = SendCloudSimulator(webhook_app_key=APP_KEY, deliver_delay=0.05, webhook_time_scale=0.001)
    sim.add_account("main_user", "main-key-000000")
    sim.add_domain("main_user", "news.example.com")
    sim.add_api_user(
        "main_user", "news_batch", "batch-key-00000", email_type="batch", domain="news.example.com"
    )
    add_account(session, workspace.id, APP_KEY)
    url = webhook_url(get_state().settings, workspace.id)
    with SimulatorServer(sim) as server:
        sim.set_webhook_target(url)
        provider = SendCloudProvider("news_batch", "batch-key-00000", base_url=server.url, timeout=5)
        message = BatchMessage(
            from_address="hi@news.example.com",
            subject="Hello %name%",
            html="<p>Hi %name%</p>",
            recipients=[
                Recipient("ann@example.com", {"name": "Ann"}),
                Recipient("bob@example.com", {"name": "Bob"}),
            ],
            idempotency_key="batch-1",
        )
        results = provider.send_batch(message)
        assert [r.status for r in results] == ["accepted", "accepted"]
        deadline = time.time() + 10
        while time.time() < deadline:
            session.expire_all()
            if events(session, workspace.id) >= 3:
                break
            time.sleep(0.1)
        log = sim.webhook_log()
        provider.close()
    assert all(d.delivered for d in log)
    # The same signed post again, as a SendCloud retry would send it: 200, nothing new.
    again = requests.post(log[0].url, data=list(log[0].fields), timeout=5)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    session.expire_all()
    types = sorted(session.scalars(select(Event.type).where(Event.workspace_id == workspace.id)))
    assert types == ["deliver", "deliver", "request"]


def _account_of(session, workspace_id: int) -> ProviderAccount:
    session.expire_all()
    return session.scalar(select(ProviderAccount).where(ProviderAccount.workspace_id == workspace_id))


def test_posts_refused_for_the_app_key_are_noted_and_shown_until_an_event_is_accepted(
    app, client, login, session, workspace
):
    add_account(session, workspace.id, APP_KEY)
    assert client.post(path(workspace.id), data=signed(APP_KEY, age_minutes=120)).status_code == 403
    stale = _account_of(session, workspace.id)
    assert stale.webhook_refused_since is None, "a stale post says nothing of the key"

    assert client.post(path(workspace.id), data=signed(OTHER_APP_KEY)).status_code == 403
    account = _account_of(session, workspace.id)
    assert account.webhook_refused_reason == "signature"
    first = account.webhook_refused_since
    assert first is not None
    assert account.webhook_refused_at == first
    assert client.post(path(workspace.id), data=signed(OTHER_APP_KEY)).status_code == 403
    assert _account_of(session, workspace.id).webhook_refused_at == first, "written at most once a minute"

    for role in ("admin", "marketer"):  # every page's header says it; admins get the way to fix it
        page = login(role).get("/marketing/").get_data(as_text=True)
        assert 'data-warning="webhooks-refused"' in page
        assert ('href="/marketing/setup/api-users"' in page) is (role == "admin")

    assert client.post(path(workspace.id), data=signed(APP_KEY)).status_code == 200
    account = _account_of(session, workspace.id)
    assert account.webhook_refused_since is None
    assert account.webhook_refused_reason is None
    assert account.webhook_ok_at is not None
    page = login("admin").get("/marketing/").get_data(as_text=True)
    assert 'data-warning="webhooks-refused"' not in page


def test_a_workspace_without_an_app_key_notes_why_everything_is_refused(client, session, workspace):
    account = add_account(session, workspace.id, APP_KEY)
    account.webhook_app_key_encrypted = None
    session.commit()
    assert client.post(path(workspace.id), data=signed(APP_KEY)).status_code == 403
    assert _account_of(session, workspace.id).webhook_refused_reason == "no_key"
