"""The loopback DNS responder answers real dnspython queries over UDP and TCP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from plugin.providers.sendcloud import DnsRecord
from plugin.sandbox.dns import DnsResponder

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def server() -> Iterator[DnsResponder]:
    with DnsResponder() as responder:
        yield responder


@pytest.fixture
def responder(server: DnsResponder) -> Iterator[DnsResponder]:
    server.clear()
    yield server
    server.clear()


def query(responder: DnsResponder, name: str, rtype: str, *, tcp: bool = False) -> dns.message.Message:
    message = dns.message.make_query(name, rtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(message, responder.host, port=responder.port, timeout=2)


def resolver_for(responder: DnsResponder) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [responder.host]
    res.port = responder.port
    res.lifetime = TIMEOUT
    res.cache = None
    return res


def txt_values(response: dns.message.Message) -> list[list[bytes]]:
    return [list(rdata.strings) for rrset in response.answer for rdata in rrset]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_answers_txt_mx_cname_a_over_both_protocols(responder: DnsResponder, tcp: bool) -> None:
    responder.set("example.com", "TXT", ["v=spf1 include:spf.sendcloud.org ~all"])
    responder.set("example.com", "MX", ["5 mx.sendcloud.org."])
    responder.set("track.example.com", "CNAME", ["track2.sendcloud.net"])
    responder.set("example.com", "A", ["192.0.2.7"])

    txt = query(responder, "example.com", "TXT", tcp=tcp)
    assert txt.rcode() == dns.rcode.NOERROR
    assert txt_values(txt) == [[b"v=spf1 include:spf.sendcloud.org ~all"]]
    mx = query(responder, "example.com", "MX", tcp=tcp).answer[0][0]
    assert (mx.preference, mx.exchange.to_text()) == (5, "mx.sendcloud.org.")
    cname = query(responder, "track.example.com", "CNAME", tcp=tcp).answer[0][0]
    assert cname.target.to_text() == "track2.sendcloud.net."
    a = query(responder, "example.com", "A", tcp=tcp).answer[0][0]
    assert a.address == "192.0.2.7"


def test_udp_and_tcp_share_one_port(responder: DnsResponder) -> None:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe, pytest.raises(OSError, match="in use"):
            probe.bind((responder.host, responder.port))


def test_resolver_with_tcp_flag(responder: DnsResponder) -> None:
    responder.set("example.com", "TXT", ["hello"])
    answer = resolver_for(responder).resolve("example.com.", "TXT", tcp=True)
    assert [b"".join(r.strings) for r in answer] == [b"hello"]


def test_names_are_case_insensitive_and_trailing_dot_optional(responder: DnsResponder) -> None:
    responder.set("Mail._DomainKey.Example.COM.", "TXT", ["k=rsa;p=KEY"])
    assert txt_values(query(responder, "mail._domainkey.example.com", "TXT")) == [[b"k=rsa;p=KEY"]]
    assert txt_values(query(responder, "MAIL._domainkey.EXAMPLE.com.", "TXT")) == [[b"k=rsa;p=KEY"]]
    responder.remove("mail._domainkey.example.com.")
    assert query(responder, "mail._domainkey.example.com", "TXT").rcode() == dns.rcode.NXDOMAIN


def test_long_txt_is_split_into_255_byte_strings(responder: DnsResponder) -> None:
    value = "k=rsa;p=" + "A" * 600
    responder.set("mail._domainkey.example.com", "TXT", [value])
    for tcp in (False, True):
        (strings,) = txt_values(query(responder, "mail._domainkey.example.com", "TXT", tcp=tcp))
        assert [len(s) for s in strings] == [255, 255, 98]
        assert b"".join(strings).decode() == value


def test_unknown_name_is_nxdomain_known_name_without_type_is_nodata(responder: DnsResponder) -> None:
    responder.set("mail._domainkey.example.com", "TXT", ["k=rsa;p=KEY"])
    responder.set("example.com", "MX", ["10 mx.example.com."])

    assert query(responder, "nothing.example.com", "TXT").rcode() == dns.rcode.NXDOMAIN
    nodata = query(responder, "example.com", "TXT")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    # an empty non-terminal exists too (as in real zones)
    ent = query(responder, "_domainkey.example.com", "TXT")
    assert (ent.rcode(), ent.answer) == (dns.rcode.NOERROR, [])
    with pytest.raises(dns.resolver.NoAnswer):
        resolver_for(responder).resolve("example.com.", "TXT")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver_for(responder).resolve("nothing.example.com.", "TXT")


def test_set_replaces_remove_by_type_and_clear(responder: DnsResponder) -> None:
    responder.set("example.com", "TXT", ["one", "two"])
    responder.set("example.com", "TXT", ["three"])
    responder.set("example.com", "MX", ["10 mx.example.com"])
    assert txt_values(query(responder, "example.com", "TXT")) == [[b"three"]]
    responder.remove("example.com", "TXT")
    assert query(responder, "example.com", "TXT").answer == []
    assert query(responder, "example.com", "MX").answer != []
    responder.clear()
    assert query(responder, "example.com", "MX").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED", "NXDOMAIN"])
def test_fail_answers_the_given_rcode(responder: DnsResponder, rcode: str) -> None:
    responder.set("example.com", "TXT", ["present"])
    responder.fail("example.com", rcode)
    for tcp in (False, True):
        assert query(responder, "example.com", "TXT", tcp=tcp).rcode() == dns.rcode.from_text(rcode)
    responder.heal("example.com")
    assert txt_values(query(responder, "example.com", "TXT")) == [[b"present"]]


def test_fail_rejects_unknown_rcode(responder: DnsResponder) -> None:
    with pytest.raises(ValueError, match="rcode"):
        responder.fail("example.com", "BOGUS")


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_hang_never_answers_so_the_client_times_out(responder: DnsResponder, tcp: bool) -> None:
    responder.set("slow.example.com", "TXT", ["never seen"])
    responder.hang("slow.example.com")
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver_for(responder).resolve("slow.example.com.", "TXT", tcp=tcp)
    assert time.monotonic() - started < TIMEOUT + 1.0
    # other names keep working meanwhile
    responder.set("fast.example.com", "TXT", ["ok"])
    assert txt_values(query(responder, "fast.example.com", "TXT", tcp=tcp)) == [[b"ok"]]


def test_cname_is_followed_inside_the_zone(responder: DnsResponder) -> None:
    responder.set("alias.example.com", "CNAME", ["target.example.com."])
    responder.set("target.example.com", "TXT", ["at target"])
    answer = resolver_for(responder).resolve("alias.example.com.", "TXT")
    assert [b"".join(r.strings) for r in answer] == [b"at target"]


def test_invalid_values_are_refused_when_set(responder: DnsResponder) -> None:
    with pytest.raises(ValueError, match="A value"):
        responder.set("example.com", "A", ["not-an-ip"])
    with pytest.raises(ValueError, match="unsupported"):
        responder.set("example.com", "SRV", ["0 5 5060 sip.example.com"])
    with pytest.raises(TypeError):
        responder.set("example.com", "TXT", "a string, not a list")  # type: ignore[arg-type]


def test_publish_provider_records(responder: DnsResponder) -> None:
    responder.publish(
        [
            DnsRecord("ownership", "TXT", "news.example.com", "sendcloud-site-verification=abc"),
            DnsRecord("spf", "TXT", "news.example.com", "v=spf1 include:spf.sendcloud.org ~all"),
            DnsRecord("mx", "MX", "news.example.com", "mx.sendcloud.org", 10),
        ]
    )
    assert sorted(v[0] for v in txt_values(query(responder, "news.example.com", "TXT"))) == [
        b"sendcloud-site-verification=abc",
        b"v=spf1 include:spf.sendcloud.org ~all",
    ]
    assert responder.get("news.example.com", "MX") == ["10 mx.sendcloud.org"]


def test_zone_changes_while_queries_run(responder: DnsResponder) -> None:
    """Thread safety: editing the zone during concurrent queries never breaks an answer."""
    problems: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            response = query(responder, "busy.example.com", "TXT")
            if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                problems.append(dns.rcode.to_text(response.rcode()))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(200):
        responder.set("busy.example.com", "TXT", [f"value {i}"])
        responder.remove("busy.example.com")
    stop.set()
    for thread in threads:
        thread.join()
    assert problems == []


def test_fixed_port_and_restart() -> None:
    first = DnsResponder().start()
    port = first.port
    first.stop()
    second = DnsResponder(port=port)
    with second:
        second.set("example.com", "TXT", ["again"])
        assert txt_values(query(second, "example.com", "TXT", tcp=True)) == [[b"again"]]
    assert not second.running
