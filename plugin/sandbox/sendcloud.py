"""A SendCloud simulator: the apiv2 subset the plugin uses, served over real HTTP.

The demo and the tests talk to it exactly as they would talk to ``https://api.sendcloud.net``:
form-encoded POSTs, the four-key JSON envelope, the documented status codes and Chinese messages
(reference §14), ``sendRequestId`` idempotency, daily quota and balance, domains whose ``verify``
bits come from what the sandbox DNS really serves, API_USERs, and signed webhook posts back to
the plugin with SendCloud's retry schedule (compressible for tests).  Nothing leaves the machine:
"delivered" mail lands in an outbox you can read as JSON (``GET /_sandbox/outbox``) or as a page
(``GET /_sandbox/``).

Choices where the real behaviour is not documented (reference §17/§18), made once here:

* ``GET`` on a send endpoint answers HTTP 405 with an envelope ``statusCode 405``.
* A ``sub`` array whose length differs from ``xsmtpapi.to`` is refused with 40817 (xsmtpapi解析错误).
* Daily quota exceeded → 40904 额度检查失败 (assumed code).  Insufficient balance → also 40904,
  with the detail ``: 余额不足`` appended to the message (no dedicated code exists), so a client
  maps both to "cannot send now" and can tell them apart by the message.
* ``sendRequestId`` longer than 128 characters → 40901 邮件发送失败 with a detail suffix.
* ``domain/add`` of a domain the account already has → 41015 domain创建失败 with a detail suffix;
  ``apiuser/add`` of an existing name → 41119 apiUser创建失败.
* ``templateInvokeName`` missing on ``mail/sendtemplate`` → 40201.
* Templates: ``invokeName`` is 1-64 of ``A-Za-z0-9_-.`` (40202 otherwise); at most
  ``max_templates`` (default 50, code 40219); ``template/update`` with changed content leaves
  the template ``-2`` (not submitted) unless ``isSubmitAudit`` is 1 (the default, as in the
  Swagger file), which makes it ``0`` (pending); withdrawing an approved template → 40227.
  Nobody reviews in the sandbox: ``review_template()`` (Python) or ``template_auto_review``
  decides.  The real API documents no rejection reason; the simulator adds ``auditReason`` to a
  rejected template's ``template/get`` data so the UI path that shows one can be exercised.
* Idempotency keys are remembered only for requests that were accepted; a refused request does
  not consume its key.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import heapq
import hmac
import itertools
import json
import random
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

import requests
from flask import Flask, Response, g, jsonify, render_template_string, request
from werkzeug.datastructures import MultiDict
from werkzeug.serving import WSGIRequestHandler, make_server

BEIJING = ZoneInfo("Asia/Shanghai")
IDEMPOTENCY_WINDOW = 3600.0
MAX_RECIPIENTS = 100
ATTACHMENT_LIMIT = 10_485_760
SEND_ENDPOINTS = frozenset({"mail/send", "mail/sendtemplate", "mail/sendcalendar"})
VERIFY_BITS = {"dkim": 1, "spf": 2, "mx": 4, "cname": 8, "ownership": 16, "dmarc": 32}
SPF_VALUE = "v=spf1 include:spf.sendcloud.org ~all"
SPF_INCLUDE = "include:spf.sendcloud.org"
MX_HOST = "mx.sendcloud.org"
DMARC_VALUE = "v=DMARC1; p=none;"
DKIM_SELECTOR = "mail"
#: Written out again rather than imported from the client on purpose: the simulator stands for
#: SendCloud, so a wrong code in the client must show up as a failing test, not agree with itself.
EVENT_CODES = {
    "deliver": 1,
    "report_spam": 3,
    "invalid": 4,
    "soft_bounce": 5,
    "click": 10,
    "open": 11,
    "unsubscribe": 12,
    "request": 18,
}
WEBHOOK_RETRY_DELAYS = (60.0, 120.0, 240.0, 480.0, 960.0)

#: The exact messages of the codes this simulator emits (reference §14).
MESSAGES: dict[int, str] = {
    200: "请求成功",
    405: "Method Not Allowed",
    40000: "重复请求",
    40002: "start非法",
    40004: "limit非法",
    40005: "认证失败",
    40106: "标签ID对应的标签不存在",
    40201: "模版调用名称invokeName不能为空",
    40202: "模版调用名称invokeName格式错误",
    40203: "模版类型不能为空",
    40204: "非法的模板类型, 只能是0或者1",
    40207: "name不能为空",
    40209: "subject不能为空",
    40211: "html不能为空",
    40216: "模板调用名称对应的模板不存在",
    40219: "用户最多只能有50个模板",
    40220: "模版调用名称已经存在",
    40222: "isSubmitAudit格式错误",
    40223: "模板处于待审核状态, 不能修改",
    40225: "cancel格式错误",
    40226: "模板处于待审核状态, 无需再次提交",
    40227: "模板已经审核通过, 无需再次提交",
    40228: "模板处于审核失败状态, 无需撤销审核",
    40229: "模板还未提交审核, 无法撤销审核",
    40257: "发信人地址from最大128个字符",
    40703: "事件类型不能为空",
    40704: "事件类型格式错误,没有可用的事件类型",
    40705: "url不能为空",
    40706: "url格式错误",
    40707: "url测试失败",
    40708: "url已存在",
    40801: "发信人地址from不能为空",
    40802: "发信人地址from格式错误",
    40805: "收件人地址不能为空",
    40806: "收件人地址数组中, 存在非法地址",
    40807: "收件人地址的数目不能超过100",
    40808: "邮件主题subject不能为空",
    40811: "回复地址replyto格式错误",
    40812: "xsmtpapi不能为空",
    40813: "xsmtpapi格式错误",
    40815: "xsmtpapi必须含有to字段",
    40816: "xsmtpapi中to字段的解析值不能为空",
    40817: "xsmtpapi解析错误",
    40819: "附件大小不能超过10485760字节",
    40820: "此用户没有使用地址列表的权限",
    40821: "地址列表任务创建成功",
    40823: "邮件模板不存在",
    40824: "模板未通过审核",
    40825: "邮件模板和API_USER类型不匹配",
    40826: "参数subject和模板主题不能同时为空",
    40827: "xsmtpapi中to数组长度不能超过100",
    40853: "cc地址格式错误",
    40854: "CC地址的数目不能超过100",
    40856: "bcc地址格式错误",
    40857: "BCC地址的数目不能超过100",
    40859: "respEmailId格式错误",
    40862: "to中有格式错误的地址列表",
    40863: "to中有不存在的地址列表",
    40864: "地址列表的数目不能超过5",
    40869: "headers格式错误",
    40870: "html和plain不能同时为空",
    40874: "useAddressList格式错误",
    40875: "内嵌图片ID或内嵌图片附件长度不一致",
    40878: "摘要长度不能超过255个字节",
    40879: "回复地址replyto个数不能超过3个",
    40880: "xsmtpapi中to字段含有非法邮箱格式",
    40901: "邮件发送失败",
    40904: "额度检查失败",
    40908: "邮件内容和邮件模板匹配不通过",
    41001: "name不能为空串",
    41002: "name的长度应该为1-250个字符",
    41003: "name不符合域名规则",
    41004: "newName不能为空串",
    41006: "newName不符合域名规则",
    41012: "用户创建域名不能超过5个",
    41013: "name参数错误, 多个域名",
    41014: "域名不存在",
    41015: "domain创建失败",
    41016: "domain修改失败",
    41101: "emailType不能为空串",
    41102: "emailType不符合规则",
    41105: "domainName不能为空串",
    41108: "domainName所属的域名不存在",
    41110: "name不能为空串",
    41111: "name不符合规则, name的长度为6-32的字符串, 只能含有(A-Z,a-z,0-9,_)",
    41112: "apiUser不能超过10个",
    41119: "apiUser创建失败",
    50001: "邮件发送失败.536 Frequency limited（每个apiuser每分钟调用总请求数不能超过4万次）",
    51007: "categoryName不能为空",
}

_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$&'*+/=?^_`{|}~%-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+"
)
_DOMAIN = re.compile(r"(?=.{1,250}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
_APIUSER_NAME = re.compile(r"[A-Za-z0-9_]{6,32}")
_FROM_WITH_NAME = re.compile(r"\s*(.*?)\s*<\s*([^<>]+?)\s*>\s*")
_PLACEHOLDER = re.compile(r"(%[^%\s]+%)")
_INVOKE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ALNUM = string.ascii_letters + string.digits


def _now_beijing() -> str:
    return dt.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _valid_email(value: str) -> bool:
    return bool(_EMAIL.fullmatch(value)) and len(value) <= 254


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(";") if part.strip()]


class SimError(Exception):
    """An error envelope: ``statusCode`` plus the documented message and an optional detail."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail

    @property
    def message(self) -> str:
        return MESSAGES.get(self.code, "error") + self.detail


