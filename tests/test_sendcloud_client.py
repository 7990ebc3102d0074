"""The SendCloud client and provider against the simulator, over real HTTP on loopback."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import logging
import threading
import typing
import urllib.parse
from decimal import Decimal

import pytest
from flask import Flask
from werkzeug.serving import make_server

from plugin.errors import (
    AuthenticationFailed,
    DuplicateRequest,
    InvalidInput,
    ProviderError,
    ProviderQuotaExceeded,
    Throttled,
)
from plugin.providers.base import BatchMessage, Recipient
from plugin.providers.sendcloud import (
    VERIFY_BITS,
    SendCloudClient,
    SendCloudProvider,
    account_info_from_userinfo,
    build_send_params,
)
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer

USER, KEY = "main_user", "s3cr3t-api-key-9f8e7d"


@pytest.fixture
def server():
    simulator = SendCloudSimulator(deliver_delay=0.01, seed=3)
    simulator.add_account(USER, KEY, balance=Decimal("40.54"), quota=1000, used=2)
    with SimulatorServer(simulator) as srv:
        yield srv


@pytest.fixture
def sim(server):
    return server.simulator


@pytest.fixture
def client(server):
    c = SendCloudClient(USER, KEY, base_url=server.url, timeout=5)
    yield c
    c.close()


@pytest.fixture
def provider(server):
    p = SendCloudProvider(USER, KEY, base_url=server.url, timeout=5)
    yield p
    p.close()


def batch(recipients, key="campaign-1:batch-1", **overrides):
    values = {
        "from_address": "news@mail.example.com",
        "from_name": "ACME",
        "subject": "Hello %name%",
        "html": "<p>Dear %name%, your code is %code%.</p>",
        "recipients": recipients,
        "idempotency_key": key,
    }
    values.update(overrides)
    return BatchMessage(**values)


# --------------------------------------------------------------------------- account and setup calls


def test_userinfo_reads_the_misspelled_balance_key(client):
    info = client.userinfo()
    assert info.available_balance == Decimal("40.54")
    assert info.balance == Decimal("40.54")
    assert (info.daily_quota, info.used_today) == (1000, 2)
    assert info.account_type == "付费用户"


@pytest.mark.parametrize(
    ("payload", "available"),
    [
        ({"avaliableBalance": 40.54, "balance": 44.02}, Decimal("40.54")),
        ({"availableBalance": "12.5", "balance": 13}, Decimal("12.5")),
        ({"restNum": 3000, "quota": 10}, Decimal("3000")),
        ({"balance": "n/a"}, None),
    ],
)
def test_balance_is_read_defensively(payload, available):
    info = account_info_from_userinfo(payload)
    assert info.available_balance == available
    assert info.balance in (None, Decimal("44.02"), Decimal("13"))


def test_wrong_key_raises_authentication_failed(server):
    client = SendCloudClient(USER, "wrong", base_url=server.url)
    with pytest.raises(AuthenticationFailed) as caught:
        client.userinfo()
    assert caught.value.status_code == 40005
    assert caught.value.retryable is False
    assert "认证失败" in str(caught.value)


def test_domains_api_users_and_webhooks(client, sim):
    sim.check_webhook_urls = False
    domain = client.domain_add("news.example.com")
    assert domain.verify == 0
    purposes = {r.purpose: r for r in domain.records}
    assert set(purposes) == {"ownership", "spf", "dkim", "mx", "dmarc"}
    assert purposes["mx"].priority == 10
    assert purposes["dkim"].host == "mail._domainkey.news.example.com"
    assert client.domain_list("news.example.com")[0].records == domain.records
    sim.set_domain_verify("news.example.com", VERIFY_BITS["spf"] | VERIFY_BITS["dkim"])
    listed = client.domain_list()[0]
    assert listed.verified("spf")
    assert listed.verified("dkim")
    assert not listed.verified("mx")

    info, key = client.apiuser_add("acme_trigger", "trigger", "news.example.com")
    assert (info.name, info.email_type, info.domain) == ("acme_trigger", "trigger", "news.example.com")
    assert key
    client.apiuser_add("acme_batch", "batch", "news.example.com")
    users = {u.name: u for u in client.apiuser_list("news.example.com")}
    assert users["acme_trigger"].email_type == "trigger"
    assert users["acme_batch"].email_type == "batch"
    with pytest.raises(ProviderError) as caught:
        client.apiuser_add("x", "batch", "news.example.com")
    assert caught.value.status_code == 41111
    assert caught.value.retryable is False
    assert "name不符合规则" in str(caught.value)

    client.webhook_add("https://crm.example.com/m/webhooks/sendcloud/abc", events=["deliver", "open"])
    hooks = client.webhook_list()
    assert hooks[0]["url"] == "https://crm.example.com/m/webhooks/sendcloud/abc"
    assert hooks[0]["event"] == "1,11"
    assert hooks[0]["categoryName"] == "all"


def test_webhook_add_fails_when_the_url_does_not_answer(client, sim):
    with pytest.raises(ProviderError) as caught:
        client.webhook_add("http://127.0.0.1:9/nothing")
    assert caught.value.status_code == 40707


# --------------------------------------------------------------------------- sending


def test_batch_is_sent_through_xsmtpapi_with_union_of_variables(provider, sim):
    recipients = [
        Recipient("ann@example.com", {"name": "Ann", "code": "A1"}),
        Recipient("bob@example.com", {"name": "Bob"}),
        Recipient("cai@example.com", {"code": "C3", "city": "上海"}),
    ]
    results = provider.send_batch(batch(recipients, headers={"SC-Custom-campaign": "7"}))
    assert [r.recipient for r in results] == [r.email for r in recipients]
    assert all(r.status == "accepted" for r in results)
    assert [r.provider_message_id.rsplit("$", 1)[1] for r in results] == [r.email for r in recipients]

    record = sim.requests("mail/send")[-1]
    x = json.loads(record.param("xsmtpapi"))
    assert x["to"] == ["ann@example.com", "bob@example.com", "cai@example.com"]
    assert x["sub"] == {
        "%city%": ["", "", "上海"],
        "%code%": ["A1", "", "C3"],
        "%name%": ["Ann", "Bob", ""],
    }
    assert record.param("sendRequestId") == "campaign-1:batch-1"
    assert record.param("respEmailId") == "true"
    assert record.param("to") is None
    assert json.loads(record.param("headers")) == {"SC-Custom-campaign": "7"}

    html = {m.recipient: m.html for m in sim.outbox}
    assert html["bob@example.com"] == "<p>Dear Bob, your code is .</p>"
    assert html["cai@example.com"] == "<p>Dear , your code is C3.</p>"
    ids = {m.recipient: m.email_id for m in sim.outbox}
    assert {r.recipient: r.provider_message_id for r in results} == ids


def test_a_250_recipient_job_goes_out_in_three_batches(provider, sim):
    everyone = [Recipient(f"user{i:03d}@example.com", {"name": f"N{i}"}) for i in range(250)]
    size = provider.max_batch_size
    chunks = [everyone[i : i + size] for i in range(0, len(everyone), size)]
    results = []
    for number, chunk in enumerate(chunks):
        results += provider.send_batch(batch(chunk, key=f"job-250:{number}"))
    assert len(results) == 250
    assert len({r.provider_message_id for r in results}) == 250

    sends = sim.requests("mail/send")
    assert len(sends) == 3
    sizes = []
    for record in sends:
        x = json.loads(record.param("xsmtpapi"))
        assert len(x["to"]) <= 100
        assert all(len(column) == len(x["to"]) for column in x["sub"].values())
        sizes.append(len(x["to"]))
    assert sizes == [100, 100, 50]
    assert len({r.param("sendRequestId") for r in sends}) == 3
    assert len(sim.outbox) == 250
    # No recipient has a code: the variable is not sent at all, so the placeholder stays.
    assert sim.outbox[249].html == "<p>Dear N249, your code is %code%.</p>"


def test_more_than_100_recipients_is_refused_before_calling(provider, sim):
    with pytest.raises(InvalidInput):
        provider.send_batch(batch([Recipient(f"u{i}@example.com") for i in range(101)]))
    assert sim.requests() == []


def test_idempotency_key_is_checked():
    with pytest.raises(InvalidInput):
        build_send_params(batch([Recipient("a@example.com")], key="k" * 129))
    with pytest.raises(InvalidInput):
        build_send_params(batch([Recipient("a@example.com")], key=""))


def test_same_key_twice_is_one_delivery(provider, sim):
    message = batch([Recipient("ann@example.com", {"name": "Ann"})], key="retry-me")
    provider.send_batch(message)
    with pytest.raises(DuplicateRequest) as caught:
        provider.send_batch(message)
    assert caught.value.status_code == 40000
    assert caught.value.retryable is False
    assert len(sim.outbox) == 1
    assert sim.account(USER)["used"] == 3


def test_timeout_after_accept_then_retry_with_same_key_is_one_delivery(server, sim):
    provider = SendCloudProvider(USER, KEY, base_url=server.url, timeout=0.5)
    message = batch([Recipient("ann@example.com"), Recipient("bob@example.com")], key="slow-batch")
    sim.faults.timeout_after_accept = 3.0
    with pytest.raises(ProviderError) as caught:
        provider.send_batch(message)
    assert caught.value.retryable is True
    assert "outcome is unknown" in str(caught.value)
    assert type(caught.value) is ProviderError
    sim.faults.timeout_after_accept = 0.0
    with pytest.raises(DuplicateRequest):
        provider.send_batch(message)
    assert sorted(m.recipient for m in sim.outbox) == ["ann@example.com", "bob@example.com"]
    assert sim.account(USER)["used"] == 2 + 2
    provider.close()


def test_quota_exhausted_is_provider_quota_exceeded_and_nothing_goes_out(provider, sim):
    sim.set_account(USER, quota=10, used=9)
    with pytest.raises(ProviderQuotaExceeded) as caught:
        provider.send_batch(batch([Recipient("a@example.com"), Recipient("b@example.com")]))
    assert caught.value.status_code == 40904
    assert caught.value.retryable is True
    assert sim.outbox == []
    assert sim.account(USER)["used"] == 9
    sim.faults.quota_exhausted = True
    with pytest.raises(ProviderQuotaExceeded):
        provider.send_batch(batch([Recipient("a@example.com")], key="other"))
    assert sim.outbox == []


def test_insufficient_balance_is_provider_quota_exceeded(provider, sim):
    sim.set_account(USER, available="0")
    with pytest.raises(ProviderQuotaExceeded) as caught:
        provider.send_batch(batch([Recipient("a@example.com")]))
    assert "余额不足" in str(caught.value)
    assert sim.outbox == []


def test_throttling_is_retryable(provider, sim):
    sim.faults.throttle = True
    with pytest.raises(Throttled) as caught:
        provider.send_batch(batch([Recipient("a@example.com")]))
    assert caught.value.status_code == 50001
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("overrides", "code", "fragment"),
    [
        ({"from_address": "not-an-address"}, 40802, "发信人地址from格式错误"),
        ({"subject": ""}, 40808, "邮件主题subject不能为空"),
        ({"html": ""}, 40870, "html和plain不能同时为空"),
        ({"recipients": [Recipient("broken")]}, 40880, "xsmtpapi中to字段含有非法邮箱格式"),
        ({"reply_to": "a@x.com;b@x.com;c@x.com;d@x.com"}, 40879, "回复地址replyto个数不能超过3个"),
    ],
)
def test_parameter_errors_are_permanent_with_the_provider_message(provider, sim, overrides, code, fragment):
    values = {"recipients": [Recipient("a@example.com")], **overrides}
    with pytest.raises(ProviderError) as caught:
        provider.send_batch(batch(**values))
    error = caught.value
    assert type(error) is ProviderError
    assert error.status_code == code
    assert error.retryable is False
    assert fragment in str(error)
    assert sim.outbox == []


def test_template_mismatch_is_permanent(provider, sim):
    sim.faults.template_mismatch = True
    with pytest.raises(ProviderError) as caught:
        provider.send_batch(batch([Recipient("a@example.com")]))
    assert (caught.value.status_code, caught.value.retryable) == (40908, False)


def test_http_500_is_retryable(provider, sim):
    sim.faults.fail_next = 1
    with pytest.raises(ProviderError) as caught:
        provider.send_batch(batch([Recipient("a@example.com")]))
    assert caught.value.retryable is True
    assert "500" in str(caught.value)
    assert sim.outbox == []
    assert len(provider.send_batch(batch([Recipient("a@example.com")]))) == 1


@pytest.fixture
def html_server():
    """A server that answers like a proxy error page: HTTP 200 with HTML, not SendCloud's JSON."""
    app = Flask("not-sendcloud")
    app.add_url_rule("/apiv2/<path:rest>", "any", lambda rest: "<html>Bad gateway</html>", methods=["POST"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/apiv2"
    server.shutdown()


def test_non_json_answer_is_retryable(html_server):
    provider = SendCloudProvider(USER, KEY, base_url=html_server, timeout=5)
    with pytest.raises(ProviderError) as caught:
        provider.send_batch(batch([Recipient("a@example.com")]))
    assert caught.value.retryable is True
    assert "not its JSON envelope" in str(caught.value)


def test_connect_failure_is_retryable_and_says_nothing_was_sent():
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    client = SendCloudClient(USER, KEY, base_url=f"http://127.0.0.1:{port}/apiv2", timeout=2)
    with pytest.raises(ProviderError) as caught:
        client.userinfo()
    assert caught.value.retryable is True
    assert "nothing was sent" in str(caught.value)
    assert KEY not in str(caught.value)


def test_send_one_uses_the_trigger_api_user(client, sim):
    client.domain_add("mail.example.com")
    _, trigger_key = client.apiuser_add("acme_trigger", "trigger", "mail.example.com")
    provider = SendCloudProvider("acme_trigger", trigger_key, base_url=client.base_url)
    result = provider.send_one(
        batch([Recipient("ann@example.com", {"name": "Ann"})], key="confirm:1", kind="trigger")
    )
    assert result.status == "accepted"
    assert result.provider_message_id.endswith("$ann@example.com")
    assert sim.outbox[0].api_user == "acme_trigger"
    assert sim.requests("mail/send")[-1].api_user == "acme_trigger"
    with pytest.raises(InvalidInput):
        provider.send_one(batch([Recipient("a@example.com"), Recipient("b@example.com")], kind="trigger"))
    provider.close()


def test_account_info_through_the_provider(provider, sim):
    sim.set_account(USER, used=17)
    info = provider.account_info()
    assert info is not None
    assert info.used_today == 17


def test_the_api_key_never_reaches_the_logs(server, sim, caplog):
    """DEBUG everywhere (root, urllib3, requests) during sends, errors and account calls."""
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.connectionpool", "requests", "plugin"):
        caplog.set_level(logging.DEBUG, logger=name)
    provider = SendCloudProvider(USER, KEY, base_url=server.url, timeout=2)
    provider.send_batch(batch([Recipient("a@example.com", {"name": "A"})]))
    with pytest.raises(DuplicateRequest):
        provider.send_batch(batch([Recipient("a@example.com", {"name": "A"})]))
    provider.account_info()
    sim.faults.fail_next = 1
    with pytest.raises(ProviderError) as caught:
        provider.account_info()
    logging.getLogger("test").debug("error was %s / %r / %r", caught.value, caught.value, provider)
    provider.close()
    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3 debug logging was captured"
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in repr(provider)
    assert KEY not in repr(provider.client)


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy on loopback that wants Basic credentials (as a corporate proxy would)."""

    protocol_version = "HTTP/1.1"
    seen: typing.ClassVar[list[tuple[str, str | None]]] = []

    def do_POST(self) -> None:
        auth = self.headers.get("Proxy-Authorization")
        type(self).seen.append((self.path, auth))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if auth != "Basic " + base64.b64encode(b"crm@corp:p:w").decode():
            self.send_response(407)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = urllib.parse.urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
        headers = {"Content-Type": self.headers["Content-Type"]}
        upstream.request("POST", target.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_proxy(monkeypatch):
    """An authenticating proxy on loopback, named by HTTP_PROXY (user ``crm@corp``, password
    ``p:w``, percent-encoded); yields the requests it forwarded."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    _Proxy.seen.clear()
    monkeypatch.setenv("HTTP_PROXY", f"http://crm%40corp:p%3Aw@127.0.0.1:{proxy.server_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield _Proxy.seen
    proxy.shutdown()
    proxy.server_close()


def test_an_authenticating_proxy_from_the_environment_is_used(server, sim, auth_proxy):
    """HTTP_PROXY with user:password (percent-encoded) is read once and its credentials sent,
    as requests did; the call reaches SendCloud through it."""
    client = SendCloudClient(USER, KEY, base_url=server.url, timeout=5)
    try:
        assert client.userinfo().daily_quota == 1000
    finally:
        client.close()
    assert len(_Proxy.seen) == 1
    path, auth = _Proxy.seen[0]
    assert path == f"{server.url}/userinfo/get"
    assert auth == "Basic " + base64.b64encode(b"crm@corp:p:w").decode()


def test_batches_begun_together_are_each_delivered_and_answered(provider, sim):
    """Three batches in flight at once (``begin_batch``); answers read in any order."""
    messages = [
        batch(
            [Recipient(f"r{i}-{j}@example.com", {"name": f"N{i}{j}"}) for j in range(3)], key=f"inflight-{i}"
        )
        for i in range(3)
    ]
    answers = [provider.begin_batch(m) for m in messages]
    results = [answer() for answer in reversed(answers)][::-1]
    for message, got in zip(messages, results, strict=True):
        assert [r.recipient for r in got] == [r.email for r in message.recipients]
        assert all(r.status == "accepted" and r.provider_message_id for r in got)
    assert sorted(m.recipient for m in sim.outbox) == sorted(r.email for m in messages for r in m.recipients)


def test_behind_a_proxy_a_begun_batch_goes_out_when_its_answer_is_asked_for(server, sim, auth_proxy):
    provider = SendCloudProvider(USER, KEY, base_url=server.url, timeout=5)
    try:
        answer = provider.begin_batch(batch([Recipient("ann@example.com")], key="via-proxy"))
        assert auth_proxy == []
        assert sim.outbox == []
        assert [r.status for r in answer()] == ["accepted"]
    finally:
        provider.close()
    assert [path for path, _ in auth_proxy] == [f"{server.url}/mail/send"]
    assert [m.recipient for m in sim.outbox] == ["ann@example.com"]


def test_a_batch_the_client_cannot_encode_raises_when_its_answer_is_read(provider, sim):
    too_many = batch([Recipient(f"u{i}@example.com") for i in range(101)])
    answer = provider.begin_batch(too_many)  # does not raise here
    with pytest.raises(InvalidInput):
        answer()
    assert sim.outbox == []
