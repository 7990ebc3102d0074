"""Webhook signatures, parsing, and the simulator's signed deliveries with retries."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import string
import threading
import time

import pytest
from flask import Flask, request
from werkzeug.datastructures import MultiDict
from werkzeug.serving import make_server

from plugin.errors import WebhookRejected
from plugin.providers.base import BatchMessage, Recipient
from plugin.providers.sendcloud import SendCloudProvider, parse_webhook, verify_webhook
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer

APP_KEY = "webhook-app-key-1"
NOW = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def signed(app_key=APP_KEY, *, at=NOW, token=None, **fields):
    """A form as SendCloud posts it: HMAC-SHA256(app_key, timestamp+token), written independently."""
    token = token or "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(50))
    timestamp = str(int(at.timestamp() * 1000))
    signature = hmac.new(app_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    form = {"event": "deliver", "timestamp": timestamp, "token": token, "signature": signature}
    form.update(fields)
    return form


# --------------------------------------------------------------------------- verify_webhook


def test_valid_signature_passes():
    verify_webhook(signed(), APP_KEY, now=NOW)
    verify_webhook(MultiDict(signed()), APP_KEY, now=NOW + dt.timedelta(minutes=31))


def test_uppercase_hex_signature_passes():
    form = signed()
    form["signature"] = form["signature"].upper()
    verify_webhook(form, APP_KEY, now=NOW)


def test_wrong_key_is_refused():
    with pytest.raises(WebhookRejected, match="signature"):
        verify_webhook(signed("another-key"), APP_KEY, now=NOW)


def test_swapped_fields_are_refused():
    a, b = signed(), signed()
    mixed = {**a, "token": b["token"]}
    with pytest.raises(WebhookRejected):
        verify_webhook(mixed, APP_KEY, now=NOW)
    later = signed(at=NOW + dt.timedelta(seconds=1), token=a["token"])
    replayed_signature = {**later, "signature": a["signature"]}
    with pytest.raises(WebhookRejected):
        verify_webhook(replayed_signature, APP_KEY, now=NOW)


@pytest.mark.parametrize(
    "offset", [dt.timedelta(minutes=46), dt.timedelta(days=2), -dt.timedelta(minutes=46)]
)
def test_timestamps_outside_the_window_are_refused(offset):
    form = signed(at=NOW - offset)  # positive offset = stale, negative = from the future
    with pytest.raises(WebhookRejected, match="window"):
        verify_webhook(form, APP_KEY, now=NOW)


def test_window_is_configurable():
    form = signed(at=NOW - dt.timedelta(minutes=10))
    verify_webhook(form, APP_KEY, now=NOW)
    with pytest.raises(WebhookRejected):
        verify_webhook(form, APP_KEY, now=NOW, max_age=dt.timedelta(minutes=5))


def test_timestamp_in_seconds_is_accepted():
    token = "t" * 50
    timestamp = str(int(NOW.timestamp()))
    signature = hmac.new(APP_KEY.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    verify_webhook({"timestamp": timestamp, "token": token, "signature": signature}, APP_KEY, now=NOW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timestamp": None}, "lacks timestamp"),
        ({"token": None}, "lacks token"),
        ({"signature": None}, "lacks signature"),
        ({"signature": ""}, "lacks signature"),
        ({"signature": "z" * 64}, "hex"),
        ({"signature": "ab" * 16}, "hex"),
        ({"token": "short"}, "50 characters"),
        ({"timestamp": "yesterday"}, "timestamp"),
    ],
)
def test_malformed_posts_are_refused(change, message):
    form = signed()
    for key, value in change.items():
        if value is None:
            form.pop(key)
        else:
            form[key] = value
    with pytest.raises(WebhookRejected, match=message):
        verify_webhook(form, APP_KEY, now=NOW)


def test_empty_app_key_refuses_everything():
    with pytest.raises(WebhookRejected):
        verify_webhook(signed(""), "", now=NOW)


# --------------------------------------------------------------------------- parse_webhook


def test_parse_click_event():
    form = signed(
        event="click",
        emailId="1425758592214_4576_32113_9310.sc-10_10_127_105-inbound0$ann@example.com",
        recipient="ann@example.com",
        url="https://example.com/offer",
        userHeaders=json.dumps({"SC-Custom-campaign": "7", "SC-Custom-recipient": "42"}),
        apiUser="acme_batch",
    )
    event = parse_webhook(MultiDict(form))
    assert event.event_type == "click"
    assert event.recipient == "ann@example.com"
    assert event.provider_message_id.endswith("0$ann@example.com")
    assert event.url == "https://example.com/offer"
    assert event.user_headers == {"SC-Custom-campaign": "7", "SC-Custom-recipient": "42"}
    assert event.occurred_at == NOW
    assert event.raw["apiUser"] == "acme_batch"
    assert "signature" not in event.raw


def test_parse_request_event_with_repeated_fields():
    form = MultiDict(signed(event="request", messageId="m1", recipientSize="2"))
    for address, email_id in (("a@example.com", "m10$a@example.com"), ("b@example.com", "m11$b@example.com")):
        form.add("recipientArray", address)
        form.add("emailIds", email_id)
    event = parse_webhook(form)
    assert event.event_type == "request"
    assert event.recipient is None
    assert event.raw["recipientArray"] == ["a@example.com", "b@example.com"]
    assert event.raw["emailIds"] == ["m10$a@example.com", "m11$b@example.com"]
    single = MultiDict(signed(event="request"))
    single.add("recipientArray", "a@example.com")
    single.add("emailIds", "m10$a@example.com")
    event = parse_webhook(single)
    assert (event.recipient, event.provider_message_id) == ("a@example.com", "m10$a@example.com")


def test_parse_invalid_event_reason_and_bad_user_headers():
    form = signed(
        event="invalid", emailId="e", recipient="x@example.com", substat="406", substatdesc="no such user"
    )
    form["userHeaders"] = "{not json"
    event = parse_webhook(form)
    assert event.reason == "406 no such user"
    assert event.user_headers == {}


def test_unknown_event_is_refused():
    with pytest.raises(WebhookRejected):
        parse_webhook(signed(event="exploded"))


def test_event_id_is_stable_across_redeliveries_and_differs_between_events():
    first = signed(event="open", emailId="e1", recipient="a@example.com")
    redelivered = dict(first)
    other = signed(event="open", emailId="e1", recipient="a@example.com", at=NOW)
    assert parse_webhook(first).provider_event_id == parse_webhook(redelivered).provider_event_id
    assert parse_webhook(first).provider_event_id != parse_webhook(other).provider_event_id
    click_same_token = {**first, "event": "click"}
    assert parse_webhook(click_same_token).provider_event_id != parse_webhook(first).provider_event_id
    assert len(parse_webhook(first).provider_event_id) <= 128


# --------------------------------------------------------------------------- delivery from the simulator


class Receiver:
    """A small HTTP server standing in for the plugin's webhook endpoint."""

    def __init__(self) -> None:
        self.posts: list[MultiDict] = []
        self.answers: list[int] = []  # status codes to give, in order; then 200
        self.stall_first = 0.0
        self.lock = threading.Lock()
        app = Flask("receiver")

        @app.route("/hook", methods=["GET", "POST"])
        def hook():
            if request.method == "GET" or "event" not in request.form:
                return "ok"  # SendCloud's URL check
            with self.lock:
                self.posts.append(MultiDict(request.form))
                stall, self.stall_first = self.stall_first, 0.0
                status = self.answers.pop(0) if self.answers else 200
            if stall:
                time.sleep(stall)
            return ("ok", status)

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=lambda: self.server.serve_forever(poll_interval=0.05), daemon=True).start()

    def of(self, event):
        with self.lock:
            return [p for p in self.posts if p.get("event") == event]

    def stop(self):
        self.server.shutdown()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def setup(receiver):
    simulator = SendCloudSimulator(
        deliver_delay=0.05,
        webhook_time_scale=0.002,  # 60 s → 0.12 s ... 960 s → 1.92 s
        webhook_timeout=0.3,
        webhook_app_key=APP_KEY,
    )
    simulator.add_account("main_user", "k-123")
    with SimulatorServer(simulator) as server:
        provider = SendCloudProvider("main_user", "k-123", base_url=server.url, timeout=5)
        provider.client.webhook_add(receiver.url)  # goes through the URL check
        yield simulator, provider
        provider.close()


