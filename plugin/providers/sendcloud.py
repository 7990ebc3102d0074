"""SendCloud (搜狐 SendCloud, API "apiv2") client, provider and webhook verification.

Wire facts this module relies on (see the SendCloud reference, §1, §4, §13.4, §14):

* Every call is a form-encoded POST carrying ``apiUser``/``apiKey`` as ordinary parameters; the
  key therefore never appears in a URL, and this module never logs request bodies.
* Success is ``result: true`` in the JSON envelope, *not* ``statusCode == 200`` (address-list
  sends succeed with 40821).  Business errors arrive as HTTP 200 with ``result: false``.
* Batch mail goes through ``xsmtpapi`` (``to`` ≤ 100 addresses, ``sub`` maps ``%var%`` to one
  value per recipient).  ``sendRequestId`` makes a send idempotent for one hour: a repeat is
  answered 40000 "重复请求", which for us means "already accepted".

Transport rule for sends: a connection that could not even be opened cannot have delivered
anything, so it is retried once (with the same ``sendRequestId``).  A read timeout, or a
connection that broke after the request went out, leaves the outcome unknown: we raise a
retryable ``ProviderError`` and the caller retries later with the SAME idempotency key; if the
first attempt had been accepted, SendCloud answers 40000 and we raise ``DuplicateRequest``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import unquote

import orjson
import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_environ_proxies
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from ..errors import (
    AuthenticationFailed,
    DuplicateRequest,
    InvalidInput,
    ProviderError,
    ProviderQuotaExceeded,
    Throttled,
    WebhookRejected,
)
from ..i18n import _, _l
from . import inflight
from .base import AccountInfo, BatchMessage, SendResult, TrackingEvent

PROVIDER_NAME = "sendcloud"
MAX_BATCH_SIZE = 100
MAX_REQUEST_ID_LENGTH = 128

#: ``verify`` bitmask of a domain (D17 bits plus DMARC = 32 as on the CN site).
VERIFY_BITS = {"dkim": 1, "spf": 2, "mx": 4, "cname": 8, "ownership": 16, "dmarc": 32}

#: Webhook event names and the numeric codes ``webhook/add`` expects (reference §13.4).
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
EVENT_NAMES = {code: name for name, code in EVENT_CODES.items()}
DEFAULT_EVENTS: tuple[str, ...] = tuple(EVENT_CODES)
#: Every event type a webhook post may carry (``route`` is inbound mail, not configurable here).
KNOWN_EVENTS = frozenset((*EVENT_CODES, "route"))

#: statusCode → (exception class, retryable).  Anything else is a permanent ``ProviderError``.
_STATUS_ERRORS: dict[int, tuple[type[ProviderError], bool]] = {
    40005: (AuthenticationFailed, False),
    40000: (DuplicateRequest, False),
    40904: (ProviderQuotaExceeded, True),
    50000: (Throttled, True),
    50001: (Throttled, True),
    40901: (ProviderError, True),  # 邮件发送失败: a transient failure on their side
    40902: (ProviderError, True),  # 邮件处理发生未知异常
    501: (ProviderError, True),  # 服务器异常
}

_TOKEN_LENGTH = 50
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
#: Timestamps below this are taken as seconds: as milliseconds they would be before 1973.
_SECONDS_CUTOFF = 100_000_000_000


# --------------------------------------------------------------------------- value types


@dataclasses.dataclass(frozen=True)
class DnsRecord:
    """One record SendCloud asks the customer to publish for a sending domain."""

    purpose: str  # ownership | spf | dkim | mx | dmarc | cname
    type: str
    host: str
    value: str
    priority: int | None = None


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    name: str
    verify: int
    records: tuple[DnsRecord, ...]

    def verified(self, purpose: str) -> bool:
        """Whether SendCloud reports the record for ``purpose`` as found (its ``verify`` bit)."""
        return bool(self.verify & VERIFY_BITS[purpose])


#: ``templateStat`` → our review state (reference §7).
TEMPLATE_STATES = {-2: "not_submitted", -1: "rejected", 0: "pending", 1: "approved"}

#: ``userinfo/get``'s ``accountType`` is Chinese text meant for people; the ones the reference
#: documents read in the page's language, any other is shown as SendCloud wrote it.
_ACCOUNT_TYPES = {"付费用户": _l("Paying account")}


def account_type_label(value: object) -> str:
    """``accountType`` in the user's language when it is a known one (any value as text)."""
    if value is None or value == "":
        return ""
    text = str(value)
    label = _ACCOUNT_TYPES.get(text.strip())
    return str(label) if label is not None else text


