"""Check the DNS records a sending domain must publish, and facts about the domain itself.

Why this exists: most failed SendCloud onboardings are DNS mistakes — a second SPF record instead
of a merged one, a missing include, a DKIM key pasted in pieces, too many SPF lookups.  Each check
returns what was expected, what DNS really serves, a status and a hint that says how to fix it, so
the wizard can show a row per record that turns green once the fix is live.

All lookups go through one dnspython resolver built from ``ResolverConfig`` (``MARKETING_DNS_*``),
so tests and the demo point it at ``plugin.sandbox.dns.DnsResponder`` and production at the
system resolver.  Messages are English source strings passed through ``_`` (translated inside a
request, English elsewhere); ``code`` identifies each outcome for pages and tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from publicsuffixlist import PublicSuffixList

from . import errors
from .i18n import _

Status = Literal["pass", "fail", "advice", "error"]

#: RFC 7208 §4.6.4: evaluating an SPF record may cause at most 10 DNS-querying terms.
SPF_LOOKUP_LIMIT = 10
#: Terms that each cost one DNS query during SPF evaluation.
SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
#: How deep we follow include/redirect chains (a real evaluator stops at 10 lookups anyway).
_SPF_MAX_DEPTH = 12
#: SendCloud refuses domains containing these words (reference §9, domain/add).
FORBIDDEN_WORDS = ("sendcloud", "ifaxin")
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63


# ----------------------------------------------------------------------------- public types


class DnsRecordLike(Protocol):
    """What ``providers.sendcloud.DnsRecord`` offers (kept structural to avoid an import cycle)."""

    purpose: str
    type: str
    host: str
    value: str
    priority: int | None


@dataclass(frozen=True)
class ResolverConfig:
    """Where DNS questions go.  Empty ``nameservers`` means the system resolver."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 3.0

    @classmethod
    def from_settings(cls, settings: Any) -> ResolverConfig:
        """From ``plugin.config.Settings`` (``dns_nameservers``, ``dns_port``, ``dns_timeout``)."""
        return cls(
            nameservers=tuple(settings.dns_nameservers or ()),
            port=int(settings.dns_port),
            timeout=float(settings.dns_timeout),
        )


@dataclass(frozen=True)
class RecordCheck:
    """The outcome for one record: a row in the wizard's DNS table."""

    purpose: str
    type: str
    host: str
    expected: str
    found: tuple[str, ...]
    status: Status
    message: str
    hint: str
    #: Stable identifier of the outcome (``pass``, ``spf_multiple``, ``nxdomain``, ``timeout`` …).
    code: str = ""

    @property
    def ok(self) -> bool:
        """Nothing to fix: passed, or only advised (DMARC)."""
        return self.status in ("pass", "advice")


@dataclass(frozen=True)
class DomainFacts:
    """What the wizard needs to warn about a sending domain before binding it."""

    domain: str
    #: The domain is a registrable domain (example.com, example.com.cn), not a subdomain of one.
    is_apex: bool
    #: The registrable domain it belongs to ("" when the name is itself a public suffix).
    registrable: str
    has_mx: bool
    mx_hosts: tuple[str, ...]
    #: Set when the MX lookup itself failed (timeout, SERVFAIL); ``has_mx`` is then unknown/False.
    mx_error: str = ""

    @property
    def suggested_subdomain(self) -> str:
        """The subdomain to propose instead of an apex domain or one that receives mail."""
        return f"newsletter.{self.registrable or self.domain}"


# ----------------------------------------------------------------------------- resolver


class _LookupFailed(Exception):
    """The DNS server could not answer (as opposed to answering "no such record")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Answer:
    exists: bool  # False: NXDOMAIN
    values: tuple[str, ...]  # TXT joined strings, MX "PRIO host", CNAME target (no trailing dot)


def make_resolver(config: ResolverConfig) -> dns.resolver.Resolver:
    """A dnspython resolver for ``config``; no cache, so "check again" sees fresh data."""
    if config.nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = list(config.nameservers)
        resolver.port = config.port
    else:
        resolver = dns.resolver.Resolver()  # raises NoResolverConfiguration without resolv.conf
    resolver.timeout = config.timeout
    resolver.lifetime = config.timeout
    resolver.cache = None
    resolver.retry_servfail = False
    return resolver


def _seconds(value: float) -> str:
    return f"{value:g}"


def _text(rdata: Any) -> str:
    """A TXT record's character-strings joined into one value (long DKIM keys come in pieces)."""
    return b"".join(rdata.strings).decode("utf-8", errors="replace")


