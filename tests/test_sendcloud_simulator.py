"""The SendCloud simulator over real HTTP: what it rejects, accepts, charges and serves.

Raw ``requests`` calls on purpose: these tests pin the wire contract (status codes and Chinese
messages of the SendCloud reference §14/§18), independently of our client.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.sandbox.sendcloud import MESSAGES, SendCloudSimulator, SimulatorServer

USER, KEY = "main_user", "main-key-123"
TRIGGER, TRIGGER_KEY = "trigger_user", "trigger-key-123"


@pytest.fixture
def sim():
    simulator = SendCloudSimulator(deliver_delay=0.01, webhook_time_scale=0.001, seed=7)
    simulator.add_account(USER, KEY, quota=1000)
    simulator.add_api_user(USER, TRIGGER, TRIGGER_KEY, email_type="trigger")
    with SimulatorServer(simulator) as server:
        simulator.base = server.url  # type: ignore[attr-defined]
        simulator.root = server.root  # type: ignore[attr-defined]
        yield simulator


def post(sim, endpoint, params, *, files=None, auth=(USER, KEY)):
    data = {"apiUser": auth[0], "apiKey": auth[1], **params} if auth else dict(params)
    response = requests.post(f"{sim.base}/{endpoint}", data=data, files=files, timeout=10)
    return response


def valid(**overrides):
    params = {
        "from": "news@mail.example.com",
        "subject": "Hello",
        "html": "<p>Hello</p>",
        "to": "ann@example.com",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def xs(to, **extra):
    return json.dumps({"to": to, **extra})


HUNDRED_ONE = [f"u{i}@example.com" for i in range(101)]

MALFORMED_SEND = [
    ("from missing", valid(**{"from": None}), 40801),
    ("from empty", valid(**{"from": ""}), 40801),
    ("from not an address", valid(**{"from": "not-an-address"}), 40802),
    ("from too long", valid(**{"from": "a" * 120 + "@example.com"}), 40257),
    ("subject missing", valid(subject=None), 40808),
    ("subject blank", valid(subject="   "), 40808),
    ("no html nor plain", valid(html=None), 40870),
    ("no recipients at all", valid(to=None), 40805),
    ("bad address in to", valid(to="ann@example.com;not-an-address"), 40806),
    ("101 addresses in to", valid(to=";".join(HUNDRED_ONE)), 40807),
    ("bad cc", valid(cc="bad@"), 40853),
    ("101 cc", valid(cc=";".join(HUNDRED_ONE)), 40854),
    ("bad bcc", valid(bcc="x"), 40856),
    ("101 bcc", valid(bcc=";".join(HUNDRED_ONE)), 40857),
    ("four replyTo", valid(replyTo="a@x.com;b@x.com;c@x.com;d@x.com"), 40879),
    ("bad replyTo", valid(replyTo="nope"), 40811),
    ("headers not JSON", valid(headers="{not json"), 40869),
    ("headers not an object", valid(headers="[1, 2]"), 40869),
    ("xsmtpapi not JSON", valid(xsmtpapi="{oops"), 40813),
    ("xsmtpapi not an object", valid(xsmtpapi="[1]"), 40817),
    ("xsmtpapi without to", valid(xsmtpapi=json.dumps({"sub": {}})), 40815),
    ("xsmtpapi empty to", valid(xsmtpapi=xs([])), 40816),
    ("xsmtpapi to is a string", valid(xsmtpapi=xs("ann@example.com")), 40816),
    ("xsmtpapi 101 to", valid(xsmtpapi=xs(HUNDRED_ONE)), 40827),
    ("xsmtpapi bad address", valid(xsmtpapi=xs(["ann@example.com", "bad"])), 40880),
    (
        "sub array shorter than to",
        valid(xsmtpapi=xs(["a@example.com", "b@example.com"], sub={"%n%": ["A"]})),
        40817,
    ),
    ("sub not an object", valid(xsmtpapi=xs(["a@example.com"], sub=["A"])), 40817),
    ("summary over 255 bytes", valid(contentSummary="摘" * 86), 40878),
    ("unknown labelId", valid(labelId="999999"), 40106),
    ("respEmailId not a boolean", valid(respEmailId="yes"), 40859),
    ("useAddressList not a boolean", valid(useAddressList="maybe"), 40874),
    (
        "six address lists",
        valid(useAddressList="true", to=";".join(f"l{i}@maillist.sendcloud.org" for i in range(6))),
        40864,
    ),
    ("malformed list alias", valid(useAddressList="true", to="not-an-alias"), 40862),
    ("unknown address list", valid(useAddressList="true", to="nolist@maillist.sendcloud.org"), 40863),
    ("embeddedCid without images", valid(embeddedCid="img1"), 40875),
    ("sendRequestId over 128", valid(sendRequestId="x" * 129), 40901),
]


@pytest.mark.parametrize(("case", "params", "code"), MALFORMED_SEND, ids=[c[0] for c in MALFORMED_SEND])
def test_mail_send_rejects_what_sendcloud_rejects(sim, case, params, code):
    response = post(sim, "mail/send", params)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["result"] is False
    assert body["statusCode"] == code, case
    assert body["message"].startswith(MESSAGES[code])
    assert body["info"] == {}
    assert sim.outbox == []
    assert sim.account(USER)["used"] == 0


def test_documented_messages_are_the_exact_chinese_strings(sim):
    body = post(sim, "mail/send", valid(**{"from": ""})).json()
    assert body["message"] == "发信人地址from不能为空"
    body = post(sim, "mail/send", valid(xsmtpapi=xs(["bad"]))).json()
    assert body["message"] == "xsmtpapi中to字段含有非法邮箱格式"


def test_unknown_list_names_the_alias(sim):
    body = post(sim, "mail/send", valid(useAddressList="true", to="ghost@maillist.sendcloud.org")).json()
    assert body["message"] == "to中有不存在的地址列表. 参数to: ghost@maillist.sendcloud.org"


def test_validation_order_is_deterministic(sim):
    """from is checked before subject, subject before content, content before recipients."""
    params = {"from": "", "subject": "", "html": "", "to": ""}
    assert post(sim, "mail/send", params).json()["statusCode"] == 40801
    params["from"] = "a@example.com"
    assert post(sim, "mail/send", params).json()["statusCode"] == 40808
    params["subject"] = "s"
    assert post(sim, "mail/send", params).json()["statusCode"] == 40870
    params["plain"] = "text"
    assert post(sim, "mail/send", params).json()["statusCode"] == 40805


@pytest.mark.parametrize(
    "auth",
    [("main_user", "wrong"), ("nobody", KEY), ("", ""), None],
    ids=["bad key", "bad user", "empty", "absent"],
)
def test_bad_credentials_give_40005(sim, auth):
    body = post(sim, "mail/send", valid(), auth=auth).json()
    assert body == {"result": False, "statusCode": 40005, "message": "认证失败", "info": {}}
    assert post(sim, "userinfo/get", {}, auth=auth).json()["statusCode"] == 40005
    assert sim.outbox == []


def test_attachments_over_10485760_bytes_are_refused(sim):
    files = [
        ("attachments", ("a.bin", b"\0" * 6_000_000, "application/octet-stream")),
        ("attachments", ("b.bin", b"\0" * 4_485_761, "application/octet-stream")),
    ]
    body = post(sim, "mail/send", valid(), files=files).json()
    assert body["statusCode"] == 40819
    assert body["message"] == "附件大小不能超过10485760字节"
    files = [("attachments", ("a.bin", b"\0" * 10_485_760, "application/octet-stream"))]
    assert post(sim, "mail/send", valid(), files=files).json()["statusCode"] == 200


def test_get_on_send_is_refused_with_405(sim):
    response = requests.get(f"{sim.base}/mail/send", params={"apiUser": USER, "apiKey": KEY}, timeout=5)
    assert response.status_code == 405
    assert response.json()["result"] is False


def test_get_with_query_string_works_for_other_endpoints(sim):
    response = requests.get(f"{sim.base}/userinfo/get", params={"apiUser": USER, "apiKey": KEY}, timeout=5)
    assert response.json()["result"] is True


def test_unknown_endpoint_is_404(sim):
    assert post(sim, "mail/nothing", {}).status_code == 404


def test_sgp_base_path_answers_too(sim):
    response = requests.post(f"{sim.root}/api/userinfo/get", data={"apiUser": USER, "apiKey": KEY}, timeout=5)
    assert response.json()["statusCode"] == 200


def test_batch_send_substitutes_per_recipient_and_returns_email_ids(sim):
    params = valid(
        to=None,
        subject="Hi %name%",
        html="<p>%name% owes %money% %greet%</p>",
        plain="%name%",
        xsmtpapi=json.dumps(
            {
                "to": ["ben@ifaxin.com", "joe@ifaxin.com"],
                "sub": {"%name%": ["Ben", "Joe"], "%money%": [288, 497], "%greet%": ["%golden%", "hey"]},
                "section": {"%golden%": "Dear friend"},
            }
        ),
        sendRequestId="req-1",
    )
    body = post(sim, "mail/send", params).json()
    assert body["result"] is True
    assert body["statusCode"] == 200
    assert body["message"] == "请求成功"
    ids = body["info"]["emailIdList"]
    assert [i.rsplit("$", 1)[1] for i in ids] == ["ben@ifaxin.com", "joe@ifaxin.com"]
    message_id = ids[0][: -len("0$ben@ifaxin.com")]
    assert ids == [f"{message_id}0$ben@ifaxin.com", f"{message_id}1$joe@ifaxin.com"]
    assert message_id.split("_")[0].isdigit()
    outbox = {m.recipient: m for m in sim.outbox}
    assert outbox["ben@ifaxin.com"].subject == "Hi Ben"
    assert outbox["ben@ifaxin.com"].html == "<p>Ben owes 288 Dear friend</p>"
    assert outbox["joe@ifaxin.com"].html == "<p>Joe owes 497 hey</p>"
    assert outbox["joe@ifaxin.com"].text == "Joe"
    assert outbox["joe@ifaxin.com"].send_request_id == "req-1"
    assert sim.account(USER)["used"] == 2


def test_xsmtpapi_overrides_to_cc_and_bcc(sim):
    params = valid(cc="cc@example.com", xsmtpapi=xs(["only@example.com"]))
    assert post(sim, "mail/send", params).json()["result"] is True
    assert [m.recipient for m in sim.outbox] == ["only@example.com"]


def test_broadcast_delivers_to_to_cc_and_bcc(sim):
    params = valid(to="a@example.com;b@example.com", cc="c@example.com", bcc="d@example.com")
    body = post(sim, "mail/send", params).json()
    assert len(body["info"]["emailIdList"]) == 4
    assert sorted(m.recipient for m in sim.outbox) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ]


def test_resp_email_id_false_omits_the_list(sim):
    body = post(sim, "mail/send", valid(respEmailId="false")).json()
    assert body["result"] is True
    assert body["info"] == {}


def test_from_with_display_name(sim):
    assert post(sim, "mail/send", valid(**{"from": "ACME 新闻 <news@mail.example.com>"})).json()["result"]
    mail = sim.outbox[0]
    assert (mail.from_name, mail.from_address) == ("ACME 新闻", "news@mail.example.com")


def test_same_send_request_id_is_processed_once(sim):
    params = valid(sendRequestId="batch-42")
    assert post(sim, "mail/send", params).json()["statusCode"] == 200
    again = post(sim, "mail/send", params).json()
    assert again == {"result": False, "statusCode": 40000, "message": "重复请求", "info": {}}
    assert len(sim.outbox) == 1
    assert sim.account(USER)["used"] == 1
    # Another API_USER has its own key space.
    trigger = post(sim, "mail/send", params, auth=(TRIGGER, TRIGGER_KEY)).json()
    assert trigger["statusCode"] == 200


def test_request_ids_expire_after_one_hour():
    now = [1_000_000.0]
    simulator = SendCloudSimulator(deliver_delay=0.01, clock=lambda: now[0])
    simulator.add_account(USER, KEY)
    with SimulatorServer(simulator) as server:
        simulator.base = server.url  # type: ignore[attr-defined]
        params = valid(sendRequestId="hourly")
        assert post(simulator, "mail/send", params).json()["statusCode"] == 200
        now[0] += 3599
        assert post(simulator, "mail/send", params).json()["statusCode"] == 40000
        now[0] += 2
        assert post(simulator, "mail/send", params).json()["statusCode"] == 200
        assert len(simulator.outbox) == 2


def test_refused_request_does_not_consume_its_id(sim):
    assert post(sim, "mail/send", valid(subject="", sendRequestId="r1")).json()["statusCode"] == 40808
    assert post(sim, "mail/send", valid(sendRequestId="r1")).json()["statusCode"] == 200


def test_quota_is_checked_for_the_whole_request(sim):
    sim.set_account(USER, quota=3, used=2)
    body = post(sim, "mail/send", valid(to="a@example.com;b@example.com")).json()
    assert body == {"result": False, "statusCode": 40904, "message": "额度检查失败", "info": {}}
    assert sim.outbox == []
    assert sim.account(USER)["used"] == 2
    assert post(sim, "mail/send", valid(to="a@example.com")).json()["statusCode"] == 200
    assert sim.account(USER)["used"] == 3
    sim.roll_day()
    assert sim.account(USER)["used"] == 0
    assert post(sim, "mail/send", valid(to="a@example.com;b@example.com")).json()["statusCode"] == 200


def test_balance_is_charged_per_mail_and_refused_when_short(sim):
    sim.price_per_mail = Decimal("0.5")
    sim.set_account(USER, balance="1.2", available="1.2")
    assert post(sim, "mail/send", valid(to="a@example.com;b@example.com")).json()["result"] is True
    assert sim.account(USER)["available"] == Decimal("0.2")
    body = post(sim, "mail/send", valid()).json()
    assert body["statusCode"] == 40904
    assert body["message"] == "额度检查失败: 余额不足"
    assert len(sim.outbox) == 2
    info = post(sim, "userinfo/get", {}).json()["info"]
    assert info["avaliableBalance"] == pytest.approx(0.2)


def test_userinfo_has_the_documented_keys(sim):
    sim.set_account(USER, used=5)
    body = post(sim, "userinfo/get", {}).json()
    assert body["result"] is True
    info = body["info"]
    for key in (
        "avaliableBalance",
        "balance",
        "email",
        "phone",
        "quota",
        "todayUsedQuota",
        "regTime",
        "reputation",
        "userName",
        "accountType",
        "websiteAuthStatus",
        "businessAuthStatus",
    ):
        assert key in info, key
    assert "availableBalance" not in info
    assert info["todayUsedQuota"] == 5
    assert info["accountType"] == "付费用户"


@pytest.mark.parametrize(
    ("fault", "code"),
    [({"throttle": True}, 50001), ({"quota_exhausted": True}, 40904), ({"template_mismatch": True}, 40908)],
)
def test_send_faults_answer_their_codes(sim, fault, code):
    response = requests.post(f"{sim.root}/_sandbox/faults", json=fault, timeout=5)
    assert response.status_code == 200
    assert response.json()[next(iter(fault))] is True
    body = post(sim, "mail/send", valid()).json()
    assert body["statusCode"] == code
    assert body["message"] == MESSAGES[code]
    assert sim.outbox == []


def test_fault_endpoint_refuses_unknown_or_badly_typed_faults(sim):
    assert requests.post(f"{sim.root}/_sandbox/faults", json={"boom": 1}, timeout=5).status_code == 400
    assert (
        requests.post(f"{sim.root}/_sandbox/faults", json={"throttle": "yes"}, timeout=5).status_code == 400
    )
    assert requests.post(f"{sim.root}/_sandbox/faults", json={"error_rate": -1}, timeout=5).status_code == 400


def test_error_rate_answers_http_500_before_accepting(sim):
    sim.faults.error_rate = 1.0
    response = post(sim, "mail/send", valid())
    assert response.status_code == 500
    sim.faults.error_rate = 0.0
    sim.faults.fail_next = 1
    assert post(sim, "userinfo/get", {}).status_code == 500
    assert post(sim, "userinfo/get", {}).status_code == 200
    assert sim.outbox == []


def test_latency_delays_the_answer(sim):
    sim.faults.latency = 0.3
    started = time.monotonic()
    assert post(sim, "userinfo/get", {}).json()["result"] is True
    assert time.monotonic() - started >= 0.3


def test_timeout_after_accept_records_then_stalls(sim):
    sim.faults.timeout_after_accept = 5.0
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            f"{sim.base}/mail/send", data={"apiUser": USER, "apiKey": KEY, **valid()}, timeout=(2, 1.0)
        )
    deadline = time.monotonic() + 5
    while not sim.outbox and time.monotonic() < deadline:  # a loaded machine may be slow to record
        time.sleep(0.05)
    assert len(sim.outbox) == 1
    assert sim.requests("mail/send")[-1].status_code == 200


def test_request_log_keeps_params_but_never_the_key(sim):
    post(sim, "mail/send", valid(sendRequestId="logged"))
    record = sim.requests("mail/send")[-1]
    assert record.param("sendRequestId") == "logged"
    assert "apiKey" not in record.params
    assert record.status_code == 200
    log = requests.get(f"{sim.root}/_sandbox/requests", timeout=5).text
    assert KEY not in log


# --------------------------------------------------------------------------- templates


@pytest.fixture
def templates(sim):
    sim.add_template(USER, "welcome", subject="Welcome %name%", html="<p>Hi %name%</p>")
    sim.add_template(USER, "pending", subject="x", html="x", template_stat=0)
    sim.add_template(USER, "receipt", subject="", html="<p>receipt</p>", template_type="trigger")
    return sim


SEND_TEMPLATE_CASES = [
    ("no invokeName", {}, 40201),
    ("unknown template", {"templateInvokeName": "nope"}, 40823),
    ("template not approved", {"templateInvokeName": "pending"}, 40824),
    ("template type differs from API_USER", {"templateInvokeName": "receipt"}, 40825),
    ("no xsmtpapi", {"templateInvokeName": "welcome", "to": "a@example.com"}, 40812),
]


@pytest.mark.parametrize(
    ("case", "params", "code"), SEND_TEMPLATE_CASES, ids=[c[0] for c in SEND_TEMPLATE_CASES]
)
def test_sendtemplate_rejections(templates, case, params, code):
    body = post(templates, "mail/sendtemplate", {"from": "news@mail.example.com", **params}).json()
    assert body["statusCode"] == code, case
    assert body["message"] == MESSAGES[code]


def test_sendtemplate_without_any_subject(templates):
    params = {
        "from": "t@mail.example.com",
        "templateInvokeName": "receipt",
        "xsmtpapi": xs(["a@example.com"]),
    }
    body = post(templates, "mail/sendtemplate", params, auth=(TRIGGER, TRIGGER_KEY)).json()
    assert body["statusCode"] == 40826


def test_sendtemplate_renders_the_template(templates):
    params = {
        "from": "news@mail.example.com",
        "templateInvokeName": "welcome",
        "xsmtpapi": xs(["a@example.com"], sub={"%name%": ["安"]}),
    }
    body = post(templates, "mail/sendtemplate", params).json()
    assert body["statusCode"] == 200
    mail = templates.outbox[0]
    assert (mail.subject, mail.html, mail.template) == ("Welcome 安", "<p>Hi 安</p>", "welcome")


def test_address_list_send_creates_a_task(sim):
    sim.add_address_list(
        USER, "vip@maillist.sendcloud.org", {"a@example.com": {"money": "99"}, "b@example.com": {}}
    )
    params = valid(useAddressList="true", to="vip@maillist.sendcloud.org", html="<p>%money% %recipient%</p>")
    body = post(sim, "mail/send", params).json()
    assert body["result"] is True
    assert body["statusCode"] == 40821
    assert body["message"] == "地址列表任务创建成功"
    (task_id,) = body["info"]["maillistTaskId"]
    htmls = {m.recipient: m.html for m in sim.outbox}
    assert htmls == {
        "a@example.com": "<p>99 a@example.com</p>",
        "b@example.com": "<p>%money% b@example.com</p>",
    }
    info = post(sim, "mail/taskinfo", {"maillistTaskId": task_id}).json()["info"]["data"]
    assert info["memberCount"] == 2
    # A trigger API_USER may not use address lists.
    body = post(sim, "mail/send", params, auth=(TRIGGER, TRIGGER_KEY)).json()
    assert body["statusCode"] == 40820


# --------------------------------------------------------------------------- domains and API_USERs


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", 41001),
        ("a.com;b.com", 41013),
        ("under_score.example.com", 41003),
        ("no-dot", 41003),
        ("my.sendcloud.example.com", 41003),
        ("ifaxin-mail.example.com", 41003),
        (("a" * 60 + ".") * 5 + "com", 41002),
    ],
)
def test_domain_add_rejections(sim, name, code):
    body = post(sim, "domain/add", {"name": name}).json()
    assert body["statusCode"] == code
    assert body["message"] == MESSAGES[code]


def test_domain_add_generates_records_and_limits_to_five(sim):
    body = post(sim, "domain/add", {"name": "News.Example.com"}).json()
    assert body["result"] is True
    data = body["info"]["data"]
    assert data["name"] == "news.example.com"
    assert data["verify"] == 0
    assert data["type"] == "普通"
    assert data["verifyKey.domain"] == "news.example.com"
    assert data["verifyKey.value"].startswith("sendcloud-site-verification=")
    assert data["spf.value"] == "v=spf1 include:spf.sendcloud.org ~all"
    assert data["dkim.domain"] == "mail._domainkey.news.example.com"
    assert data["dkim.value"].startswith("k=rsa;p=MII")
    assert (data["mx.domain"], data["mx.value"]) == ("news.example.com", "mx.sendcloud.org")
    assert (data["dmarc.domain"], data["dmarc.value"]) == ("_dmarc.news.example.com", "v=DMARC1; p=none;")
    listed = post(sim, "domain/list", {}).json()["info"]
    assert listed["count"] == 1
    assert listed["dataList"][0]["dkim.value"] == data["dkim.value"]  # stable key
    assert post(sim, "domain/add", {"name": "news.example.com"}).json()["statusCode"] == 41015
    for i in range(4):
        assert post(sim, "domain/add", {"name": f"d{i}.example.com"}).json()["result"] is True
    assert post(sim, "domain/add", {"name": "six.example.com"}).json()["statusCode"] == 41012


def test_domain_list_filters(sim):
    for name in ("a.example.com", "b.example.com"):
        post(sim, "domain/add", {"name": name})
    sim.set_domain_verify("b.example.com", 7)
    names = lambda params: [d["name"] for d in post(sim, "domain/list", params).json()["info"]["dataList"]]  # noqa: E731
    assert names({"name": "b.example.com"}) == ["b.example.com"]
    assert names({"verify": "7"}) == ["b.example.com"]
    assert names({"verify": ">1"}) == ["b.example.com"]
    assert names({"verify": "<0"}) == ["a.example.com"]


def test_apiuser_add_and_list(sim):
    post(sim, "domain/add", {"name": "news.example.com"})
    cases = [
        ({"name": "", "emailType": "1", "domainName": "news.example.com"}, 41110),
        ({"name": "short", "emailType": "1", "domainName": "news.example.com"}, 41111),
        ({"name": "has-dash-name", "emailType": "1", "domainName": "news.example.com"}, 41111),
        ({"name": "good_name", "domainName": "news.example.com"}, 41101),
        ({"name": "good_name", "emailType": "2", "domainName": "news.example.com"}, 41102),
        ({"name": "good_name", "emailType": "1"}, 41105),
        ({"name": "good_name", "emailType": "1", "domainName": "other.example.com"}, 41108),
    ]
    for params, code in cases:
        assert post(sim, "apiuser/add", params).json()["statusCode"] == code, params
    body = post(
        sim, "apiuser/add", {"name": "good_name", "emailType": "0", "domainName": "news.example.com"}
    ).json()
    data = body["info"]["data"]
    assert (data["name"], data["emailType"], data["domain"]) == ("good_name", "触发", "news.example.com")
    new_key = data["nameKey"]
    assert post(sim, "userinfo/get", {}, auth=("good_name", new_key)).json()["result"] is True
    dup = {"name": "good_name", "emailType": "1", "domainName": "news.example.com"}
    assert post(sim, "apiuser/add", dup).json()["statusCode"] == 41119
    listed = post(sim, "apiuser/list", {"domainName": "news.example.com"}).json()["info"]["dataList"]
    assert [(u["name"], u["emailType"], u["cType"]) for u in listed] == [("good_name", "触发", "非测试")]
    for i in range(7):
        post(
            sim, "apiuser/add", {"name": f"user_{i:04d}", "emailType": "1", "domainName": "news.example.com"}
        )
    assert (
        post(
            sim, "apiuser/add", {"name": "eleventh", "emailType": "1", "domainName": "news.example.com"}
        ).json()["statusCode"]
        == 41112
    )


def test_key_reset_keeps_the_old_key_for_fifteen_minutes():
    now = [0.0]
    simulator = SendCloudSimulator(clock=lambda: now[0])
    simulator.add_account(USER, KEY)
    with SimulatorServer(simulator) as server:
        simulator.base = server.url  # type: ignore[attr-defined]
        new_key = simulator.reset_key(USER)
        assert post(simulator, "userinfo/get", {}).json()["result"] is True
        assert post(simulator, "userinfo/get", {}, auth=(USER, new_key)).json()["result"] is True
        now[0] += 15 * 60 + 1
        assert post(simulator, "userinfo/get", {}).json()["statusCode"] == 40005


def test_verify_bits_follow_what_dns_serves():
    from plugin.sandbox.dns import DnsResponder

    with DnsResponder() as dns:
        simulator = SendCloudSimulator(dns_nameserver=dns.nameserver, dns_timeout=0.5)
        simulator.add_account(USER, KEY)
        with SimulatorServer(simulator) as server:
            simulator.base = server.url  # type: ignore[attr-defined]
            data = post(simulator, "domain/add", {"name": "news.example.com"}).json()["info"]["data"]

            def verify():
                return post(simulator, "domain/list", {}).json()["info"]["dataList"][0]["verify"]

            assert verify() == 0
            dns.set("news.example.com", "TXT", [data["verifyKey.value"], data["spf.value"]])
            assert verify() == 16 | 2
            dns.set(data["dkim.domain"], "TXT", [data["dkim.value"]])
            dns.set("news.example.com", "MX", ["10 mx.sendcloud.org."])
            dns.set("_dmarc.news.example.com", "TXT", ["v=DMARC1; p=none;"])
            assert verify() == 16 | 2 | 1 | 4 | 32
            # Two SPF records: SendCloud's SPF no longer counts.
            dns.set(
                "news.example.com",
                "TXT",
                [data["verifyKey.value"], data["spf.value"], "v=spf1 include:_spf.other.com ~all"],
            )
            assert verify() == 16 | 1 | 4 | 32
            # A DKIM record with another key does not count.
            dns.set(data["dkim.domain"], "TXT", ["k=rsa;p=AAAA"])
            assert verify() == 16 | 4 | 32
            dns.fail("news.example.com", "SERVFAIL")
            assert verify() == 32


def test_sandbox_pages_show_rendered_mail(sim):
    post(
        sim,
        "mail/send",
        valid(xsmtpapi=xs(["a@example.com"], sub={"%n%": ["<b>Ann</b>"]}), html="<p>%n%</p>"),
    )
    outbox = requests.get(f"{sim.root}/_sandbox/outbox", timeout=5).json()
    assert outbox[0]["html"] == "<p><b>Ann</b></p>"
    page = requests.get(f"{sim.root}/_sandbox/", timeout=5)
    assert page.status_code == 200
    assert "a@example.com" in page.text
    assert "&lt;p&gt;&lt;b&gt;Ann&lt;/b&gt;&lt;/p&gt;" in page.text  # escaped into srcdoc
    assert KEY not in page.text


# The simulator cuts a request's texts once and fills the pieces per recipient; that must give
# exactly what one regex substitution per recipient gives, whatever the text and values.
_PIECES = [*"ab %\n\t_-é中", "%x%", "%name%", "%%", "%a b%"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    text=_TEXT,
    values=st.dictionaries(st.sampled_from(["%x%", "%name%", "%a%", "%%", "%b%"]), _TEXT, max_size=4),
)
def test_split_once_substitution_matches_a_regex_pass(text, values):
    from plugin.sandbox.sendcloud import _cut_placeholders, _fill

    expected = re.sub(r"%[^%\s]+%", lambda m: values.get(m.group(0), m.group(0)), text)
    assert _fill(_cut_placeholders(text), values) == expected