#: ``templateType``: 0 trigger (transactional), 1 batch (marketing).
TEMPLATE_TYPES = {"trigger": 0, "batch": 1}


@dataclasses.dataclass(frozen=True)
class TemplateInfo:
    """A template as SendCloud holds it, with its review state in our vocabulary."""

    invoke_name: str
    name: str
    template_type: Literal["batch", "trigger"]
    state: str  # not_submitted | pending | approved | rejected
    subject: str = ""
    updated: str = ""
    #: A reason, when the answer carries one (the documented fields have none; kept if present).
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class ApiUserInfo:
    name: str
    email_type: Literal["batch", "trigger"]
    domain: str | None


# --------------------------------------------------------------------------- parsing helpers

#: (purpose, key prefix in the domain object, record type)
_DOMAIN_RECORD_KEYS = (
    ("ownership", "verifyKey", "TXT"),
    ("spf", "spf", "TXT"),
    ("dkim", "dkim", "TXT"),
    ("mx", "mx", "MX"),
    ("cname", "cname", "CNAME"),
    ("dmarc", "dmarc", "TXT"),
)


def _domain_from_api(data: Mapping[str, Any]) -> DomainInfo:
    """Build a ``DomainInfo`` from SendCloud's flat object with dotted keys (``spf.value``)."""
    name = str(data.get("name") or "")
    records: list[DnsRecord] = []
    for purpose, prefix, rtype in _DOMAIN_RECORD_KEYS:
        value = str(data.get(f"{prefix}.value") or "").strip()
        if not value:
            continue
        host = str(data.get(f"{prefix}.domain") or name).strip()
        priority = None
        if rtype == "MX":
            # The API does not return an MX priority; 10 is what SendCloud's guides show.
            priority = _as_int(data.get("mx.priority"), 10)
        records.append(DnsRecord(purpose=purpose, type=rtype, host=host, value=value, priority=priority))
    return DomainInfo(name=name, verify=_as_int(data.get("verify"), 0), records=tuple(records))


def _template_from_api(data: Mapping[str, Any]) -> TemplateInfo:
    stat = _as_int(data.get("templateStat"), -2)
    note = _first_present(data, "auditReason", "reason", "remark", "auditDesc")
    return TemplateInfo(
        invoke_name=str(data.get("invokeName") or ""),
        name=str(data.get("name") or ""),
        template_type="trigger" if _as_int(data.get("templateType"), 1) == 0 else "batch",
        state=TEMPLATE_STATES.get(stat, "not_submitted"),
        subject=str(data.get("subject") or ""),
        updated=str(data.get("gmtUpdated") or data.get("gmtModified") or ""),
        note=str(note) if note is not None else None,
    )


def _email_type(value: Any) -> Literal["batch", "trigger"]:
    """SendCloud returns ``emailType`` as a Chinese string (触发/批量) in lists, an int elsewhere."""
    text = str(value).strip().lower()
    if text in {"0", "触发", "trigger"}:
        return "trigger"
    return "batch"