def _lookup(resolver: dns.resolver.Resolver, name: str, rtype: str) -> _Answer:
    qname = dns.name.from_text(name.strip().rstrip(".") + ".")
    try:
        answer = resolver.resolve(qname, rtype, search=False)
    except dns.resolver.NXDOMAIN:
        return _Answer(False, ())
    except dns.resolver.NoAnswer:
        return _Answer(True, ())
    except dns.exception.Timeout as exc:
        raise _LookupFailed(
            "timeout",
            _("the DNS server did not answer within %(seconds)s s", seconds=_seconds(resolver.lifetime)),
        ) from exc
    except dns.resolver.NoNameservers as exc:
        raise _no_nameservers(exc) from exc
    except dns.resolver.NoResolverConfiguration as exc:
        raise _LookupFailed("unreachable", _("no DNS server is configured on this machine")) from exc
    except dns.exception.DNSException as exc:
        raise _LookupFailed("dns_error", _("the DNS lookup failed: %(error)s", error=str(exc))) from exc
    values: list[str] = []
    for rdata in answer:
        if rdata.rdtype == dns.rdatatype.TXT:
            values.append(_text(rdata))
        elif rdata.rdtype == dns.rdatatype.MX:
            values.append(f"{rdata.preference} {_host(rdata.exchange.to_text())}")
        elif rdata.rdtype == dns.rdatatype.CNAME:
            values.append(_host(rdata.target.to_text()))
        else:
            values.append(rdata.to_text())
    return _Answer(True, tuple(values))


def _no_nameservers(exc: dns.resolver.NoNameservers) -> _LookupFailed:
    """Tell SERVFAIL and REFUSED apart from servers that could not be reached at all."""
    rcodes = {str(err[3]) for err in exc.kwargs.get("errors") or [] if isinstance(err[3], str)}
    if "SERVFAIL" in rcodes:
        return _LookupFailed("servfail", _("the DNS server failed to answer (SERVFAIL)"))
    if "REFUSED" in rcodes:
        return _LookupFailed("refused", _("the DNS server refused to answer (REFUSED)"))
    return _LookupFailed("unreachable", _("no DNS server could be reached"))


def _host(name: str) -> str:
    return name.strip().rstrip(".").lower()


# ----------------------------------------------------------------------------- checks


def check_records(records: Sequence[DnsRecordLike], resolver: ResolverConfig) -> list[RecordCheck]:
    """One ``RecordCheck`` per record, in the given order."""
    try:
        res = make_resolver(resolver)
    except dns.resolver.NoResolverConfiguration:
        message = _("no DNS server is configured on this machine")
        return [_error(record, message, "unreachable") for record in records]
    return [_check_one(record, res) for record in records]