def send(provider, *emails, key="wh-1"):
    return provider.send_batch(
        BatchMessage(
            from_address="news@mail.example.com",
            subject="Hi",
            html="<p>Hi</p>",
            recipients=[Recipient(e) for e in emails],
            idempotency_key=key,
            headers={"SC-Custom-campaign": "9", "X-Other": "no"},
        )
    )


def test_request_and_deliver_events_are_signed_and_parse(setup, receiver):
    _sim, provider = setup
    results = send(provider, "ann@example.com", "bob@example.com")
    assert wait_for(lambda: len(receiver.of("deliver")) == 2 and receiver.of("request"))
    (req,) = receiver.of("request")
    verify_webhook(req, APP_KEY, now=dt.datetime.now(dt.UTC))
    assert req.getlist("recipientArray") == ["ann@example.com", "bob@example.com"]
    assert req.getlist("emailIds") == [r.provider_message_id for r in results]
    assert req["category"] == req["apiUser"] == "main_user"
    assert "maillistTaskId" in req
    assert "mail_list_task_id" in req
    for post in receiver.of("deliver"):
        verify_webhook(post, APP_KEY, now=dt.datetime.now(dt.UTC))
        event = parse_webhook(post)
        assert event.user_headers == {"SC-Custom-campaign": "9"}
        assert event.provider_message_id in {r.provider_message_id for r in results}
    tokens = {p["token"] for p in receiver.posts}
    assert len(tokens) == 3  # every event has its own token