# --------------------------------------------------------------------------- public value types


@dataclasses.dataclass
class Faults:
    """Failure injection; change attributes from Python or ``POST /_sandbox/faults`` (JSON)."""

    #: Probability of answering HTTP 500 before doing anything.
    error_rate: float = 0.0
    #: The next N API requests answer HTTP 500 (deterministic variant of ``error_rate``).
    fail_next: int = 0
    #: Seconds to wait before handling every API request.
    latency: float = 0.0
    #: Seconds to sleep after a send was accepted and recorded (make it exceed the client timeout).
    timeout_after_accept: float = 0.0
    #: Sends answer 50001 (Frequency limited).
    throttle: bool = False
    #: Sends answer 40904 as if today's quota were used up.
    quota_exhausted: bool = False
    #: Non-template sends answer 40908 (content does not match an approved template).
    template_mismatch: bool = False
    #: These endpoints (comma-separated, e.g. ``"webhook/list,webhook/add"``) answer HTTP 500,
    #: every time: one step of a flow failing while the steps before it succeed.
    fail_endpoints: str = ""

    def update(self, values: Mapping[str, Any]) -> None:
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(fields)}")
            current = getattr(self, key)
            if isinstance(current, str):
                if not isinstance(value, str):
                    raise ValueError(f"{key} must be text")
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{key} must be a non-negative integer")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            setattr(self, key, type(current)(value))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DeliveredMail:
    """One message the simulator "delivered": the per-recipient rendered content."""

    recipient: str
    subject: str
    html: str
    text: str
    from_address: str
    from_name: str
    api_user: str
    send_request_id: str | None
    email_id: str
    message_id: str
    headers: Mapping[str, str]
    reply_to: tuple[str, ...]
    accepted_at: dt.datetime
    #: ``delivered``, or ``invalid`` when the address is on a suppression list.
    status: str = "delivered"
    template: str | None = None
    label: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["accepted_at"] = self.accepted_at.isoformat()
        data["headers"] = dict(self.headers)
        data["reply_to"] = list(self.reply_to)
        return data


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One API request as received (the API key removed)."""

    at: float
    method: str
    endpoint: str
    api_user: str | None
    params: Mapping[str, tuple[str, ...]]
    http_status: int
    status_code: int | None
    result: bool | None

    def param(self, name: str) -> str | None:
        values = self.params.get(name) or ()
        return values[0] if values else None

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["params"] = {k: list(v) for k, v in self.params.items()}
        return data


@dataclasses.dataclass
class WebhookDelivery:
    """One signed event on its way to one webhook URL, with every attempt's outcome."""

    event: str
    url: str
    fields: tuple[tuple[str, str], ...]
    attempts: list[str] = dataclasses.field(default_factory=list)
    delivered: bool = False
    given_up: bool = False

    def field(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    def as_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for key, value in self.fields:
            fields.setdefault(key, []).append(value)
        return {
            "event": self.event,
            "url": self.url,
            "fields": {k: v[0] if len(v) == 1 else v for k, v in fields.items()},
            "attempts": list(self.attempts),
            "delivered": self.delivered,
            "given_up": self.given_up,
        }


# --------------------------------------------------------------------------- internal state


@dataclasses.dataclass
class _Domain:
    name: str
    verify_key: str
    dkim_value: str
    created: str
    updated: str
    type: int = 1
    verify_override: int | None = None


@dataclasses.dataclass
class _Template:
    invoke_name: str
    name: str
    subject: str
    html: str
    plain: str
    template_type: int
    template_stat: int
    created: str
    updated: str = ""
    note: str | None = None


@dataclasses.dataclass
class _Webhook:
    url: str
    category: str
    events: tuple[int, ...]
    created: str


@dataclasses.dataclass
class _Account:
    user_name: str
    balance: Decimal
    available: Decimal
    quota: int
    used: int
    account_type: str
    reg_time: str
    reputation: float = 80.0
    email: str = "sandbox@example.com"
    phone: str = "***"
    domains: dict[str, _Domain] = dataclasses.field(default_factory=dict)
    templates: dict[str, _Template] = dataclasses.field(default_factory=dict)
    labels: dict[int, str] = dataclasses.field(default_factory=dict)
    address_lists: dict[str, dict[str, dict[str, str]]] = dataclasses.field(default_factory=dict)
    webhooks: list[_Webhook] = dataclasses.field(default_factory=list)
    suppressed: dict[str, str] = dataclasses.field(default_factory=dict)  # address → bounce|unsubscribe|spam
    api_users: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _ApiUser:
    name: str
    key: str
    account: _Account
    email_type: int  # 0 trigger, 1 batch
    domain: str | None
    ctype: int = 1
    open: int = 1
    click: int = 0
    unsubscribe: int = 1
    old_key: str | None = None
    old_key_until: float = 0.0
    request_ids: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Outgoing:
    """A message to record once the request passed every check (content per recipient)."""

    recipient: str
    subject: str
    html: str
    text: str
    task_id: int | None = None
    #: The request's headers with this recipient's values (``None``: as in the request).
    headers: Mapping[str, str] | None = None


def _cut_placeholders(text: str) -> tuple[str, ...]:
    """``text`` cut around its ``%name%`` placeholders: literal, name, literal, ... literal.

    Why: a request carries one subject, body and header set for up to 100 recipients; scanning
    them once and joining the pieces per recipient does the substitution a regex pass per
    recipient did, identically (same non-overlapping left-to-right matches), at a fraction of
    the CPU the simulator takes from the client it shares the machine with in benchmarks."""
    return tuple(_PLACEHOLDER.split(text))


def _fill(parts: tuple[str, ...], values: Mapping[str, str]) -> str:
    if len(parts) == 1:
        return parts[0]
    pieces = list(parts)
    for i in range(1, len(pieces), 2):
        name = pieces[i]
        pieces[i] = values.get(name, name)
    return "".join(pieces)


@dataclasses.dataclass(frozen=True)
class _Content:
    """A request's subject, bodies and header values, split once for every recipient."""

    subject: tuple[str, ...]
    html: tuple[str, ...]
    plain: tuple[str, ...]
    #: Header values split likewise; ``None`` when no value holds a ``%`` (kept as sent).
    headers: dict[str, tuple[str, ...]] | None

    @classmethod
    def of(cls, subject: str, html: str, plain: str, headers: Mapping[str, str] | None) -> _Content:
        split_headers = None
        if headers and any("%" in v for v in headers.values()):
            split_headers = {name: _cut_placeholders(value) for name, value in headers.items()}
        return cls(
            _cut_placeholders(subject), _cut_placeholders(html), _cut_placeholders(plain), split_headers
        )


# --------------------------------------------------------------------------- the simulator


class SendCloudSimulator:
    """Accounts, domains, API_USERs, templates, an outbox and a webhook sender behind a Flask app."""

    def __init__(
        self,
        *,
        dns_nameserver: tuple[str, int] | None = None,
        webhook_retry_delays: Sequence[float] = WEBHOOK_RETRY_DELAYS,
        webhook_time_scale: float = 1.0,
        webhook_timeout: float = 3.0,
        deliver_delay: float = 1.0,
        price_per_mail: Decimal = Decimal("0.001"),
        check_webhook_urls: bool = True,
        content_summary_limit: int = 255,
        attachment_limit: int = ATTACHMENT_LIMIT,
        webhook_app_key: str | None = None,
        dns_timeout: float = 1.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dns_nameserver = dns_nameserver
        self.webhook_retry_delays = tuple(webhook_retry_delays)
        self.webhook_time_scale = webhook_time_scale
        self.webhook_timeout = webhook_timeout
        self.deliver_delay = deliver_delay
        self.price_per_mail = price_per_mail
        self.check_webhook_urls = check_webhook_urls
        self.content_summary_limit = content_summary_limit
        self.attachment_limit = attachment_limit
        #: Signs every webhook post (SendCloud's per-account "APP KEY"; here one per simulator).
        self.webhook_app_key = webhook_app_key or secrets.token_hex(16)
        self.dns_timeout = dns_timeout
        self.faults = Faults()
        self.clock = clock
        #: Called with (domain, {purpose: (type, host, value)}) after ``domain/add`` (the sandbox
        #: command uses it to publish the records in the sandbox DNS when asked to).
        self.on_domain_added: Callable[[str, dict[str, tuple[str, str, str]]], None] | None = None
        #: Most templates an account may hold (the docs say 1000 in prose, 50 in code 40219).
        self.max_templates = 50
        #: ``"approve"``/``"reject"``: decide every submitted template at once; ``None``: wait
        #: for :meth:`review_template`.
        self.template_auto_review: Literal["approve", "reject"] | None = None
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._accounts: list[_Account] = []
        self._users: dict[str, _ApiUser] = {}
        self._mails: list[DeliveredMail] = []
        self._requests: list[RequestRecord] = []
        self._webhook_log: list[WebhookDelivery] = []
        self._events: list[tuple[tuple[str, str], ...]] = []
        self._seq = itertools.count(1)
        self._task_ids = itertools.count(260_000)
        self._label_ids = itertools.count(10_000)
        self._tasks: dict[int, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._jobs: list[tuple[float, int, Callable[[], None]]] = []
        self._jobs_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._http = requests.Session()
        self.app = self._build_app()

    # ------------------------------------------------------------------ Python helpers (tests/demo)

    def add_account(
        self,
        api_user: str,
        api_key: str,
        *,
        balance: Decimal = Decimal("100"),
        quota: int = 1000,
        used: int = 0,
        account_type: str = "付费用户",
        email_type: Literal["batch", "trigger"] = "batch",
        domain: str | None = None,
    ) -> None:
        """Create an account whose first API_USER is ``api_user``/``api_key``."""
        with self._lock:
            if api_user in self._users:
                raise ValueError(f"API_USER {api_user!r} exists")
            account = _Account(
                user_name=api_user,
                balance=Decimal(balance),
                available=Decimal(balance),
                quota=quota,
                used=used,
                account_type=account_type,
                reg_time=dt.datetime.now(BEIJING).strftime("%Y-%m-%d"),
            )
            self._accounts.append(account)
            self._add_user(account, api_user, api_key, 0 if email_type == "trigger" else 1, domain)

    def add_api_user(
        self,
        owner: str,
        name: str,
        api_key: str,
        *,
        email_type: Literal["batch", "trigger"] = "batch",
        domain: str | None = None,
    ) -> None:
        """Add an API_USER to the account that owns API_USER ``owner`` (no name rules applied)."""
        with self._lock:
            account = self._users[owner].account
            self._add_user(account, name, api_key, 0 if email_type == "trigger" else 1, domain)

    def knows(self, api_user: str) -> bool:
        """Whether ``api_user`` exists (the demo restores its API_USERs after a restart)."""
        with self._lock:
            return api_user in self._users

    def reset_key(self, api_user: str) -> str:
        """A new API_KEY; the old one keeps working for 15 minutes, as at SendCloud."""
        with self._lock:
            user = self._users[api_user]
            user.old_key, user.old_key_until = user.key, self.clock() + 15 * 60
            user.key = secrets.token_urlsafe(24)
            return user.key

    def account(self, api_user: str) -> dict[str, Any]:
        """Balance and quota of the account behind ``api_user`` (for assertions)."""
        with self._lock:
            acc = self._users[api_user].account
            return {
                "balance": acc.balance,
                "available": acc.available,
                "quota": acc.quota,
                "used": acc.used,
                "account_type": acc.account_type,
            }

    def set_account(self, api_user: str, **values: Any) -> None:
        """Change ``balance``, ``available``, ``quota``, ``used`` or ``reputation`` of an account."""
        with self._lock:
            acc = self._users[api_user].account
            for key, value in values.items():
                if key not in {"balance", "available", "quota", "used", "reputation", "account_type"}:
                    raise ValueError(f"unknown account field {key!r}")
                setattr(acc, key, Decimal(value) if key in {"balance", "available"} else value)

    def roll_day(self) -> None:
        """Start a new day: every account's ``todayUsedQuota`` returns to 0."""
        with self._lock:
            for acc in self._accounts:
                acc.used = 0

    def add_template(
        self,
        api_user: str,
        invoke_name: str,
        *,
        subject: str,
        html: str,
        plain: str = "",
        template_type: Literal["batch", "trigger"] = "batch",
        template_stat: int = 1,
        name: str | None = None,
    ) -> None:
        """A template of the account behind ``api_user`` (``template_stat`` 1 = approved)."""
        with self._lock:
            acc = self._users[api_user].account
            acc.templates[invoke_name] = _Template(
                invoke_name=invoke_name,
                name=name or invoke_name,
                subject=subject,
                html=html,
                plain=plain,
                template_type=0 if template_type == "trigger" else 1,
                template_stat=template_stat,
                created=_now_beijing(),
            )

    def review_template(
        self, api_user: str, invoke_name: str, *, approve: bool, note: str | None = None
    ) -> None:
        """Decide a template's review as SendCloud's staff would (1 approved, -1 rejected)."""
        with self._lock:
            tpl = self._users[api_user].account.templates[invoke_name]
            tpl.template_stat = 1 if approve else -1
            tpl.note = None if approve else (note or "内容不符合规范")
            tpl.updated = _now_beijing()

    def template(self, api_user: str, invoke_name: str) -> dict[str, Any] | None:
        """A template of the account behind ``api_user`` as ``template/get`` shows it."""
        with self._lock:
            tpl = self._users[api_user].account.templates.get(invoke_name)
            return self._template_json(tpl, full=True) if tpl else None

    def add_label(self, api_user: str, name: str) -> int:
        with self._lock:
            label_id = next(self._label_ids)
            self._users[api_user].account.labels[label_id] = name
            return label_id

    def add_address_list(
        self, api_user: str, alias: str, members: Mapping[str, Mapping[str, str]] | Iterable[str]
    ) -> None:
        """An address list ``alias`` (``x@maillist.sendcloud.org``) with members and their vars."""
        with self._lock:
            acc = self._users[api_user].account
            if isinstance(members, Mapping):
                acc.address_lists[alias] = {m: dict(v) for m, v in members.items()}
            else:
                acc.address_lists[alias] = {m: {} for m in members}

    def suppress(self, api_user: str, address: str, kind: Literal["bounce", "unsubscribe", "spam"]) -> None:
        """Put ``address`` on a suppression list: later sends to it produce an ``invalid`` event."""
        with self._lock:
            self._users[api_user].account.suppressed[address.lower()] = kind

    def add_domain(self, api_user: str, name: str) -> None:
        """Register a domain without the API's checks (tests that need one quickly)."""
        with self._lock:
            acc = self._users[api_user].account
            acc.domains[name.lower()] = self._new_domain(name.lower())

    def set_domain_verify(self, domain: str, bits: int | None) -> None:
        """Force a domain's ``verify`` value (``None`` = compute it from DNS again)."""
        with self._lock:
            for acc in self._accounts:
                if domain.lower() in acc.domains:
                    acc.domains[domain.lower()].verify_override = bits
                    return
        raise KeyError(domain)

    def domain_records(self, domain: str) -> dict[str, tuple[str, str, str]]:
        """purpose → (type, host, value) of the records generated for ``domain``."""
        with self._lock:
            for acc in self._accounts:
                if domain.lower() in acc.domains:
                    return self._records(acc.domains[domain.lower()])
        raise KeyError(domain)

    def set_webhook_target(
        self, url: str, *, category: str = "all", events: Sequence[str] = tuple(EVENT_CODES)
    ) -> None:
        """Register a webhook URL for every account (no URL test), like ``webhook/add`` would."""
        codes = tuple(EVENT_CODES[e] for e in events)
        with self._lock:
            for acc in self._accounts:
                acc.webhooks = [w for w in acc.webhooks if not (w.url == url and w.category == category)]
                acc.webhooks.append(_Webhook(url, category, codes, _now_beijing()))

    @property
    def outbox(self) -> list[DeliveredMail]:
        """Every mail delivered so far (suppressed recipients excluded), oldest first."""
        with self._lock:
            return [m for m in self._mails if m.status == "delivered"]

    def mails(self) -> list[DeliveredMail]:
        """Every accepted mail, including the ones that ended ``invalid``."""
        with self._lock:
            return list(self._mails)

    def requests(self, endpoint: str | None = None) -> list[RequestRecord]:
        """The request log (newest last), optionally only one endpoint such as ``mail/send``."""
        with self._lock:
            return [r for r in self._requests if endpoint is None or r.endpoint == endpoint]

    def webhook_log(self) -> list[WebhookDelivery]:
        with self._lock:
            return list(self._webhook_log)

    def events(self) -> list[tuple[tuple[str, str], ...]]:
        """Every signed event generated (whether or not a webhook was configured)."""
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        """Forget mail, requests and webhook logs (accounts and domains stay)."""
        with self._lock:
            self._mails.clear()
            self._requests.clear()
            self._webhook_log.clear()
            self._events.clear()

    def emit_event(self, email_id: str, event: str, **fields: str) -> tuple[tuple[str, str], ...]:
        """Generate a signed event for a delivered mail (open, click, unsubscribe, ...) and post it.

        Extra ``fields`` override or add form fields (e.g. ``url=...`` for clicks).  Unsubscribe,
        report_spam and invalid with substat 406 also put the address on a suppression list.
        """
        if event not in EVENT_CODES:
            raise ValueError(f"unknown event {event!r}")
        with self._lock:
            mail = next((m for m in self._mails if m.email_id == email_id), None)
            if mail is None:
                raise KeyError(email_id)
            acc = self._users[mail.api_user].account
            extra: list[tuple[str, str]] = [("emailId", mail.email_id), ("recipient", mail.recipient)]
            if event in {"open", "click", "unsubscribe"}:
                extra += [
                    ("ip", "127.0.0.1"),
                    ("explorerName", "Chrome"),
                    ("explorerVer", "126.0"),
                    ("oSName", "Windows"),
                    ("oSVer", "10"),
                ]
            if event == "click":
                extra.append(("url", fields.pop("url", "https://example.com/")))
            if event == "invalid":
                extra += [
                    ("substat", fields.pop("substat", "406")),
                    ("substatdesc", "address does not exist"),
                ]
            if event == "soft_bounce":
                extra += [("substat", fields.pop("substat", "503")), ("substatdesc", "service unavailable")]
            kind = {"unsubscribe": "unsubscribe", "report_spam": "spam"}.get(event)
            if event == "invalid" and dict(extra).get("substat") == "406":
                kind = "bounce"
            if kind:
                acc.suppressed[mail.recipient.lower()] = kind
        extra = [(k, v) for k, v in extra if k not in fields] + [(k, str(v)) for k, v in fields.items()]
        return self._emit(mail.api_user, event, extra, headers=mail.headers, label=mail.label)

    # ------------------------------------------------------------------ lifecycle

    def start_worker(self) -> None:
        with self._jobs_cv:
            if self._worker is None or not self._worker.is_alive():
                self._stopping.clear()
                self._worker = threading.Thread(target=self._run_jobs, name="sendcloud-sim-jobs", daemon=True)
                self._worker.start()

    def close(self) -> None:
        """Stop the webhook sender and wake requests sleeping in a fault."""
        self._stopping.set()
        with self._jobs_cv:
            self._jobs_cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None
        self._http.close()

    # ------------------------------------------------------------------ internals: state

    def _add_user(
        self, account: _Account, name: str, key: str, email_type: int, domain: str | None
    ) -> _ApiUser:
        user = _ApiUser(name=name, key=key, account=account, email_type=email_type, domain=domain)
        self._users[name] = user
        account.api_users.append(name)
        return user

    def _new_domain(self, name: str) -> _Domain:
        # A real RSA public key, so the DKIM value has the right shape and length.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        now = _now_beijing()
        return _Domain(
            name=name,
            verify_key=secrets.token_hex(16),
            dkim_value=f"k=rsa;p={base64.b64encode(der).decode()}",
            created=now,
            updated=now,
        )

    def _records(self, domain: _Domain) -> dict[str, tuple[str, str, str]]:
        return {
            "ownership": ("TXT", domain.name, f"sendcloud-site-verification={domain.verify_key}"),
            "spf": ("TXT", domain.name, SPF_VALUE),
            "dkim": ("TXT", f"{DKIM_SELECTOR}._domainkey.{domain.name}", domain.dkim_value),
            "mx": ("MX", domain.name, MX_HOST),
            "dmarc": ("TXT", f"_dmarc.{domain.name}", DMARC_VALUE),
        }

    def _lookup(self, name: str, rtype: str) -> list[str]:
        """Values the configured nameserver serves (``[]`` for NXDOMAIN, timeouts, errors)."""
        if not self.dns_nameserver:
            return []
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.dns_nameserver[0]]
        resolver.port = self.dns_nameserver[1]
        resolver.timeout = resolver.lifetime = self.dns_timeout
        try:
            answer = resolver.resolve(name, rtype, raise_on_no_answer=False)
        except dns.exception.DNSException:
            return []
        values = []
        for rdata in answer:
            if rtype == "TXT":
                values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif rtype == "MX":
                values.append(rdata.exchange.to_text().rstrip(".").lower())
            else:
                values.append(rdata.to_text())
        return values

    def _compute_verify(self, domain: _Domain) -> int:
        """The ``verify`` bits, from what DNS serves right now (or the test override)."""
        if domain.verify_override is not None:
            return domain.verify_override
        records = self._records(domain)
        bits = 0
        apex_txt = self._lookup(domain.name, "TXT")
        if records["ownership"][2] in (t.strip() for t in apex_txt):
            bits |= VERIFY_BITS["ownership"]
        spf = [t for t in apex_txt if t.strip().lower().startswith("v=spf1")]
        if len(spf) == 1 and SPF_INCLUDE in spf[0].lower().split():
            bits |= VERIFY_BITS["spf"]
        dkim_expected = re.sub(r"\s+", "", domain.dkim_value)
        dkim_found = self._lookup(records["dkim"][1], "TXT")
        if any(re.sub(r"\s+", "", t) == dkim_expected for t in dkim_found):
            bits |= VERIFY_BITS["dkim"]
        if MX_HOST in self._lookup(domain.name, "MX"):
            bits |= VERIFY_BITS["mx"]
        if any(t.strip().upper().startswith("V=DMARC1") for t in self._lookup(records["dmarc"][1], "TXT")):
            bits |= VERIFY_BITS["dmarc"]
        return bits

    def _domain_json(self, domain: _Domain, verify: int) -> dict[str, Any]:
        records = self._records(domain)
        data: dict[str, Any] = {
            "name": domain.name,
            "type": "普通" if domain.type == 1 else "测试",
            "verify": verify,
            "gmtCreated": domain.created,
            "gmtUpdated": domain.updated,
            "cname.domain": "",
            "cname.value": "",
        }
        keys = {"ownership": "verifyKey", "spf": "spf", "dkim": "dkim", "mx": "mx", "dmarc": "dmarc"}
        for purpose, (_rtype, host, value) in records.items():
            data[f"{keys[purpose]}.domain"] = host
            data[f"{keys[purpose]}.value"] = value
        return data

    # ------------------------------------------------------------------ internals: webhooks

    def _schedule(self, delay: float, job: Callable[[], None]) -> None:
        self.start_worker()
        with self._jobs_cv:
            heapq.heappush(self._jobs, (time.monotonic() + max(delay, 0.0), next(self._seq), job))
            self._jobs_cv.notify()

    def _run_jobs(self) -> None:
        while not self._stopping.is_set():
            with self._jobs_cv:
                while not self._stopping.is_set():
                    if self._jobs and self._jobs[0][0] <= time.monotonic():
                        _, _, job = heapq.heappop(self._jobs)
                        break
                    timeout = self._jobs[0][0] - time.monotonic() if self._jobs else None
                    self._jobs_cv.wait(timeout)
                else:
                    return
            try:
                job()
            except Exception:  # noqa: S112 - a failing job must not stop the sender
                continue

    def _emit(
        self,
        api_user: str,
        event: str,
        extra: Sequence[tuple[str, str]],
        *,
        headers: Mapping[str, str] | None = None,
        label: str | None = None,
        task_id: int | None = None,
    ) -> tuple[tuple[str, str], ...]:
        """Sign one event and queue it for every matching webhook; returns its form fields."""
        token = "".join(secrets.choice(_ALNUM) for _ in range(50))
        timestamp = str(int(self.clock() * 1000))
        signature = hmac.new(
            self.webhook_app_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256
        ).hexdigest()
        custom = {k: v for k, v in (headers or {}).items() if k.lower().startswith("sc-custom-")}
        messages = {
            "request": "request accepted",
            "deliver": "250 2.0.0 OK",
            "invalid": "invalid",
            "soft_bounce": "soft bounce",
        }
        fields: list[tuple[str, str]] = [
            ("event", event),
            ("message", messages.get(event, event)),
            ("apiUser", api_user),
            ("category", api_user),
            ("labelId", ""),
            ("labelName", label or ""),
            ("maillistTaskId", str(task_id) if task_id else ""),
            ("mail_list_task_id", str(task_id) if task_id else ""),
            ("timestamp", timestamp),
            ("token", token),
            ("signature", signature),
        ]
        if custom:
            fields.append(("userHeaders", json.dumps(custom, ensure_ascii=False)))
        fields.extend(extra)
        frozen = tuple(fields)
        code = EVENT_CODES[event]
        with self._lock:
            self._events.append(frozen)
            hooks = [
                w
                for w in self._users[api_user].account.webhooks
                if code in w.events and w.category in {"all", api_user}
            ]
            deliveries = [WebhookDelivery(event=event, url=w.url, fields=frozen) for w in hooks]
            self._webhook_log.extend(deliveries)
        for delivery in deliveries:
            self._schedule(0, lambda d=delivery: self._post(d, 0))
        return frozen

    def _post(self, delivery: WebhookDelivery, attempt: int) -> None:
        """POST one event; on non-200 or timeout retry after the (scaled) next delay."""
        try:
            response = self._http.post(delivery.url, data=list(delivery.fields), timeout=self.webhook_timeout)
            outcome = f"HTTP {response.status_code}"
            ok = response.status_code == 200
        except requests.RequestException as exc:
            outcome, ok = type(exc).__name__, False
        with self._lock:
            delivery.attempts.append(outcome)
            if ok:
                delivery.delivered = True
                return
            if attempt >= len(self.webhook_retry_delays):
                delivery.given_up = True
                return
        delay = self.webhook_retry_delays[attempt] * self.webhook_time_scale
        self._schedule(delay, lambda: self._post(delivery, attempt + 1))

    def _after_accept(
        self, api_user: str, message_id: str, mails: list[DeliveredMail], task_id: int | None
    ) -> None:
        """Emit ``request`` now, then ``deliver``/``invalid`` per recipient after ``deliver_delay``."""
        if not mails:
            return
        headers, label = mails[0].headers, mails[0].label
        extra = [("messageId", message_id), ("recipientSize", str(len(mails)))]
        extra += [("recipientArray", m.recipient) for m in mails]
        extra += [("emailIds", m.email_id) for m in mails]
        self._emit(api_user, "request", extra, headers=headers, label=label, task_id=task_id)

        def deliver() -> None:
            for mail in mails:
                base = [("emailId", mail.email_id), ("recipient", mail.recipient)]
                if mail.status == "delivered":
                    self._emit(
                        api_user, "deliver", [*base, ("outIp", "127.0.0.1")], headers=headers, label=label
                    )
                else:
                    kind = mail.status.partition(":")[2]
                    substat, desc = {"unsubscribe": ("402", "address in unsubscribe list")}.get(
                        kind, ("401", "address in blacklist")
                    )
                    self._emit(
                        api_user,
                        "invalid",
                        [*base, ("outIp", "127.0.0.1"), ("substat", substat), ("substatdesc", desc)],
                        headers=headers,
                        label=label,
                    )

        self._schedule(self.deliver_delay, deliver)

    # ------------------------------------------------------------------ internals: HTTP

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

        def api(module: str, action: str) -> Response:
            return self._dispatch(f"{module}/{action}")

        app.add_url_rule("/apiv2/<module>/<action>", "apiv2", api, methods=["GET", "POST"])
        app.add_url_rule("/api/<module>/<action>", "api_sgp", api, methods=["GET", "POST"])
        app.add_url_rule("/_sandbox/", "page", self._page)
        app.add_url_rule("/_sandbox/outbox", "outbox", self._outbox_json)
        app.add_url_rule("/_sandbox/requests", "requests", self._requests_json)
        app.add_url_rule("/_sandbox/webhooks", "webhooks", self._webhooks_json)
        app.add_url_rule("/_sandbox/faults", "faults", self._faults_view, methods=["GET", "POST"])
        app.add_url_rule("/_sandbox/emit", "emit", self._emit_view, methods=["POST"])
        return app

    _HANDLERS: ClassVar[dict[str, str]] = {
        "mail/send": "_h_mail_send",
        "mail/sendtemplate": "_h_mail_sendtemplate",
        "mail/taskinfo": "_h_taskinfo",
        "userinfo/get": "_h_userinfo",
        "domain/list": "_h_domain_list",
        "domain/add": "_h_domain_add",
        "domain/update": "_h_domain_update",
        "apiuser/list": "_h_apiuser_list",
        "apiuser/add": "_h_apiuser_add",
        "webhook/list": "_h_webhook_list",
        "webhook/add": "_h_webhook_add",
        "webhook/delete": "_h_webhook_delete",
        "template/list": "_h_template_list",
        "template/get": "_h_template_get",
        "template/add": "_h_template_add",
        "template/update": "_h_template_update",
        "template/submit": "_h_template_submit",
        "template/delete": "_h_template_delete",
    }

    def _dispatch(self, endpoint: str) -> Response:
        faults = self.faults
        if faults.latency:
            self._stopping.wait(faults.latency)
        params: MultiDict[str, str] = MultiDict()
        for source in (request.args, request.form):
            for key, value in source.items(multi=True):
                params.add(key, value)
        api_user = params.get("apiUser")
        logged = {k: tuple(params.getlist(k)) for k in params if k != "apiKey"}
        for key in request.files:
            logged[key] = tuple(f"<file {f.filename}>" for f in request.files.getlist(key))

        def record(http_status: int, code: int | None, result: bool | None) -> None:
            with self._lock:
                self._requests.append(
                    RequestRecord(
                        self.clock(), request.method, endpoint, api_user, logged, http_status, code, result
                    )
                )

        with self._lock:
            fail = (
                faults.fail_next > 0
                or (faults.error_rate > 0 and self._random.random() < faults.error_rate)
                or endpoint in {name.strip() for name in faults.fail_endpoints.split(",") if name.strip()}
            )
            if faults.fail_next > 0:
                faults.fail_next -= 1
        if fail:
            record(500, None, None)
            return Response("Internal Server Error (sandbox fault)", status=500, mimetype="text/plain")
        handler_name = self._HANDLERS.get(endpoint)
        if handler_name is None:
            record(404, 404, False)
            return self._envelope(False, 404, "Not Found", {}, http_status=404)
        if endpoint in SEND_ENDPOINTS and request.method != "POST":
            record(405, 405, False)
            return self._envelope(False, 405, MESSAGES[405], {}, http_status=405)
        g.sleep_after = 0.0
        try:
            user = self._authenticate(params)
            info, code = getattr(self, handler_name)(user, params)
        except SimError as exc:
            record(200, exc.code, False)
            return self._envelope(False, exc.code, exc.message, {})
        record(200, code, True)
        if g.sleep_after:
            self._stopping.wait(g.sleep_after)
        return self._envelope(True, code, MESSAGES[code], info)

    @staticmethod
    def _envelope(result: bool, code: int, message: str, info: Any, *, http_status: int = 200) -> Response:
        body = json.dumps(
            {"result": result, "statusCode": code, "message": message, "info": info}, ensure_ascii=False
        )
        return Response(body, status=http_status, mimetype="application/json")

    def _authenticate(self, params: MultiDict[str, str]) -> _ApiUser:
        name, key = params.get("apiUser", ""), params.get("apiKey", "")
        with self._lock:
            user = self._users.get(name)
            if user is None or not key:
                raise SimError(40005)
            if hmac.compare_digest(user.key.encode(), key.encode()):
                return user
            if (
                user.old_key
                and self.clock() < user.old_key_until
                and hmac.compare_digest(user.old_key.encode(), key.encode())
            ):
                return user
        raise SimError(40005)

    # ------------------------------------------------------------------ handlers: mail

    def _h_mail_send(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        return self._send(user, p, template=None)

    def _h_mail_sendtemplate(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        invoke = p.get("templateInvokeName", "").strip()
        if not invoke:
            raise SimError(40201)
        with self._lock:
            tpl = user.account.templates.get(invoke)
        if tpl is None:
            raise SimError(40823)
        if tpl.template_stat != 1:
            raise SimError(40824)
        if tpl.template_type != user.email_type:
            raise SimError(40825)
        return self._send(user, p, template=tpl)

    def _send(self, user: _ApiUser, p: MultiDict[str, str], *, template: _Template | None) -> tuple[Any, int]:
        """Validate in the documented order, then charge, record and answer (reference §18.2)."""
        from_raw = p.get("from", "").strip()
        if not from_raw:
            raise SimError(40801)
        if len(from_raw) > 128:
            raise SimError(40257)
        match = _FROM_WITH_NAME.fullmatch(from_raw)
        from_name, from_addr = (match.group(1).strip('"'), match.group(2)) if match else ("", from_raw)
        if not _valid_email(from_addr):
            raise SimError(40802)
        from_name = p.get("fromName", "").strip() or from_name
        subject = p.get("subject", "").strip()
        if template is not None:
            subject = subject or template.subject
            if not subject:
                raise SimError(40826)
            html, plain = template.html, template.plain
        else:
            if not subject:
                raise SimError(40808)
            html, plain = p.get("html", ""), p.get("plain", "")
            if not html.strip() and not plain.strip():
                raise SimError(40870)
        use_list = self._bool(p, "useAddressList", False, 40874)
        raw_x = p.get("xsmtpapi", "")
        xsmtpapi = self._parse_xsmtpapi(raw_x) if raw_x.strip() and not use_list else None
        aliases: list[str] = []
        to_list: list[str] = []
        extra: list[str] = []
        if use_list:
            aliases = _split(p.get("to"))
            if not aliases:
                raise SimError(40805)
            if len(aliases) > 5:
                raise SimError(40864)
            if any(not _valid_email(a) for a in aliases):
                raise SimError(40862)
        elif xsmtpapi is not None:
            to_list = xsmtpapi["to"]
        elif template is not None:
            raise SimError(40812)
        else:
            to_list = _split(p.get("to"))
            if not to_list:
                raise SimError(40805)
            if any(not _valid_email(a) for a in to_list):
                raise SimError(40806)
            if len(to_list) > MAX_RECIPIENTS:
                raise SimError(40807)
            for field, bad, many in (("cc", 40853, 40854), ("bcc", 40856, 40857)):
                values = _split(p.get(field))
                if any(not _valid_email(a) for a in values):
                    raise SimError(bad)
                if len(values) > MAX_RECIPIENTS:
                    raise SimError(many)
                extra.extend(values)
        reply_to = _split(p.get("replyTo"))
        if len(reply_to) > 3:
            raise SimError(40879)
        for address in reply_to:
            m = _FROM_WITH_NAME.fullmatch(address)
            if not _valid_email(m.group(2) if m else address):
                raise SimError(40811)
        headers = self._parse_headers(p.get("headers"))
        summary = p.get("contentSummary", "")
        if len(summary.encode()) > self.content_summary_limit:
            raise SimError(40878)
        label = self._label(user, p)
        self._check_files(p)
        resp_email_id = self._bool(p, "respEmailId", True, 40859)
        request_id = p.get("sendRequestId", "") or None
        if request_id and len(request_id) > 128:
            raise SimError(40901, ": sendRequestId最大128个字符")
        if self.faults.throttle:
            raise SimError(50001)
        if template is None and self.faults.template_mismatch:
            raise SimError(40908)

        # Build the per-recipient content before taking the lock (pure work).
        content = _Content.of(subject, html, plain, headers)
        outgoing: list[_Outgoing] = []
        task_ids: list[int] = []
        if use_list:
            if user.email_type != 1 or user.account.account_type == "免费用户":
                raise SimError(40820)
            with self._lock:
                lists = dict(user.account.address_lists)
            for alias in aliases:
                if alias not in lists:
                    raise SimError(40863, f". 参数to: {alias}")
            for alias in aliases:
                task_id = next(self._task_ids)
                task_ids.append(task_id)
                for member, member_vars in lists[alias].items():
                    values = {f"%{k}%": str(v) for k, v in member_vars.items()}
                    values.setdefault("%recipient%", member)
                    outgoing.append(self._render(member, content, values, task_id))
        else:
            assert xsmtpapi is not None or to_list
            subs = (xsmtpapi or {}).get("sub") or {}
            section = (xsmtpapi or {}).get("section") or {}
            pubsub = (xsmtpapi or {}).get("pubsub") or {}
            for index, address in enumerate(to_list):
                values = {k: str(v) for k, v in pubsub.items()}
                for key, column in subs.items():
                    value = str(column[index])
                    values[key] = str(section.get(value, section.get(value.strip("%"), value)))
                outgoing.append(self._render(address, content, values, None))
            outgoing += [self._render(a, content, {}, None) for a in extra]

        with self._lock:
            now = self.clock()
            for rid, at in list(user.request_ids.items()):
                if now - at > IDEMPOTENCY_WINDOW:
                    del user.request_ids[rid]
            if request_id and request_id in user.request_ids:
                raise SimError(40000)
            acc = user.account
            count = len(outgoing)
            if self.faults.quota_exhausted or acc.used + count > acc.quota:
                raise SimError(40904)
            cost = self.price_per_mail * count
            if acc.available < cost:
                raise SimError(40904, ": 余额不足")
            acc.used += count
            acc.available -= cost
            acc.balance -= cost
            if request_id:
                user.request_ids[request_id] = now
            message_id = (
                f"{int(now * 1000)}_{self._random.randint(1000, 99999)}_{self._random.randint(1000, 99999)}"
                f"_{next(self._seq)}.sc-10_0_0_1-inbound"
            )
            accepted_at = dt.datetime.now(dt.UTC)
            mails = []
            for index, item in enumerate(outgoing):
                kind = acc.suppressed.get(item.recipient.lower())
                mails.append(
                    DeliveredMail(
                        recipient=item.recipient,
                        subject=item.subject,
                        html=item.html,
                        text=item.text,
                        from_address=from_addr,
                        from_name=from_name,
                        api_user=user.name,
                        send_request_id=request_id,
                        email_id=f"{message_id}{index}${item.recipient}",
                        message_id=message_id,
                        headers=item.headers if item.headers is not None else headers,
                        reply_to=tuple(reply_to),
                        accepted_at=accepted_at,
                        status=f"invalid:{kind}" if kind else "delivered",
                        template=template.invoke_name if template else None,
                        label=label,
                    )
                )
            self._mails.extend(mails)
            for task_id, alias in zip(task_ids, aliases, strict=True):
                self._tasks[task_id] = {
                    "maillistTaskId": task_id,
                    "apiUser": user.name,
                    "addressList": alias,
                    "memberCount": sum(1 for m in outgoing if m.task_id == task_id),
                    "gmtCreated": _now_beijing(),
                    "gmtUpdated": _now_beijing(),
                    "status": "请求完毕",
                }
        self._after_accept(user.name, message_id, mails, task_ids[0] if task_ids else None)
        g.sleep_after = self.faults.timeout_after_accept
        if use_list:
            return {"maillistTaskId": task_ids}, 40821
        return ({"emailIdList": [m.email_id for m in mails]} if resp_email_id else {}), 200

    @staticmethod
    def _render(
        address: str,
        content: _Content,
        values: Mapping[str, str],
        task_id: int | None,
    ) -> _Outgoing:
        """One recipient's content; ``%var%`` in header values is substituted too.

        SendCloud documents substitution for subject and body; the simulator also fills header
        values so a per-recipient ``List-Unsubscribe`` (one request, a token per recipient) can be
        checked end to end.  Whether the real service does this is unverified (reference §3.1).
        """
        own = None
        if content.headers is not None:
            own = {name: _fill(parts, values) for name, parts in content.headers.items()}
        return _Outgoing(
            address,
            _fill(content.subject, values),
            _fill(content.html, values),
            _fill(content.plain, values),
            task_id,
            own,
        )

    @staticmethod
    def _bool(p: MultiDict[str, str], name: str, default: bool, code: int) -> bool:
        value = p.get(name)
        if value is None or value == "":
            return default
        lowered = value.strip().lower()
        if lowered not in {"true", "false"}:
            raise SimError(code)
        return lowered == "true"

    @staticmethod
    def _parse_xsmtpapi(raw: str) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            raise SimError(40813) from None
        if not isinstance(data, dict):
            raise SimError(40817)
        if "to" not in data:
            raise SimError(40815)
        to = data["to"]
        if not isinstance(to, list) or not to:
            raise SimError(40816)
        if len(to) > MAX_RECIPIENTS:
            raise SimError(40827)
        if any(not isinstance(a, str) or not _valid_email(a.strip()) for a in to):
            raise SimError(40880)
        data["to"] = [a.strip() for a in to]
        sub = data.get("sub", {})
        if not isinstance(sub, dict):
            raise SimError(40817)
        for column in sub.values():
            # Documented choice: a sub array must have one value per recipient.
            if not isinstance(column, list) or len(column) != len(to):
                raise SimError(40817)
        for key in ("section", "pubsub"):
            if not isinstance(data.get(key, {}), dict):
                raise SimError(40817)
        return data

    @staticmethod
    def _parse_headers(raw: str | None) -> dict[str, str]:
        if raw is None or not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise SimError(40869) from None
        if not isinstance(data, dict):
            raise SimError(40869)
        return {str(k): str(v) for k, v in data.items()}

    def _label(self, user: _ApiUser, p: MultiDict[str, str]) -> str | None:
        label_id, label_name = p.get("labelId", "").strip(), p.get("labelName", "").strip()
        with self._lock:
            labels = user.account.labels
            if label_id:
                if not label_id.isdigit() or int(label_id) not in labels:
                    raise SimError(40106)
                return labels[int(label_id)]
            if label_name:
                if label_name not in labels.values():
                    labels[next(self._label_ids)] = label_name
                return label_name
        return None

    def _check_files(self, p: MultiDict[str, str]) -> None:
        total = 0
        for upload in request.files.getlist("attachments"):
            upload.stream.seek(0, 2)
            total += upload.stream.tell()
            upload.stream.seek(0)
        if total > self.attachment_limit:
            raise SimError(40819)
        cids = _split(p.get("embeddedCid"))
        images = request.files.getlist("embeddedImage")
        if len(cids) != len(images):
            raise SimError(40875)

    def _h_taskinfo(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        raw = p.get("maillistTaskId", "")
        with self._lock:
            task = self._tasks.get(int(raw)) if raw.isdigit() else None
        if task is None or task["apiUser"] not in user.account.api_users:
            raise SimError(40901, ": maillistTaskId不存在")
        return {"data": dict(task)}, 200

    # ------------------------------------------------------------------ handlers: account

    def _h_userinfo(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        acc = user.account
        with self._lock:
            return {
                "avaliableBalance": float(acc.available),
                "balance": float(acc.balance),
                "email": acc.email,
                "phone": acc.phone,
                "quota": acc.quota,
                "todayUsedQuota": acc.used,
                "regTime": acc.reg_time,
                "reputation": acc.reputation,
                "userName": acc.user_name,
                "accountType": acc.account_type,
                "websiteAuthStatus": True,
                "businessAuthStatus": acc.account_type != "免费用户",
            }, 200

    # ------------------------------------------------------------------ handlers: domains

    def _h_domain_list(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        names = {n.lower() for n in _split(p.get("name"))}
        type_filter = p.get("type", "").strip()
        verify_filter = p.get("verify", "").strip()
        with self._lock:
            domains = list(user.account.domains.values())
        result = []
        for domain in domains:
            if names and domain.name not in names:
                continue
            if type_filter and type_filter != str(domain.type):
                continue
            verify = self._compute_verify(domain)  # DNS queries happen outside the lock
            if verify_filter and not self._verify_matches(verify, verify_filter):
                continue
            result.append(self._domain_json(domain, verify))
        return {"dataList": result, "count": len(result)}, 200

    @staticmethod
    def _verify_matches(verify: int, spec: str) -> bool:
        op, number = (spec[0], spec[1:]) if spec[:1] in {">", "<"} else ("=", spec)
        if not number.isdigit():
            raise SimError(40901, ": verify参数错误")
        n = int(number)
        return verify >= n if op == ">" else verify <= n if op == "<" else verify == n

    def _validate_domain_name(self, name: str, codes: tuple[int, int, int]) -> str:
        empty, length, rule = codes
        if not name:
            raise SimError(empty)
        if ";" in name:
            raise SimError(41013)
        if len(name) > 250:
            raise SimError(length)
        lowered = name.lower()
        if not _DOMAIN.fullmatch(lowered) or "sendcloud" in lowered or "ifaxin" in lowered:
            raise SimError(rule)
        return lowered

    def _h_domain_add(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        name = self._validate_domain_name(p.get("name", "").strip(), (41001, 41002, 41003))
        with self._lock:
            domains = user.account.domains
            if name in domains:
                raise SimError(41015, ", 域名已存在")
            if len(domains) >= 5:
                raise SimError(41012)
        domain = self._new_domain(name)
        with self._lock:
            if name in user.account.domains:
                raise SimError(41015, ", 域名已存在")
            user.account.domains[name] = domain
        if self.on_domain_added is not None:
            self.on_domain_added(name, self._records(domain))
        return {"data": self._domain_json(domain, 0)}, 200

    def _h_domain_update(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        name = p.get("name", "").strip().lower()
        new_name = self._validate_domain_name(p.get("newName", "").strip(), (41004, 41005, 41006))
        with self._lock:
            domain = user.account.domains.get(name)
        if domain is None:
            raise SimError(41014)
        if self._compute_verify(domain) != 0:
            raise SimError(41016, ", 域名已有验证通过的记录")
        with self._lock:
            if new_name in user.account.domains:
                raise SimError(41016, ", 域名已存在")
            del user.account.domains[name]
            domain.name, domain.updated = new_name, _now_beijing()
            user.account.domains[new_name] = domain
        return {"data": self._domain_json(domain, 0)}, 200

    # ------------------------------------------------------------------ handlers: API_USERs

    @staticmethod
    def _apiuser_json(user: _ApiUser) -> dict[str, Any]:
        return {
            "name": user.name,
            "cType": "非测试" if user.ctype == 1 else "测试",
            "emailType": "触发" if user.email_type == 0 else "批量",
            "domainName": user.domain or "",
            "neteaseSender": "",
            "click": user.click,
            "open": user.open,
            "unsubscribe": user.unsubscribe,
        }

    def _h_apiuser_list(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        email_type, ctype = p.get("emailType", "").strip(), p.get("cType", "").strip()
        domain = p.get("domainName", "").strip().lower()
        with self._lock:
            users = [self._users[n] for n in user.account.api_users]
            result = [
                self._apiuser_json(u)
                for u in users
                if (not email_type or email_type == str(u.email_type))
                and (not ctype or ctype == str(u.ctype))
                and (not domain or (u.domain or "").lower() == domain)
            ]
        return {"dataList": result, "count": len(result)}, 200

    def _h_apiuser_add(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        name = p.get("name", "").strip()
        if not name:
            raise SimError(41110)
        if not _APIUSER_NAME.fullmatch(name):
            raise SimError(41111)
        email_type = p.get("emailType", "").strip()
        if not email_type:
            raise SimError(41101)
        if email_type not in {"0", "1"}:
            raise SimError(41102)
        domain = p.get("domainName", "").strip().lower()
        if not domain:
            raise SimError(41105)
        with self._lock:
            acc = user.account
            if domain not in acc.domains:
                raise SimError(41108)
            if len(acc.api_users) >= 10:
                raise SimError(41112)
            if name in self._users:
                raise SimError(41119, ", API_USER已存在")
            key = secrets.token_urlsafe(24)
            new = self._add_user(acc, name, key, int(email_type), domain)
            data = self._apiuser_json(new)
            data.pop("domainName")
            data.update({"nameKey": key, "domain": domain})
        return {"data": data, "total": 1}, 200

    # ------------------------------------------------------------------ handlers: templates

    @staticmethod
    def _template_json(tpl: _Template, *, full: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": tpl.name,
            "invokeName": tpl.invoke_name,
            "templateType": tpl.template_type,
            "templateStat": tpl.template_stat,
            "gmtCreated": tpl.created,
            "gmtUpdated": tpl.updated,
        }
        if full:
            data.update({"html": tpl.html, "subject": tpl.subject, "text": tpl.plain, "contentSummary": ""})
            if tpl.template_stat == -1 and tpl.note:
                data["auditReason"] = tpl.note
        return data

    def _template_of(self, user: _ApiUser, p: MultiDict[str, str]) -> _Template:
        invoke = p.get("invokeName", "").strip()
        if not invoke:
            raise SimError(40201)
        tpl = user.account.templates.get(invoke)
        if tpl is None:
            raise SimError(40216)
        return tpl

    @staticmethod
    def _flag(p: MultiDict[str, str], name: str, default: int, code: int) -> int:
        raw = p.get(name, "").strip()
        if not raw:
            return default
        if raw not in {"0", "1"}:
            raise SimError(code)
        return int(raw)

    def _after_submit(self, tpl: _Template) -> None:
        if tpl.template_stat == 0 and self.template_auto_review is not None:
            tpl.template_stat = 1 if self.template_auto_review == "approve" else -1
            tpl.note = None if tpl.template_stat == 1 else "内容不符合规范"

    def _h_template_list(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        invoke = p.get("invokeName", "").strip()
        ttype = p.get("templateType", "").strip()
        if ttype and ttype not in {"0", "1"}:
            raise SimError(40204)
        start = p.get("start", "0").strip() or "0"
        limit = p.get("limit", "100").strip() or "100"
        if not start.isdigit():
            raise SimError(40002)
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise SimError(40004)
        with self._lock:
            items = [
                self._template_json(t)
                for t in user.account.templates.values()
                if (not invoke or t.invoke_name == invoke) and (not ttype or t.template_type == int(ttype))
            ]
        page = items[int(start) : int(start) + int(limit)]
        return {"dataList": page, "total": len(items), "count": len(page)}, 200

    def _h_template_get(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        with self._lock:
            return {"data": self._template_json(self._template_of(user, p), full=True)}, 200

    def _h_template_add(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        invoke = p.get("invokeName", "").strip()
        if not invoke:
            raise SimError(40201)
        if not _INVOKE_NAME.fullmatch(invoke):
            raise SimError(40202)
        for field, code in (("name", 40207), ("subject", 40209), ("html", 40211)):
            if not p.get(field, "").strip():
                raise SimError(code)
        ttype = p.get("templateType", "").strip()
        if not ttype:
            raise SimError(40203)
        if ttype not in {"0", "1"}:
            raise SimError(40204)
        submit = self._flag(p, "isSubmitAudit", 0, 40222)
        with self._lock:
            templates = user.account.templates
            if invoke in templates:
                raise SimError(40220)
            if len(templates) >= self.max_templates:
                raise SimError(40219)
            tpl = _Template(
                invoke_name=invoke,
                name=p["name"].strip(),
                subject=p["subject"],
                html=p["html"],
                plain=p.get("text", ""),
                template_type=int(ttype),
                template_stat=0 if submit else -2,
                created=_now_beijing(),
            )
            self._after_submit(tpl)
            templates[invoke] = tpl
            return {"data": self._template_json(tpl)}, 200

    def _h_template_update(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        ttype = p.get("templateType", "").strip()
        if ttype and ttype not in {"0", "1"}:
            raise SimError(40204)
        submit = self._flag(p, "isSubmitAudit", 1, 40222)
        with self._lock:
            tpl = self._template_of(user, p)
            if tpl.template_stat == 0:
                raise SimError(40223)
            pairs = (("name", "name"), ("subject", "subject"), ("html", "html"), ("text", "plain"))
            for field, attr in pairs:
                if p.get(field, "").strip():
                    setattr(tpl, attr, p[field] if field != "name" else p[field].strip())
            if ttype:
                tpl.template_type = int(ttype)
            tpl.template_stat = 0 if submit else -2
            tpl.note = None
            tpl.updated = _now_beijing()
            self._after_submit(tpl)
        return {"count": 1}, 200

    def _h_template_submit(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        cancel = self._flag(p, "cancel", 0, 40225)
        with self._lock:
            tpl = self._template_of(user, p)
            stat = tpl.template_stat
            if cancel:
                if stat == -1:
                    raise SimError(40228)
                if stat == -2:
                    raise SimError(40229)
                if stat == 1:
                    raise SimError(40227)
                tpl.template_stat = -2
            else:
                if stat == 0:
                    raise SimError(40226)
                if stat == 1:
                    raise SimError(40227)
                tpl.template_stat = 0
                tpl.note = None
                self._after_submit(tpl)
            tpl.updated = _now_beijing()
        return {}, 200

    def _h_template_delete(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        with self._lock:
            tpl = self._template_of(user, p)
            del user.account.templates[tpl.invoke_name]
        return {"count": 1}, 200

    # ------------------------------------------------------------------ handlers: webhooks

    def _h_webhook_list(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        url, category = p.get("url", "").strip(), p.get("categoryName", "").strip()
        with self._lock:
            hooks = [
                {
                    "url": w.url,
                    "categoryName": w.category,
                    "event": ",".join(str(c) for c in w.events),
                    "gmtCreated": w.created,
                }
                for w in user.account.webhooks
                if (not url or w.url == url) and (not category or w.category == category)
            ]
        return {"dataList": hooks, "count": len(hooks)}, 200

    def _h_webhook_add(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        url = p.get("url", "").strip()
        if not url:
            raise SimError(40705)
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise SimError(40706)
        category = p.get("categoryName", "").strip()
        if not category:
            raise SimError(51007)
        raw_events = p.get("event", "").strip()
        if not raw_events:
            raise SimError(40703)
        try:
            codes = tuple(int(c) for c in raw_events.split(","))
        except ValueError:
            raise SimError(40704) from None
        if not codes or any(c not in EVENT_CODES.values() for c in codes):
            raise SimError(40704)
        with self._lock:
            if any(w.url == url and w.category == category for w in user.account.webhooks):
                raise SimError(40708)
        if self.check_webhook_urls and not self._url_answers(url):
            raise SimError(40707)
        hook = _Webhook(url, category, codes, _now_beijing())
        with self._lock:
            user.account.webhooks.append(hook)
        return {"data": {"url": url, "categoryName": category, "event": raw_events}}, 200

    def _h_webhook_delete(self, user: _ApiUser, p: MultiDict[str, str]) -> tuple[Any, int]:
        url, category = p.get("url", "").strip(), p.get("categoryName", "").strip()
        with self._lock:
            before = len(user.account.webhooks)
            user.account.webhooks = [
                w
                for w in user.account.webhooks
                if not (w.url == url and (not category or w.category == category))
            ]
            count = before - len(user.account.webhooks)
        return {"count": count}, 200

    def _url_answers(self, url: str) -> bool:
        """SendCloud's URL check: GET and POST (without event fields) must both answer 200."""
        try:
            return all(
                self._http.request(method, url, timeout=self.webhook_timeout).status_code == 200
                for method in ("GET", "POST")
            )
        except requests.RequestException:
            return False

    # ------------------------------------------------------------------ sandbox pages

    def _outbox_json(self) -> Response:
        return jsonify([m.as_json() for m in self.mails()])

    def _requests_json(self) -> Response:
        return jsonify([r.as_json() for r in self.requests()])

    def _webhooks_json(self) -> Response:
        return jsonify([d.as_json() for d in self.webhook_log()])

    def _faults_view(self) -> Response:
        if request.method == "POST":
            data = request.get_json(silent=True)
            if not isinstance(data, dict):
                return Response('{"error": "send a JSON object"}', status=400, mimetype="application/json")
            try:
                with self._lock:
                    self.faults.update(data)
            except ValueError as exc:
                return Response(json.dumps({"error": str(exc)}), status=400, mimetype="application/json")
        return jsonify(self.faults.as_dict())

    def _emit_view(self) -> Response:
        data = request.get_json(silent=True) or {}
        try:
            fields = self.emit_event(
                str(data.get("email_id", "")),
                str(data.get("event", "")),
                **{str(k): str(v) for k, v in (data.get("fields") or {}).items()},
            )
        except (KeyError, ValueError) as exc:
            return Response(json.dumps({"error": str(exc)}), status=400, mimetype="application/json")
        return jsonify(dict(fields))

    def _page(self) -> str:
        return render_template_string(
            _PAGE,
            mails=list(reversed(self.mails())),
            deliveries=list(reversed(self.webhook_log()))[:50],
            faults=self.faults.as_dict(),
        )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SendCloud sandbox outbox</title>
<style>
 body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:2rem;color:#1f2937}
 table{border-collapse:collapse;width:100%;margin-bottom:2rem} th,td{border-bottom:1px solid #e5e7eb;
 padding:.4rem .6rem;text-align:left;vertical-align:top;font-size:.9rem} th{background:#f9fafb}
 .bad{color:#b91c1c} .ok{color:#047857} iframe{width:100%;height:320px;border:1px solid #e5e7eb}
 code{font-size:.8rem}
</style></head><body>
<h1>SendCloud sandbox — outbox</h1>
<p>Mail accepted by the simulator, newest first. Nothing here left this machine.
 JSON: <a href="outbox">outbox</a>, <a href="requests">requests</a>, <a href="webhooks">webhooks</a>,
 <a href="faults">faults</a>.</p>
{% if not mails %}<p><em>No mail yet. Send a campaign or a test mail through the sandbox account.</em></p>
{% else %}
<table><thead><tr><th>Accepted</th><th>To</th><th>From</th><th>Subject</th><th>API_USER</th><th>Status</th>
<th>Content</th></tr></thead><tbody>
{% for m in mails %}<tr>
 <td>{{ m.accepted_at.strftime('%Y-%m-%d %H:%M:%S') }} UTC</td><td>{{ m.recipient }}</td>
 <td>{{ m.from_name }} &lt;{{ m.from_address }}&gt;</td><td>{{ m.subject }}</td><td>{{ m.api_user }}</td>
 <td class="{{ 'ok' if m.status == 'delivered' else 'bad' }}">{{ m.status }}</td>
 <td><details><summary><code>{{ m.email_id }}</code></summary>
 {% if m.html %}<iframe sandbox="" srcdoc="{{ m.html }}"></iframe>{% endif %}
 {% if m.text %}<pre>{{ m.text }}</pre>{% endif %}</details></td>
</tr>{% endfor %}</tbody></table>{% endif %}
<h2>Webhook deliveries</h2>
{% if not deliveries %}<p><em>No webhook posts yet (register one with webhook/add).</em></p>{% else %}
<table><thead><tr><th>Event</th><th>URL</th><th>Attempts</th><th>Result</th></tr></thead><tbody>
{% for d in deliveries %}<tr><td>{{ d.event }}</td><td>{{ d.url }}</td><td>{{ d.attempts|join(', ') }}</td>
<td>{{ 'delivered' if d.delivered else ('given up' if d.given_up else 'pending') }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
<h2>Faults</h2><pre>{{ faults|tojson(indent=2) }}</pre>
</body></html>
"""


class _QuietHandler(WSGIRequestHandler):
    """No access log lines (tests and embedding apps do not want one per API call)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class SimulatorServer:
    """Runs a ``SendCloudSimulator`` on ``127.0.0.1:<free port>`` in a thread (context manager)."""

    def __init__(
        self,
        simulator: SendCloudSimulator | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = True,
    ) -> None:
        self.simulator = simulator or SendCloudSimulator()
        self.host = host
        self.port = port
        self.quiet = quiet
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL to give the client (CN style ``.../apiv2``)."""
        return f"{self.root}/apiv2"

    def start(self) -> SimulatorServer:
        self._server = make_server(
            self.host,
            self.port,
            self.simulator.app,
            threaded=True,
            request_handler=_QuietHandler if self.quiet else None,
        )
        self.port = self._server.server_port
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="sendcloud-sim", daemon=True
        )
        self._thread.start()
        self.simulator.start_worker()
        return self

    def stop(self) -> None:
        self.simulator.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "MESSAGES",
    "DeliveredMail",
    "Faults",
    "RequestRecord",
    "SendCloudSimulator",
    "SimulatorServer",
    "WebhookDelivery",
]