def _apiuser_from_api(data: Mapping[str, Any]) -> ApiUserInfo:
    domain = data.get("domainName") or data.get("domain") or None
    return ApiUserInfo(
        name=str(data.get("name") or ""), email_type=_email_type(data.get("emailType")), domain=domain
    )


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _as_decimal(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _first_present(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if data.get(key) not in (None, ""):
            return data[key]
    return None


def account_info_from_userinfo(info: Mapping[str, Any]) -> AccountInfo:
    """Map ``userinfo/get``'s ``info`` to ``AccountInfo``, tolerating every known spelling.

    The wire key is the misspelled ``avaliableBalance``; the docs spell it ``availableBalance``;
    the SGP region has no money balance but ``restNum`` (remaining mail credits), which we report
    as the available amount because it is what limits sending there.
    """
    reputation = info.get("reputation")
    try:
        reputation_value = float(reputation) if reputation not in (None, "") else None
    except (TypeError, ValueError):
        reputation_value = None
    quota = info.get("quota")
    used = info.get("todayUsedQuota")
    return AccountInfo(
        balance=_as_decimal(info.get("balance")),
        available_balance=_as_decimal(
            _first_present(info, "avaliableBalance", "availableBalance", "restNum")
        ),
        daily_quota=_as_int(quota, 0) if quota not in (None, "") else None,
        used_today=_as_int(used, 0) if used not in (None, "") else None,
        reputation=reputation_value,
        account_name=info.get("userName") or None,
        account_type=info.get("accountType") or None,
        raw=dict(info),
    )


# --------------------------------------------------------------------------- the client


# Form encoding (application/x-www-form-urlencoded, as ``urllib.parse.urlencode`` writes it).
# Why not let ``requests`` do it: its ``urlencode`` quotes byte by byte in Python, about 1 ms per
# 100-recipient batch, more than the rest of the HTTP client.  Here each character that needs
# quoting and occurs in the value is replaced everywhere at once (``str.replace`` runs in C;
# ``%`` first so later escapes are not escaped again, space last so the ``+`` it becomes is not);
# bytes of non-ASCII characters (UTF-8, read as Latin-1) are quoted by one regular expression,
# a run of them at a time (``bytes.hex`` writes the run's escapes in C: a callback per byte cost
# 2.6 ms for a 100-recipient ``xsmtpapi`` value with Chinese names and companies, 1.0 ms per run).
# An ASCII 100-recipient value: 0.17 ms, against 0.7 ms for a ``str.translate`` table.
# The HTML and text parts, identical in every batch of a campaign, are quoted once and reused.
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = {i: "+" if i == 32 else chr(i) if i in _FORM_SAFE else f"%{i:02X}" for i in range(256)}
_FORM_ASCII = tuple(
    (chr(i), _FORM_TABLE[i])
    for i in sorted(range(128), key=lambda i: (i != ord("%"), i == ord(" "), i))
    if _FORM_TABLE[i] != chr(i)
)
_FORM_HIGH = re.compile("[\x80-\xff]+")
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
#: Fields whose value is the same in every batch of a campaign (worth caching their encoding).
_CONSTANT_FIELDS = frozenset({"html", "plain", "subject", "from", "fromName", "replyTo", "labelName"})


def _loads(data: bytes) -> Any:
    """An answer's JSON, ``None`` when it is not JSON (orjson; what it refuses and the standard
    parser takes, e.g. integers beyond 64 bits, still reads)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except ValueError:
            return None


def _quote(value: str) -> str:
    wide = not value.isascii()
    if wide:
        value = value.encode("utf-8").decode("latin-1")
    for char, escaped in _FORM_ASCII:
        if char in value:
            value = value.replace(char, escaped)
    return _FORM_HIGH.sub(_quote_high, value) if wide else value


def _quote_high(match: re.Match[str]) -> str:
    return "%" + match.group().encode("latin-1").hex("%").upper()


@functools.lru_cache(maxsize=64)
def _quote_constant(value: str) -> str:
    return _quote(value)


def form_body(fields: Mapping[str, str]) -> bytes:
    """The urlencoded body of ``fields``, byte for byte what ``urlencode`` would produce."""
    return "&".join(
        f"{_quote(key)}={_quote_constant(value) if key in _CONSTANT_FIELDS else _quote(value)}"
        for key, value in fields.items()
    ).encode("ascii")


def _transport(base_url: str, timeout: float) -> tuple[urllib3.PoolManager, inflight.Lanes | None]:
    """The connections of one client: a keep-alive pool without automatic retries, with the
    proxy and CA bundle ``requests`` would pick from the environment (read once, not on every
    call); and, without a proxy, the lanes that carry batches in flight (``begin_call``).

    Why urllib3 and not ``requests.Session``: a batch is one POST of an already encoded body,
    and ``requests`` adds ~1 ms of CPU per call on top of urllib3 (merging the session's
    cookies, hooks and environment every time), 5 % of a batch's engine time."""
    environ = os.environ
    bundle = environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH
    tls = {"cert_reqs": "CERT_REQUIRED", ("ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"): bundle}
    connect_timeout = min(timeout, 5.0)
    options: dict[str, Any] = {
        "retries": False,
        "timeout": urllib3.Timeout(connect=connect_timeout, read=timeout),
        "maxsize": 8,
        **tls,
    }
    scheme = base_url.partition(":")[0].lower()
    proxies = get_environ_proxies(base_url)
    proxy = proxies.get(scheme) or proxies.get("all") or None
    if not proxy:
        lanes = inflight.Lanes(base_url, connect_timeout=connect_timeout, read_timeout=timeout, tls=tls)
        return urllib3.PoolManager(**options), lanes
    parsed = urllib3.util.parse_url(proxy)
    if parsed.scheme and parsed.scheme.startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as requests does

        return SOCKSProxyManager(proxy, **options), None
    if parsed.auth:  # user:password in the proxy URL, sent as requests would
        options["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=unquote(parsed.auth))
    return urllib3.ProxyManager(proxy, **options), None


class SendCloudClient:
    """One SendCloud API_USER's connection: a keep-alive pool and the JSON envelope rules."""

    def __init__(
        self,
        api_user: str,
        api_key: str,
        *,
        base_url: str,
        timeout: float = 15.0,
    ) -> None:
        if not api_user or not api_key:
            raise InvalidInput(_("SendCloud API_USER and API_KEY are both required"), field="api_user")
        self.api_user = api_user
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._pool, self._lanes = _transport(self.base_url, timeout)
        self._path = urllib3.util.parse_url(self.base_url).path or ""

    def __repr__(self) -> str:  # never show the key, not even in tracebacks of locals
        return f"<SendCloudClient {self.api_user} at {self.base_url}>"

    # -- transport

    def call(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """POST ``params`` to ``path`` and return the envelope's ``info`` (``{}`` if absent).

        Raises the error class the status code maps to.  Only a connect failure is retried, once:
        the request never reached the server, so repeating it cannot duplicate anything.
        """
        url = f"{self.base_url}/{path.lstrip('/')}"
        body = self._form(params)
        response = None
        for attempt in (1, 2):
            try:
                response = self._pool.request("POST", url, body=body, headers=_FORM_HEADERS)
                break
            except (NewConnectionError, ConnectTimeoutError):  # the server saw nothing
                if attempt == 1:
                    continue
                raise self._not_sent() from None
            except ReadTimeoutError:
                raise self._unknown(path, timed_out=True) from None
            except HTTPError:  # the connection broke once the request was (maybe) out
                raise self._unknown(path, timed_out=False) from None
        assert response is not None
        return self._parse(path, response.status, response.data)

    def begin_call(self, path: str, params: Mapping[str, Any] | None = None) -> Callable[[], Any]:
        """Send ``call(path, params)`` now and return the function that waits for its ``info``
        (raising as ``call`` does).  Several may be in flight at once, each on its own
        keep-alive connection (``plugin.providers.inflight``); behind a proxy the request goes
        out when its answer is asked for."""
        if self._lanes is None:
            return functools.partial(self.call, path, params)
        pending = self._lanes.post(f"{self._path}/{path.lstrip('/')}", self._form(params), _FORM_HEADERS)

        def answer() -> Any:
            try:
                status, data = pending.answer()
            except inflight.NotSent:
                raise self._not_sent() from None
            except inflight.OutcomeUnknown as exc:
                raise self._unknown(path, timed_out=exc.timed_out) from None
            return self._parse(path, status, data)

        return answer

    def _form(self, params: Mapping[str, Any] | None) -> bytes:
        data = {"apiUser": self.api_user, "apiKey": self._api_key}
        for key, value in (params or {}).items():
            if value is None:
                continue
            data[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return form_body(data)  # see ``form_body``

    def _not_sent(self) -> ProviderError:
        return ProviderError(
            _("Cannot connect to SendCloud at %(url)s; nothing was sent.", url=self.base_url),
            provider=PROVIDER_NAME,
            retryable=True,
        )

    def _unknown(self, path: str, *, timed_out: bool) -> ProviderError:
        if timed_out:
            message = _(
                "SendCloud did not answer %(call)s within %(seconds)s s; the outcome is "
                "unknown, retry with the same sendRequestId.",
                call=path,
                seconds=format(self.timeout, "g"),
            )
        else:
            message = _(
                "The connection to SendCloud broke during %(call)s; the outcome is unknown, "
                "retry with the same sendRequestId.",
                call=path,
            )
        return ProviderError(message, provider=PROVIDER_NAME, retryable=True)

    def _parse(self, path: str, status: int, data: bytes) -> Any:
        if status >= 500:
            raise ProviderError(
                _("SendCloud answered HTTP %(status)s to %(call)s.", status=status, call=path),
                provider=PROVIDER_NAME,
                retryable=True,
            )
        body = _loads(data)
        if not isinstance(body, dict) or "result" not in body:
            raise ProviderError(
                _(
                    "SendCloud answered %(call)s with HTTP %(status)s and a body that is not "
                    "its JSON envelope.",
                    call=path,
                    status=status,
                ),
                provider=PROVIDER_NAME,
                retryable=True,
            )
        if body.get("result") is True:
            info = body.get("info")
            return info if info is not None else {}
        code = _as_int(body.get("statusCode"), 0) or None
        message = str(body.get("message") or "error")
        cls, retryable = _STATUS_ERRORS.get(code or 0, (ProviderError, False))
        raise cls(message, provider=PROVIDER_NAME, status_code=code, retryable=retryable)

    # -- endpoints

    def userinfo(self) -> AccountInfo:
        info = self.call("userinfo/get")
        data = info.get("data", info) if isinstance(info, dict) else {}
        return account_info_from_userinfo(data if isinstance(data, dict) else {})

    def domain_list(self, name: str | None = None) -> list[DomainInfo]:
        info = self.call("domain/list", {"name": name})
        return [_domain_from_api(item) for item in _data_list(info)]

    def domain_add(self, name: str) -> DomainInfo:
        info = self.call("domain/add", {"name": name})
        return _domain_from_api(info.get("data") or {})

    def apiuser_list(self, domain: str | None = None) -> list[ApiUserInfo]:
        info = self.call("apiuser/list", {"domainName": domain})
        return [_apiuser_from_api(item) for item in _data_list(info)]

    def apiuser_add(
        self, name: str, email_type: Literal["batch", "trigger"], domain: str
    ) -> tuple[ApiUserInfo, str]:
        """Create an API_USER bound to ``domain``; returns its info and its new API_KEY."""
        code = {"trigger": 0, "batch": 1}[email_type]
        info = self.call("apiuser/add", {"name": name, "emailType": code, "domainName": domain})
        data = info.get("data") or {}
        key = str(data.get("nameKey") or "")
        if not key:
            raise ProviderError(
                _("SendCloud created the API_USER but returned no API_KEY (nameKey)."),
                provider=PROVIDER_NAME,
            )
        return _apiuser_from_api(data), key

    def webhook_list(self) -> list[dict]:
        return [dict(item) for item in _data_list(self.call("webhook/list"))]

    def webhook_add(self, url: str, *, category: str = "all", events: Sequence[str] = DEFAULT_EVENTS) -> None:
        try:
            codes = ",".join(str(EVENT_CODES[event]) for event in events)
        except KeyError as exc:
            raise InvalidInput(
                _("Unknown webhook event %(event)s.", event=exc.args[0]), field="events"
            ) from None
        self.call("webhook/add", {"url": url, "categoryName": category, "event": codes})

    # -- templates (reference §7): review states follow ``templateStat``

    def template_get(self, invoke_name: str) -> TemplateInfo:
        info = self.call("template/get", {"invokeName": invoke_name})
        data = info.get("data") if isinstance(info, dict) else None
        return _template_from_api(data if isinstance(data, dict) else {"invokeName": invoke_name})

    def template_list(
        self, *, template_type: Literal["batch", "trigger"] | None = None
    ) -> list[TemplateInfo]:
        code = TEMPLATE_TYPES[template_type] if template_type else None
        info = self.call("template/list", {"templateType": code, "start": 0, "limit": 100})
        return [_template_from_api(item) for item in _data_list(info)]

    def template_add(
        self,
        invoke_name: str,
        *,
        name: str,
        subject: str,
        html: str,
        text: str | None = None,
        template_type: Literal["batch", "trigger"] = "batch",
        submit: bool = True,
    ) -> TemplateInfo:
        """Create a template; ``submit`` asks for review at once (``isSubmitAudit=1``)."""
        info = self.call(
            "template/add",
            {
                "invokeName": invoke_name,
                "name": name,
                "subject": subject,
                "html": html,
                "text": text or None,
                "templateType": TEMPLATE_TYPES[template_type],
                "isSubmitAudit": 1 if submit else 0,
            },
        )
        data = info.get("data") if isinstance(info, dict) else None
        return _template_from_api(data if isinstance(data, dict) else {"invokeName": invoke_name})

    def template_update(
        self,
        invoke_name: str,
        *,
        name: str,
        subject: str,
        html: str,
        text: str | None = None,
        template_type: Literal["batch", "trigger"] = "batch",
        submit: bool = True,
    ) -> None:
        """Replace a template's content (refused by SendCloud while it is pending review)."""
        self.call(
            "template/update",
            {
                "invokeName": invoke_name,
                "name": name,
                "subject": subject,
                "html": html,
                "text": text or None,
                "templateType": TEMPLATE_TYPES[template_type],
                "isSubmitAudit": 1 if submit else 0,
            },
        )

    def template_submit(self, invoke_name: str, *, cancel: bool = False) -> None:
        """Submit a template for review, or withdraw a pending submission (``cancel``)."""
        self.call("template/submit", {"invokeName": invoke_name, "cancel": 1 if cancel else 0})

    def template_delete(self, invoke_name: str) -> None:
        self.call("template/delete", {"invokeName": invoke_name})

    def close(self) -> None:
        self._pool.clear()
        if self._lanes is not None:
            self._lanes.close()


def _data_list(info: Any) -> list[Mapping[str, Any]]:
    items = info.get("dataList") if isinstance(info, dict) else None
    return [item for item in items or [] if isinstance(item, dict)]


# --------------------------------------------------------------------------- the provider


def build_send_params(batch: BatchMessage) -> dict[str, Any]:
    """Form parameters for ``mail/send`` of one batch (exposed for tests and diagnostics).

    Every recipient gets a value for every variable any recipient has (missing → ""), because
    SendCloud substitutes by position: ``sub["%name%"][i]`` belongs to ``to[i]``.
    """
    recipients = list(batch.recipients)
    if not recipients:
        raise InvalidInput(_("A batch needs at least one recipient."), field="recipients")
    if len(recipients) > MAX_BATCH_SIZE:
        raise InvalidInput(
            _(
                "SendCloud accepts at most %(max)s recipients per request, got %(n)s.",
                max=MAX_BATCH_SIZE,
                n=len(recipients),
            ),
            field="recipients",
        )
    key = batch.idempotency_key
    if not key or len(key) > MAX_REQUEST_ID_LENGTH:
        raise InvalidInput(
            _("The idempotency key must be 1-%(max)s characters.", max=MAX_REQUEST_ID_LENGTH),
            field="idempotency_key",
        )
    sub = _sub_columns([r.variables for r in recipients])
    xsmtpapi: dict[str, Any] = {"to": [r.email for r in recipients]}
    if sub:
        xsmtpapi["sub"] = sub
    params: dict[str, Any] = {
        "from": batch.from_address,
        "fromName": batch.from_name or None,
        "subject": batch.subject,
        "html": batch.html,
        "plain": batch.text or None,
        "replyTo": batch.reply_to or None,
        # orjson: the same compact UTF-8 text as ``json.dumps(..., ensure_ascii=False)``, ~10x
        # faster (a 100-recipient value with its tokens and names is the largest JSON of a batch)
        "xsmtpapi": orjson.dumps(xsmtpapi).decode(),
        "sendRequestId": key,
        "respEmailId": True,
        "labelName": batch.label or None,
    }
    if batch.template_name:
        # mail/sendtemplate: the approved template supplies the content; recipients and their
        # values still travel in xsmtpapi (it has no broadcast mode), the subject may override.
        params["templateInvokeName"] = batch.template_name
        params["subject"] = batch.subject or None
        del params["html"], params["plain"]
    if batch.headers:
        params["headers"] = json.dumps(dict(batch.headers), ensure_ascii=False)
    return params


def _sub_columns(variables: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``{"%name%": [value of each recipient]}`` over the union of the recipients' names."""
    names = sorted(set().union(*variables))
    if not names:
        return {}
    row_of = operator.itemgetter(*names) if len(names) > 1 else lambda v: (v[names[0]],)
    try:  # the usual batch: every recipient has every name (one C-level pass per recipient)
        columns = zip(*(row_of(v) for v in variables), strict=True)
    except KeyError:
        columns = zip(*([v.get(name, "") for name in names] for v in variables), strict=True)
    return {f"%{name}%": list(map(str, column)) for name, column in zip(names, columns, strict=True)}


class SendCloudProvider:
    """``providers.base.Provider`` for one API_USER (a batch one or a trigger one)."""

    name = PROVIDER_NAME
    max_batch_size = MAX_BATCH_SIZE

    def __init__(
        self,
        api_user: str,
        api_key: str,
        *,
        base_url: str,
        timeout: float = 15.0,
    ) -> None:
        self.client = SendCloudClient(api_user, api_key, base_url=base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"<SendCloudProvider {self.client.api_user}>"

    def send_batch(self, batch: BatchMessage) -> list[SendResult]:
        return self.begin_batch(batch)()

    def begin_batch(self, batch: BatchMessage) -> Callable[[], list[SendResult]]:
        """Send now; the returned function waits for the answer (``providers.base.begin_batch``)."""
        try:
            params = build_send_params(batch)
        except Exception as exc:  # raised where the answer is read, as the protocol says
            return functools.partial(_raise, exc)
        endpoint = "mail/sendtemplate" if batch.template_name else "mail/send"
        answer = self.client.begin_call(endpoint, params)

        def results() -> list[SendResult]:
            info = answer()
            ids = [str(item) for item in (info.get("emailIdList") or [])] if isinstance(info, dict) else []
            return _results(batch, ids)

        return results

    def send_one(self, batch: BatchMessage) -> SendResult:
        """A trigger mail: exactly one recipient, sent with whichever API_USER built this provider."""
        if len(batch.recipients) != 1:
            raise InvalidInput(
                _("A trigger mail has exactly one recipient, got %(n)s.", n=len(batch.recipients)),
                field="recipients",
            )
        return self.send_batch(batch)[0]

    def account_info(self) -> AccountInfo | None:
        return self.client.userinfo()

    def close(self) -> None:
        self.client.close()


def _raise(exc: Exception) -> Any:
    raise exc


def _results(batch: BatchMessage, email_ids: list[str]) -> list[SendResult]:
    """Pair recipients with their emailIds (``<messageId><index>$<address>``, in ``to`` order)."""
    by_address: dict[str, str] = {}
    for email_id in email_ids:
        _, sep, address = email_id.rpartition("$")
        if sep:
            by_address.setdefault(address.lower(), email_id)
    results = []
    for index, recipient in enumerate(batch.recipients):
        email_id = by_address.get(recipient.email.lower())
        if email_id is None and len(email_ids) == len(batch.recipients):
            email_id = email_ids[index]
        results.append(SendResult(recipient=recipient.email, status="accepted", provider_message_id=email_id))
    return results


# --------------------------------------------------------------------------- webhooks


def _field(form: Any, key: str) -> str | None:
    value = form.get(key)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else str(value)


def _fields(form: Any, key: str) -> list[str]:
    """A repeated form field (``recipientArray``, ``emailIds``) from a MultiDict or a plain dict."""
    if hasattr(form, "getlist"):
        return [str(v) for v in form.getlist(key)]
    value = form.get(key)
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def webhook_timestamp(value: str) -> dt.datetime:
    """The event time of a webhook ``timestamp``.

    SendCloud sends epoch milliseconds; a value small enough to be seconds (below 10^11, which as
    milliseconds would be 1973) is accepted as seconds so a receiver configured either way works.
    """
    if not value or not value.isdigit():
        raise WebhookRejected("webhook timestamp is missing or not a number")
    number = int(value)
    millis = number * 1000 if number < _SECONDS_CUTOFF else number
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC)


def sign_webhook(app_key: str, timestamp: str, token: str) -> str:
    """Hex HMAC-SHA256 of ``timestamp + token`` keyed with the webhook APP KEY (reference §13.4)."""
    return hmac.new(app_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def verify_webhook(
    form: Mapping[str, str],
    app_key: str,
    *,
    now: dt.datetime,
    max_age: dt.timedelta = dt.timedelta(minutes=45),
) -> None:
    """Refuse a webhook post that SendCloud did not sign or that is outside the time window.

    ``max_age`` applies both ways (stale and future timestamps).  45 minutes covers SendCloud's
    retry schedule (1+2+4+8+16 = 31 minutes after the first attempt) with room for clock skew:
    retries carry the original timestamp and signature.  Replays inside the window are harmless
    because events are stored once (see ``parse_webhook``'s ``provider_event_id``).
    """
    if not app_key:
        raise WebhookRejected("no webhook app key is configured", reason="no_key")
    timestamp = _field(form, "timestamp")
    token = _field(form, "token")
    signature = _field(form, "signature")
    if not timestamp or not token or not signature:
        missing = [
            k for k, v in (("timestamp", timestamp), ("token", token), ("signature", signature)) if not v
        ]
        raise WebhookRejected(f"webhook post lacks {', '.join(missing)}")
    if len(token) != _TOKEN_LENGTH:
        raise WebhookRejected(f"webhook token must be {_TOKEN_LENGTH} characters")
    if not _HEX64.fullmatch(signature):
        raise WebhookRejected("webhook signature is not 64 hex digits")
    sent_at = webhook_timestamp(timestamp)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    if abs(now - sent_at) > max_age:
        raise WebhookRejected("webhook timestamp is outside the accepted window", reason="stale")
    expected = sign_webhook(app_key, timestamp, token)
    if not hmac.compare_digest(expected, signature.lower()):
        raise WebhookRejected("webhook signature does not match", reason="signature")


def webhook_event_id(event: str, token: str) -> str:
    """The dedupe key of a webhook event.

    SendCloud signs each event once and resends the very same ``token``/``timestamp``/``signature``
    on retries, while every new event gets a fresh random 50-character token: so the token (with
    the event type, for readability) identifies an event across redeliveries.
    """
    return f"sendcloud:{event}:{token}"


def parse_webhook(form: Any) -> TrackingEvent:
    """Turn a (verified) webhook post into a ``TrackingEvent``.

    ``form`` is a MultiDict (``request.form``) or a plain mapping; list fields may be repeated
    form values.  ``userHeaders`` is a JSON string of the ``SC-Custom-*`` headers given at send.
    """
    event = _field(form, "event") or ""
    if event not in KNOWN_EVENTS:
        raise WebhookRejected(f"unknown webhook event {event!r}")
    token = _field(form, "token") or ""
    if not token:
        raise WebhookRejected("webhook post lacks token")
    occurred_at = webhook_timestamp(_field(form, "timestamp") or "")
    recipient = _field(form, "recipient")
    email_id = _field(form, "emailId")
    if event == "request":
        recipients = _fields(form, "recipientArray")
        ids = _fields(form, "emailIds")
        recipient = recipient or (recipients[0] if len(recipients) == 1 else None)
        email_id = email_id or (ids[0] if len(ids) == 1 else None)
    substat = _field(form, "substat") or ""
    substatdesc = _field(form, "substatdesc") or _field(form, "cause") or ""
    reason = f"{substat} {substatdesc}".strip() or None
    raw: dict[str, Any] = {}
    keys = form.keys() if hasattr(form, "keys") else []
    for key in keys:
        values = _fields(form, key)
        raw[key] = values if len(values) > 1 or key in {"recipientArray", "emailIds"} else _field(form, key)
    raw.pop("signature", None)
    return TrackingEvent(
        event_type=event,
        provider_event_id=webhook_event_id(event, token),
        occurred_at=occurred_at,
        recipient=recipient or None,
        provider_message_id=email_id or None,
        url=_field(form, "url") or None,
        reason=reason,
        user_headers=_user_headers(_field(form, "userHeaders")),
        raw=raw,
    )


def _user_headers(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k): str(v) for k, v in parsed.items()}


__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_CODES",
    "VERIFY_BITS",
    "ApiUserInfo",
    "DnsRecord",
    "DomainInfo",
    "SendCloudClient",
    "SendCloudProvider",
    "TemplateInfo",
    "account_info_from_userinfo",
    "build_send_params",
    "parse_webhook",
    "sign_webhook",
    "verify_webhook",
    "webhook_event_id",
]