def test_suppressed_recipient_gets_an_invalid_event(setup, receiver):
    sim, provider = setup
    sim.suppress("main_user", "gone@example.com", "bounce")
    send(provider, "gone@example.com", "ok@example.com")
    assert wait_for(lambda: receiver.of("invalid") and receiver.of("deliver"))
    (invalid,) = receiver.of("invalid")
    assert invalid["recipient"] == "gone@example.com"
    assert invalid["substat"] == "401"
    assert parse_webhook(invalid).reason.startswith("401")
    assert [m.recipient for m in sim.outbox] == ["ok@example.com"]


def test_failed_deliveries_are_retried_with_the_same_signature(setup, receiver):
    sim, provider = setup
    sim.deliver_delay = 60  # only the request event in this test
    receiver.answers = [500, 503]  # the request event's first post and first retry fail
    send(provider, "ann@example.com")
    assert wait_for(lambda: any(d.delivered for d in sim.webhook_log() if d.event == "request"))
    requests_seen = receiver.of("request")
    assert len(requests_seen) == 3
    assert len({(p["token"], p["timestamp"], p["signature"]) for p in requests_seen}) == 1
    ids = {parse_webhook(p).provider_event_id for p in requests_seen}
    assert len(ids) == 1  # stored once by the receiver
    log = next(d for d in sim.webhook_log() if d.event == "request")
    assert log.attempts == ["HTTP 500", "HTTP 503", "HTTP 200"]


def test_slow_receiver_counts_as_failure_and_is_retried(setup, receiver):
    sim, provider = setup
    sim.deliver_delay = 60
    receiver.stall_first = 1.0  # longer than the simulator's webhook_timeout of 0.3 s
    send(provider, "ann@example.com")
    assert wait_for(lambda: any(d.delivered for d in sim.webhook_log() if d.event == "request"))
    log = next(d for d in sim.webhook_log() if d.event == "request")
    assert log.attempts[0] == "ReadTimeout"
    assert log.attempts[-1] == "HTTP 200"


def test_retries_stop_after_five(setup, receiver):
    sim, provider = setup
    receiver.answers = [500] * 20
    sim.deliver_delay = 60  # only the request event in this test
    send(provider, "ann@example.com")
    assert wait_for(lambda: any(d.given_up for d in sim.webhook_log()), timeout=10)
    log = next(d for d in sim.webhook_log() if d.event == "request")
    assert len(log.attempts) == 6  # first attempt + 5 retries
    assert not log.delivered


def test_emit_event_for_tests_and_suppression(setup, receiver):
    sim, provider = setup
    (result,) = send(provider, "ann@example.com")
    fields = sim.emit_event(result.provider_message_id, "click", url="https://example.com/x")
    assert dict(fields)["url"] == "https://example.com/x"
    assert wait_for(lambda: receiver.of("click"))
    event = parse_webhook(receiver.of("click")[0])
    assert (event.event_type, event.url, event.recipient) == (
        "click",
        "https://example.com/x",
        "ann@example.com",
    )
    sim.emit_event(result.provider_message_id, "unsubscribe")
    assert wait_for(lambda: receiver.of("unsubscribe"))
    send(provider, "ann@example.com", key="wh-2")
    assert wait_for(lambda: receiver.of("invalid"))
    assert receiver.of("invalid")[0]["substat"] == "402"


def test_webhook_categories_and_events_filter(receiver):
    simulator = SendCloudSimulator(deliver_delay=0.01, webhook_app_key=APP_KEY, check_webhook_urls=False)
    simulator.add_account("main_user", "k")
    simulator.add_api_user("main_user", "other_user", "k2")
    with SimulatorServer(simulator) as server:
        provider = SendCloudProvider("main_user", "k", base_url=server.url)
        provider.client.webhook_add(receiver.url, category="other_user", events=["deliver"])
        send(provider, "a@example.com")
        other = SendCloudProvider("other_user", "k2", base_url=server.url)
        send(other, "b@example.com")
        assert wait_for(lambda: receiver.of("deliver"))
        time.sleep(0.2)
        assert [p["recipient"] for p in receiver.posts] == ["b@example.com"]
        provider.close()
        other.close()


def test_signature_reused_across_events_is_refused():
    """A signature captured from one event does not authenticate another event's token."""
    first = signed(event="open", emailId="e1")
    second = signed(event="click", emailId="e2")
    verify_webhook(second, APP_KEY, now=NOW)
    with pytest.raises(WebhookRejected, match="signature"):
        verify_webhook({**second, "signature": first["signature"]}, APP_KEY, now=NOW)
