"""DNS checks against real DNS answers from the loopback responder."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from plugin import errors
from plugin.config import load_settings
from plugin.dns_check import (
    RecordCheck,
    ResolverConfig,
    check_records,
    domain_facts,
    make_resolver,
    merge_spf,
    validate_domain_name,
)
from plugin.providers.sendcloud import DnsRecord
from plugin.sandbox.dns import DnsResponder

TIMEOUT = 0.5
DOMAIN = "news.example.com"
DKIM_KEY = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ" + "x" * 360 + "IDAQAB"

OWNERSHIP = DnsRecord("ownership", "TXT", DOMAIN, "sendcloud-site-verification=3f2a9c")
SPF = DnsRecord("spf", "TXT", DOMAIN, "v=spf1 include:spf.sendcloud.org ~all")
DKIM = DnsRecord("dkim", "TXT", f"mail._domainkey.{DOMAIN}", f"k=rsa;p={DKIM_KEY}")
MX = DnsRecord("mx", "MX", DOMAIN, "mx.sendcloud.org", 10)
DMARC = DnsRecord("dmarc", "TXT", f"_dmarc.{DOMAIN}", "v=DMARC1; p=none; rua=mailto:dmarc@sendcloud.org")
CNAME = DnsRecord("cname", "CNAME", f"links.{DOMAIN}", "track2.sendcloud.net")
ALL = [OWNERSHIP, SPF, DKIM, MX, DMARC, CNAME]


@pytest.fixture(scope="module")
def server() -> Iterator[DnsResponder]:
    with DnsResponder() as responder:
        yield responder


@pytest.fixture
def zone(server: DnsResponder) -> Iterator[DnsResponder]:
    server.clear()
    server.set("spf.sendcloud.org", "TXT", ["v=spf1 ip4:203.0.113.0/24 -all"])
    yield server
    server.clear()


@pytest.fixture
def config(server: DnsResponder) -> ResolverConfig:
    return ResolverConfig(nameservers=(server.host,), port=server.port, timeout=TIMEOUT)


def check(record: DnsRecord, config: ResolverConfig) -> RecordCheck:
    (result,) = check_records([record], config)
    return result


def publish_all(zone: DnsResponder) -> None:
    zone.set(DOMAIN, "TXT", [OWNERSHIP.value, SPF.value])
    zone.set(DKIM.host, "TXT", [DKIM.value])
    zone.set(DOMAIN, "MX", ["10 mx.sendcloud.org."])
    zone.set(DMARC.host, "TXT", [DMARC.value])
    zone.set(CNAME.host, "CNAME", ["track2.sendcloud.net."])


# ----------------------------------------------------------------------------- configuration


def test_resolver_config_from_settings_and_resolver() -> None:
    settings = load_settings(
        {"SECRET_KEY": "x", "MARKETING_DNS_NAMESERVERS": "127.0.0.1", "MARKETING_DNS_PORT": "5353"}
    )
    config = ResolverConfig.from_settings(settings)
    assert config.nameservers == ("127.0.0.1",)
    assert config.port == 5353
    res = make_resolver(ResolverConfig(nameservers=("127.0.0.1",), port=5353, timeout=1.5))
    assert (res.port, res.lifetime, res.cache) == (5353, 1.5, None)
    assert [str(ns) for ns in res.nameservers] == ["127.0.0.1"]


def test_empty_nameservers_uses_the_system_resolver() -> None:
    try:
        res = make_resolver(ResolverConfig(timeout=2.0))
    except Exception as exc:  # no /etc/resolv.conf in this container
        pytest.skip(f"no system resolver: {exc}")
    assert res.nameservers  # read from the system configuration
    assert res.lifetime == 2.0


# ----------------------------------------------------------------------------- all good


def test_every_record_passes_when_published(zone: DnsResponder, config: ResolverConfig) -> None:
    publish_all(zone)
    results = check_records(ALL, config)
    assert [(r.purpose, r.status, r.code) for r in results] == [(r.purpose, "pass", "pass") for r in ALL]
    by_purpose = {r.purpose: r for r in results}
    assert by_purpose["ownership"].found == (OWNERSHIP.value,)
    assert by_purpose["mx"].found == ("10 mx.sendcloud.org",)
    assert by_purpose["mx"].expected == "10 mx.sendcloud.org"
    assert by_purpose["cname"].found == ("track2.sendcloud.net",)
    assert "1 of 10" in by_purpose["spf"].message


# ----------------------------------------------------------------------------- ownership


def test_ownership_wrong_value_and_missing(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", ["sendcloud-site-verification=OLD", SPF.value])
    result = check(OWNERSHIP, config)
    assert (result.status, result.code) == ("fail", "txt_mismatch")
    assert result.found == ("sendcloud-site-verification=OLD",)
    assert OWNERSHIP.value in result.hint

    zone.set(DOMAIN, "TXT", [SPF.value])
    result = check(OWNERSHIP, config)
    assert (result.status, result.code) == ("fail", "txt_missing")
    assert OWNERSHIP.value in result.hint


# ----------------------------------------------------------------------------- SPF


def test_spf_missing(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", [OWNERSHIP.value])
    result = check(SPF, config)
    assert (result.status, result.code) == ("fail", "spf_missing")
    assert result.message == "No SPF record found."
    assert SPF.value in result.hint


def test_two_spf_records_fail_with_a_merged_suggestion(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", ["v=spf1 include:_spf.mailhost.example -all", SPF.value])
    result = check(SPF, config)
    assert (result.status, result.code) == ("fail", "spf_multiple")
    assert "2 SPF records" in result.message
    assert "RFC 7208" in result.message
    assert "v=spf1 include:_spf.mailhost.example include:spf.sendcloud.org -all" in result.hint
    assert len(result.found) == 2


def test_spf_without_our_include(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", ["v=spf1 mx ip4:198.51.100.4 ~all"])
    result = check(SPF, config)
    assert (result.status, result.code) == ("fail", "spf_include_missing")
    assert "include:spf.sendcloud.org" in result.message
    assert "v=spf1 mx ip4:198.51.100.4 include:spf.sendcloud.org ~all" in result.hint
    assert result.found == ("v=spf1 mx ip4:198.51.100.4 ~all",)


def test_spf_include_is_case_and_qualifier_insensitive(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", ["v=spf1 +include:SPF.SendCloud.org -all"])
    assert check(SPF, config).status == "pass"


def _chain(zone: DnsResponder, lookups: int) -> None:
    """The domain's record: our include (1 + the 0 lookups of spf.sendcloud.org) plus a chain of
    includes c1 → c2 → … each adding one lookup, so the whole evaluation needs ``lookups``."""
    depth = lookups - 1
    zone.set(DOMAIN, "TXT", ["v=spf1 include:spf.sendcloud.org include:c1.chain.example ~all"])
    for i in range(1, depth):
        zone.set(f"c{i}.chain.example", "TXT", [f"v=spf1 include:c{i + 1}.chain.example -all"])
    zone.set(f"c{depth}.chain.example", "TXT", ["v=spf1 ip4:192.0.2.1 -all"])


def test_spf_recursive_chain_of_eleven_lookups_fails(zone: DnsResponder, config: ResolverConfig) -> None:
    _chain(zone, 11)
    result = check(SPF, config)
    assert (result.status, result.code) == ("fail", "spf_too_many_lookups")
    assert "11 DNS lookups" in result.message


def test_spf_recursive_chain_of_nine_lookups_passes(zone: DnsResponder, config: ResolverConfig) -> None:
    _chain(zone, 9)
    result = check(SPF, config)
    assert (result.status, result.code) == ("pass", "pass")
    assert "9 of 10" in result.message


def test_spf_counts_a_mx_ptr_exists_redirect(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(
        DOMAIN,
        "TXT",
        ["v=spf1 a mx:mail.example.com ptr exists:%{i}.x.example include:spf.sendcloud.org ~all"],
    )
    assert "5 of 10" in check(SPF, config).message
    zone.set(DOMAIN, "TXT", ["v=spf1 include:spf.sendcloud.org redirect=r.example"])
    zone.set("r.example", "TXT", ["v=spf1 a a a -all"])
    assert "5 of 10" in check(SPF, config).message


def test_spf_include_loop_is_reported(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", ["v=spf1 include:spf.sendcloud.org include:loop-a.example ~all"])
    zone.set("loop-a.example", "TXT", ["v=spf1 include:loop-b.example -all"])
    zone.set("loop-b.example", "TXT", ["v=spf1 include:loop-a.example -all"])
    result = check(SPF, config)
    assert (result.status, result.code) == ("fail", "spf_loop")
    assert "loop-a.example → loop-b.example → loop-a.example" in result.message


def test_spf_include_that_does_not_resolve_counts_once(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.remove("spf.sendcloud.org")
    zone.set(DOMAIN, "TXT", [SPF.value])
    result = check(SPF, config)
    assert result.status == "pass"
    assert "1 of 10" in result.message


def test_merge_spf_keeps_one_all_and_drops_duplicates() -> None:
    merged = merge_spf(
        ["v=spf1 mx include:a.example ~all", "v=spf1 include:A.example ip4:192.0.2.1 -all"],
        ["include:spf.sendcloud.org"],
    )
    assert merged == "v=spf1 mx include:a.example ip4:192.0.2.1 include:spf.sendcloud.org ~all"


# ----------------------------------------------------------------------------- DKIM


def test_dkim_long_key_split_into_several_strings_passes(zone: DnsResponder, config: ResolverConfig) -> None:
    value = f"v=DKIM1; k=rsa; p={DKIM_KEY}"
    assert len(value) > 255  # the responder splits it like a real zone
    zone.set(DKIM.host, "TXT", [value])
    result = check(DKIM, config)
    assert (result.status, result.code) == ("pass", "pass")
    assert result.found == (value,)  # joined back into one value


def test_dkim_missing_and_wrong_key(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DKIM.host, "TXT", [f"k=rsa;p={DKIM_KEY[:-10]}"])  # pasted cut short
    result = check(DKIM, config)
    assert (result.status, result.code) == ("fail", "dkim_mismatch")
    assert DKIM.value in result.hint

    zone.set(DKIM.host, "TXT", ["something else"])
    assert check(DKIM, config).code == "dkim_missing"

    zone.remove(DKIM.host)
    zone.set(DOMAIN, "TXT", [SPF.value])
    result = check(DKIM, config)
    assert (result.status, result.code) == ("fail", "nxdomain")
    assert result.message == f"{DKIM.host} does not exist in DNS yet"
    assert "48 hours" in result.hint


# ----------------------------------------------------------------------------- MX, CNAME, DMARC


def test_mx_present_other_and_missing(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "MX", ["20 backup.example.com.", "10 MX.SendCloud.org."])
    assert check(MX, config).status == "pass"
    zone.set(DOMAIN, "MX", ["10 mail.example.com."])
    result = check(MX, config)
    assert (result.status, result.code, result.found) == ("fail", "mx_mismatch", ("10 mail.example.com",))
    zone.set(DOMAIN, "MX", [])
    assert check(MX, config).code == "mx_missing"


def test_cname_mismatch_and_missing(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(CNAME.host, "CNAME", ["elsewhere.example.net"])
    result = check(CNAME, config)
    assert (result.status, result.code) == ("fail", "cname_mismatch")
    zone.set(CNAME.host, "CNAME", [])
    assert check(CNAME, config).code == "cname_missing"


def test_dmarc_missing_is_advice_with_a_proposal(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set(DOMAIN, "TXT", [SPF.value])
    result = check(DMARC, config)
    assert (result.status, result.code) == ("advice", "dmarc_missing")
    assert result.ok
    assert DMARC.value in result.hint, "the hint proposes the value shown in the record's row"
    own = DnsRecord("dmarc", "TXT", DMARC.host, "")  # a record without a value: our proposal
    assert f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}" in check(own, config).hint
    zone.set(DMARC.host, "TXT", ["v=DMARC1; p=reject"])
    assert check(DMARC, config).status == "pass"


# ----------------------------------------------------------------------------- server trouble


def test_nxdomain_for_the_domain_itself(zone: DnsResponder, config: ResolverConfig) -> None:
    results = check_records([OWNERSHIP, SPF, MX], config)
    assert {(r.status, r.code) for r in results} == {("fail", "nxdomain")}
    assert results[0].message == f"{DOMAIN} does not exist in DNS yet"


def test_servfail_is_an_error(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.fail(DOMAIN, "SERVFAIL")
    result = check(SPF, config)
    assert (result.status, result.code) == ("error", "servfail")
    assert result.message == "the DNS server failed to answer (SERVFAIL)"
    zone.fail(DOMAIN, "REFUSED")
    assert check(SPF, config).code == "refused"


def test_hanging_server_times_out_within_the_timeout(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.hang(DKIM.host)
    started = time.monotonic()
    result = check(DKIM, config)
    elapsed = time.monotonic() - started
    assert (result.status, result.code) == ("error", "timeout")
    assert result.message == "the DNS server did not answer within 0.5 s"
    assert elapsed < TIMEOUT + 1.0


def test_no_reachable_nameserver_is_an_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = check(SPF, ResolverConfig(nameservers=("127.0.0.1",), port=port, timeout=TIMEOUT))
    assert result.status == "error"
    assert result.code in ("unreachable", "timeout")


# ----------------------------------------------------------------------------- domain facts


def test_domain_facts_apex_with_mx(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.set("example.com", "MX", ["10 mail.example.com.", "20 backup.example.com."])
    facts = domain_facts("Example.COM.", config)
    assert (facts.domain, facts.is_apex, facts.registrable) == ("example.com", True, "example.com")
    assert facts.has_mx
    assert facts.mx_hosts == ("mail.example.com", "backup.example.com")
    assert facts.suggested_subdomain == "newsletter.example.com"


def test_domain_facts_subdomain_without_mx(zone: DnsResponder, config: ResolverConfig) -> None:
    facts = domain_facts("newsletter.example.com", config)  # NXDOMAIN → no MX
    assert (facts.is_apex, facts.registrable, facts.has_mx, facts.mx_hosts) == (
        False,
        "example.com",
        False,
        (),
    )
    assert facts.mx_error == ""


def test_domain_facts_multi_part_public_suffix(zone: DnsResponder, config: ResolverConfig) -> None:
    assert domain_facts("example.com.cn", config).is_apex
    facts = domain_facts("mail.example.com.cn", config)
    assert (facts.is_apex, facts.registrable) == (False, "example.com.cn")


def test_domain_facts_reports_a_failed_mx_lookup(zone: DnsResponder, config: ResolverConfig) -> None:
    zone.fail("example.org", "SERVFAIL")
    facts = domain_facts("example.org", config)
    assert facts.mx_error == "the DNS server failed to answer (SERVFAIL)"
    assert not facts.has_mx


# ----------------------------------------------------------------------------- domain names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("newsletter.example.com", "newsletter.example.com"),
        ("  News.Example.COM. ", "news.example.com"),
        ("mail-1.example.com.cn", "mail-1.example.com.cn"),
        ("xn--fiqs8s.example.com", "xn--fiqs8s.example.com"),
    ],
)
def test_valid_domain_names(given: str, expected: str) -> None:
    assert validate_domain_name(given) == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("news_letter.example.com", "an underscore (_) at position 5"),
        ("news letter.example.com", "a space at position 5"),
        ("邮件.example.com", "the character “邮” at position 1"),
        ("example.中文", "the character “中” at position 9"),
        ("news@example.com", "the character “@” at position 5"),
        ("-news.example.com", "must not start or end with a hyphen"),
        ("news-.example.com", "must not start or end with a hyphen"),
        ("a" * 64 + ".example.com", "64 characters long; each part between dots may have at most 63"),
        (".".join(["a" * 60] * 5), "at most 253"),
        ("localhost", "with a dot"),
        ("news..example.com", "two dots in a row"),
        ("192.168.1.1", "only digits"),
        ("mysendcloud.example.com", "“sendcloud”"),
        ("mail.ifaxin.cn", "“ifaxin”"),
        ("com.cn", "public suffix"),
        ("", "Enter a domain name"),
    ],
)
def test_invalid_domain_names(given: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        validate_domain_name(given)
    assert caught.value.field == "domain"
    assert fragment in str(caught.value)


def test_non_ascii_names_get_the_punycode_hint() -> None:
    with pytest.raises(errors.InvalidInput, match="xn--"):
        validate_domain_name("中文.com")