def _check_one(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    purpose = record.purpose.lower()
    rtype = record.type.upper()
    try:
        if purpose == "spf":
            return _check_spf(record, res)
        if purpose == "dkim":
            return _check_dkim(record, res)
        if purpose == "dmarc":
            return _check_dmarc(record, res)
        if rtype == "MX":
            return _check_mx(record, res)
        if rtype == "CNAME":
            return _check_cname(record, res)
        return _check_txt_equal(record, res)
    except _LookupFailed as failure:
        return _error(record, failure.message, failure.code)


def _result(
    record: DnsRecordLike,
    status: Status,
    code: str,
    message: str,
    hint: str = "",
    found: Sequence[str] = (),
) -> RecordCheck:
    return RecordCheck(
        purpose=record.purpose,
        type=record.type.upper(),
        host=_host(record.host),
        expected=_expected_text(record),
        found=tuple(found),
        status=status,
        message=message,
        hint=hint,
        code=code,
    )


def _expected_text(record: DnsRecordLike) -> str:
    if record.type.upper() == "MX" and record.priority is not None:
        return f"{record.priority} {_host(record.value)}"
    return record.value


def _error(record: DnsRecordLike, message: str, code: str) -> RecordCheck:
    hint = _(
        "This is usually temporary: check again in a minute. If it keeps happening, the DNS servers "
        "of the domain may be down."
    )
    return _result(record, "error", code, message, hint)


def _missing_host(record: DnsRecordLike) -> RecordCheck:
    return _result(
        record,
        "fail",
        "nxdomain",
        _("%(host)s does not exist in DNS yet", host=_host(record.host)),
        _(
            "Add the record at your DNS provider. If you just added it, wait: DNS changes can take up "
            "to 48 hours to become visible everywhere."
        ),
    )


def _passed(record: DnsRecordLike, found: Sequence[str]) -> RecordCheck:
    return _result(record, "pass", "pass", _("The record is published correctly."), "", found)


def _add_hint(record: DnsRecordLike) -> str:
    return _(
        "Add a %(type)s record at %(host)s with the value %(value)s.",
        type=record.type.upper(),
        host=_host(record.host),
        value=record.value,
    )


def _norm_txt(value: str) -> str:
    return value.strip().strip('"').strip()


def _check_txt_equal(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    """Ownership (and any other plain TXT): a TXT value at the host equals the expected one."""
    answer = _lookup(res, record.host, record.type.upper())
    if not answer.exists:
        return _missing_host(record)
    expected = _norm_txt(record.value)
    if any(_norm_txt(v) == expected for v in answer.values):
        return _passed(record, [v for v in answer.values if _norm_txt(v) == expected])
    key = expected.split("=", 1)[0].lower() + "=" if "=" in expected else ""
    related = [v for v in answer.values if key and _norm_txt(v).lower().startswith(key)]
    if related:
        return _result(
            record,
            "fail",
            "txt_mismatch",
            _("The record has a different value."),
            _("Replace the value with %(value)s.", value=record.value),
            related,
        )
    return _result(
        record,
        "fail",
        "txt_missing",
        _("No matching %(type)s record found.", type=record.type.upper()),
        _add_hint(record),
        answer.values,
    )


# ------------------------------------------------------------------ SPF


def _is_spf(value: str) -> bool:
    text = _norm_txt(value).lower()
    return text == "v=spf1" or text.startswith("v=spf1 ")


def _spf_terms(value: str) -> list[str]:
    return _norm_txt(value).split()[1:]


def _term_key(term: str) -> str:
    """``~include:Spf.SendCloud.org`` → ``include:spf.sendcloud.org`` for comparisons."""
    return term.lstrip("+").lower()


def _is_all(term: str) -> bool:
    return term.lstrip("+-~?").lower() == "all"


def _is_redirect(term: str) -> bool:
    return term.lower().startswith("redirect=")


def merge_spf(values: Sequence[str], required: Sequence[str] = ()) -> str:
    """One SPF record holding every mechanism of ``values`` plus ``required``.

    Order is kept, duplicates dropped, and a single ``all`` ends the record (the first one found,
    else ``~all``).  A ``redirect=`` survives only when no record has ``all``.
    """
    terms: list[str] = []
    seen: set[str] = set()
    final_all = ""
    redirect = ""
    for value in values:
        for term in _spf_terms(value):
            if _is_all(term):
                final_all = final_all or term
            elif _is_redirect(term):
                redirect = redirect or term
            elif _term_key(term) not in seen:
                seen.add(_term_key(term))
                terms.append(term)
    for term in required:
        if _term_key(term) not in seen:
            seen.add(_term_key(term))
            terms.append(term)
    tail = final_all or (redirect if redirect else "~all")
    return " ".join(["v=spf1", *terms, tail])


def _required_terms(expected: str) -> list[str]:
    return [t for t in _spf_terms(expected) if not _is_all(t) and not _is_redirect(t)]


def _check_spf(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    answer = _lookup(res, record.host, "TXT")
    if not answer.exists:
        return _missing_host(record)
    spf = [v for v in answer.values if _is_spf(v)]
    required = _required_terms(record.value)
    if not spf:
        return _result(
            record,
            "fail",
            "spf_missing",
            _("No SPF record found."),
            _add_hint(record),
        )
    if len(spf) > 1:
        return _result(
            record,
            "fail",
            "spf_multiple",
            _(
                "%(count)s SPF records found; a domain must publish exactly one (RFC 7208), so "
                "receivers treat all of them as invalid.",
                count=len(spf),
            ),
            _("Merge them into one record: %(merged)s", merged=merge_spf(spf, required)),
            spf,
        )
    present = {_term_key(t) for t in _spf_terms(spf[0])}
    missing = [t for t in required if _term_key(t) not in present]
    if missing:
        return _result(
            record,
            "fail",
            "spf_include_missing",
            _("The SPF record does not contain %(terms)s.", terms=" ".join(missing)),
            _(
                "Add %(terms)s to your existing record (do not create a second one): %(merged)s",
                terms=" ".join(missing),
                merged=merge_spf(spf, required),
            ),
            spf,
        )
    counter = _SpfCounter(res)
    count = counter.count(_host(record.host), spf[0])
    if counter.loop:
        return _result(
            record,
            "fail",
            "spf_loop",
            _("The SPF record includes itself in a loop: %(chain)s.", chain=" → ".join(counter.loop)),
            _("Remove the include that points back to an earlier record."),
            spf,
        )
    if count > SPF_LOOKUP_LIMIT:
        return _result(
            record,
            "fail",
            "spf_too_many_lookups",
            _(
                "The SPF record needs %(count)s DNS lookups; at most %(limit)s are allowed, so "
                "receivers reject it (permerror).",
                count=count,
                limit=SPF_LOOKUP_LIMIT,
            ),
            _(
                "Remove includes you no longer use, or replace them with ip4:/ip6: ranges, until "
                "at most %(limit)s lookups remain.",
                limit=SPF_LOOKUP_LIMIT,
            ),
            spf,
        )
    return _result(
        record,
        "pass",
        "pass",
        _(
            "The SPF record is correct (%(count)s of %(limit)s DNS lookups).",
            count=count,
            limit=SPF_LOOKUP_LIMIT,
        ),
        "",
        spf,
    )


class _SpfCounter:
    """Counts DNS-querying terms through include/redirect chains, resolving via the same resolver.

    An include that cannot be resolved (no SPF record, NXDOMAIN, timeout) counts as its own single
    lookup and is not followed: we judge the customer's record, not third parties' availability.
    A chain that comes back to a domain already on the current path is a loop.
    """

    def __init__(self, res: dns.resolver.Resolver) -> None:
        self.res = res
        self.loop: list[str] = []

    def count(self, domain: str, record: str, path: tuple[str, ...] = ()) -> int:
        path = (*path, domain)
        terms = _spf_terms(record)
        has_all = any(_is_all(t) for t in terms)
        total = 0
        for term in terms:
            bare = term.lstrip("+-~?")
            if "=" in bare and not _is_redirect(bare):
                continue  # exp= and unknown modifiers cost nothing at evaluation time
            name = re.split(r"[:=/]", bare, maxsplit=1)[0].lower()
            if name not in SPF_LOOKUP_TERMS or (name == "redirect" and has_all):
                continue
            total += 1
            if name not in ("include", "redirect") or self.loop:
                continue
            separator = "=" if name == "redirect" else ":"
            target = _host(bare.partition(separator)[2])
            if not target or "%" in target:
                continue  # no domain given, or macros that cannot be expanded without a sender
            if target in path:
                self.loop = [*path, target]
                return total
            if len(path) >= _SPF_MAX_DEPTH:
                continue
            nested = self._spf_of(target)
            if nested is not None:
                total += self.count(target, nested, path)
        return total

    def _spf_of(self, domain: str) -> str | None:
        try:
            answer = _lookup(self.res, domain, "TXT")
        except _LookupFailed:
            return None
        records = [v for v in answer.values if _is_spf(v)]
        return records[0] if len(records) == 1 else None


# ------------------------------------------------------------------ DKIM


def _dkim_tags(value: str) -> dict[str, str]:
    compact = re.sub(r"\s+", "", _norm_txt(value))
    tags: dict[str, str] = {}
    for part in compact.split(";"):
        if "=" in part:
            key, _sep, val = part.partition("=")
            tags.setdefault(key.lower(), val)
    return tags


def _check_dkim(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    answer = _lookup(res, record.host, "TXT")
    if not answer.exists:
        return _missing_host(record)
    expected_key = _dkim_tags(record.value).get("p", re.sub(r"\s+", "", record.value))
    keys = [v for v in answer.values if "p" in _dkim_tags(v)]
    if any(_dkim_tags(v)["p"] == expected_key for v in keys):
        return _passed(record, keys)
    if keys:
        return _result(
            record,
            "fail",
            "dkim_mismatch",
            _("The DKIM record has a different public key."),
            _(
                "Replace the value with %(value)s (copy it in full: a key cut short or with extra "
                "characters does not verify).",
                value=record.value,
            ),
            keys,
        )
    return _result(
        record,
        "fail",
        "dkim_missing",
        _("No DKIM record found at %(host)s.", host=_host(record.host)),
        _add_hint(record),
        answer.values,
    )


# ------------------------------------------------------------------ MX, CNAME, DMARC


def _check_mx(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    answer = _lookup(res, record.host, "MX")
    if not answer.exists:
        return _missing_host(record)
    wanted = _host(record.value)
    if any(v.split()[-1] == wanted for v in answer.values):
        return _passed(record, answer.values)
    if answer.values:
        return _result(
            record,
            "fail",
            "mx_mismatch",
            _("The MX records point elsewhere; %(host)s is not among them.", host=wanted),
            _add_hint(record),
            answer.values,
        )
    return _result(record, "fail", "mx_missing", _("No MX record found."), _add_hint(record))


def _check_cname(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    answer = _lookup(res, record.host, "CNAME")
    if not answer.exists:
        return _missing_host(record)
    if any(v == _host(record.value) for v in answer.values):
        return _passed(record, answer.values)
    if answer.values:
        return _result(
            record,
            "fail",
            "cname_mismatch",
            _("The CNAME record points to a different target."),
            _("Change the target to %(value)s.", value=_host(record.value)),
            answer.values,
        )
    return _result(record, "fail", "cname_missing", _("No CNAME record found."), _add_hint(record))


def _is_dmarc(value: str) -> bool:
    return re.match(r"^v\s*=\s*dmarc1\s*(;|$)", _norm_txt(value), re.IGNORECASE) is not None


def suggested_dmarc(domain: str) -> str:
    return f"v=DMARC1; p=none; rua=mailto:dmarc@{_host(domain)}"


def _check_dmarc(record: DnsRecordLike, res: dns.resolver.Resolver) -> RecordCheck:
    """DMARC is advised, not required: a missing record is "advice", never a failure."""
    host = _host(record.host)
    domain = host.removeprefix("_dmarc.")
    answer = _lookup(res, host, "TXT")
    found = [v for v in answer.values if _is_dmarc(v)]
    if len(found) == 1:
        return _passed(record, found)
    if len(found) > 1:
        return _result(
            record,
            "advice",
            "dmarc_multiple",
            _(
                "%(count)s DMARC records found; receivers ignore DMARC when there is more than one.",
                count=len(found),
            ),
            _("Keep only one of them."),
            found,
        )
    return _result(
        record,
        "advice",
        "dmarc_missing",
        _(
            "No DMARC record found. It is optional, but it improves delivery and shows who abuses "
            "your domain."
        ),
        _(
            "Add a TXT record at %(host)s with the value %(value)s",
            host=host,
            # the value in the record's own row when it has one, so the two never differ
            value=record.value if record.value and _is_dmarc(record.value) else suggested_dmarc(domain),
        ),
        answer.values,
    )


# ----------------------------------------------------------------------------- domain facts


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    """The bundled public suffix list (loaded once; no network)."""
    return PublicSuffixList()


def registrable_domain(domain: str) -> str:
    """``newsletter.example.com.cn`` → ``example.com.cn``; "" for a public suffix itself."""
    return _psl().privatesuffix(_host(domain)) or ""


def domain_facts(domain: str, resolver: ResolverConfig) -> DomainFacts:
    """Apex or subdomain, and whether the domain already receives mail (has MX records)."""
    name = _host(domain)
    registrable = registrable_domain(name)
    mx_hosts: tuple[str, ...] = ()
    mx_error = ""
    try:
        answer = _lookup(make_resolver(resolver), name, "MX")
        mx_hosts = tuple(v.split()[-1] for v in answer.values)
    except _LookupFailed as failure:
        mx_error = failure.message
    except dns.resolver.NoResolverConfiguration:
        mx_error = _("no DNS server is configured on this machine")
    return DomainFacts(
        domain=name,
        is_apex=bool(registrable) and registrable == name,
        registrable=registrable,
        has_mx=bool(mx_hosts),
        mx_hosts=mx_hosts,
        mx_error=mx_error,
    )


# ----------------------------------------------------------------------------- validation

_ALLOWED = re.compile(r"[a-z0-9.-]")


def _describe(char: str) -> str:
    if char == "_":
        return _("an underscore (_)")
    if char.isspace():
        return _("a space")
    return _("the character “%(char)s”", char=char)


def validate_domain_name(name: str) -> str:
    """The normalized (lower-case, no trailing dot) sending domain, or InvalidInput(field="domain").

    Only what SendCloud and DNS accept for a mail domain: letters, digits, hyphens and dots.
    """

    def invalid(message: str) -> errors.InvalidInput:
        return errors.InvalidInput(message, field="domain")

    text = (name or "").strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text:
        raise invalid(_("Enter a domain name, for example newsletter.example.com."))
    lowered = text.lower()
    for position, char in enumerate(lowered, start=1):
        if not _ALLOWED.fullmatch(char):
            message = _(
                "%(what)s at position %(position)s is not allowed: use only letters a–z, digits "
                "0–9, hyphens (-) and dots.",
                what=_describe(text[position - 1]),
                position=position,
            )
            if not char.isascii():
                message += " " + _("Internationalized domain names must be entered in their xn-- form.")
            raise invalid(message)
    if len(lowered) > MAX_DOMAIN_LENGTH:
        raise invalid(
            _(
                "The name is %(length)s characters long; at most %(max)s are allowed.",
                length=len(lowered),
                max=MAX_DOMAIN_LENGTH,
            )
        )
    labels = lowered.split(".")
    position = 1
    for label in labels:
        if not label:
            raise invalid(
                _(
                    "Empty part at position %(position)s: two dots in a row, or a dot at the start.",
                    position=position,
                )
            )
        if len(label) > MAX_LABEL_LENGTH:
            raise invalid(
                _(
                    "The part “%(label)s” is %(length)s characters long; each part between dots may "
                    "have at most %(max)s.",
                    label=label,
                    length=len(label),
                    max=MAX_LABEL_LENGTH,
                )
            )
        if label.startswith("-") or label.endswith("-"):
            raise invalid(_("The part “%(label)s” must not start or end with a hyphen.", label=label))
        position += len(label) + 1
    if len(labels) < 2:
        raise invalid(_("Enter a full domain name with a dot, for example newsletter.example.com."))
    if labels[-1].isdigit():
        raise invalid(
            _(
                "The last part “%(label)s” cannot be only digits (IP addresses are not domain names).",
                label=labels[-1],
            )
        )
    for word in FORBIDDEN_WORDS:
        if word in lowered:
            raise invalid(_("SendCloud does not accept domain names containing “%(word)s”.", word=word))
    if not registrable_domain(lowered):
        raise invalid(
            _("%(name)s is a public suffix, not a domain you can own; use a domain below it.", name=lowered)
        )
    return lowered


__all__ = [
    "SPF_LOOKUP_LIMIT",
    "DnsRecordLike",
    "DomainFacts",
    "RecordCheck",
    "ResolverConfig",
    "check_records",
    "domain_facts",
    "make_resolver",
    "merge_spf",
    "registrable_domain",
    "suggested_dmarc",
    "validate_domain_name",
]
