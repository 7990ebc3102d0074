"""MX check of recipient domains against the loopback DNS responder: verdicts, cache, time budget,
and the freeze skipping domains that cannot receive mail."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from plugin.campaigns.audience import freeze
from plugin.directory import SqlDirectory
from plugin.dns_check import ResolverConfig
from plugin.models import CampaignRecipient
from plugin.mx_check import DomainCache, check_domains
from plugin.sandbox.dns import DnsResponder
from tests.test_audience import add_contacts, add_tag, make_campaign

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server() -> Iterator[DnsResponder]:
    with DnsResponder() as responder:
        yield responder


@pytest.fixture
def zone(server: DnsResponder) -> Iterator[DnsResponder]:
    server.clear()
    server.set("good.example", "MX", ["10 mx.good.example."])
    server.set("nullmx.example", "MX", ["0 ."])
    server.set("aonly.example", "A", ["192.0.2.10"])
    server.set("nodata.example", "TXT", ["v=spf1 -all"])
    yield server
    server.clear()


@pytest.fixture
def config(server: DnsResponder) -> ResolverConfig:
    return ResolverConfig(nameservers=(server.host,), port=server.port, timeout=TIMEOUT)


def test_verdicts(zone, config):
    zone.fail("broken.example", "SERVFAIL")
    report = check_domains(
        [
            "good.example",
            "GOOD.example.",
            "nullmx.example",
            "aonly.example",
            "nodata.example",
            "missing.example",
            "broken.example",
        ],
        resolver=config,
        budget_seconds=10,
        cache=DomainCache(),
    )
    assert report.verdicts == {
        "good.example": "ok",
        "nullmx.example": "no_mx",  # RFC 7505: accepts no mail
        "aonly.example": "ok",  # no MX: the address record is the implicit MX
        "nodata.example": "no_mx",  # exists, but neither MX nor address
        "missing.example": "no_mx",  # NXDOMAIN
        "broken.example": "unknown",  # SERVFAIL is not a definite answer
    }
    assert report.bad == {"nullmx.example", "nodata.example", "missing.example"}
    assert report.unchecked == 0


def test_cache_answers_without_asking_again(zone, config):
    cache = DomainCache()
    check_domains(["good.example", "missing.example"], resolver=config, budget_seconds=10, cache=cache)
    before = zone.queries
    zone.set("missing.example", "MX", ["10 mx.missing.example."])  # would now be ok, but cached
    report = check_domains(
        ["good.example", "missing.example"], resolver=config, budget_seconds=10, cache=cache
    )
    assert zone.queries == before
    assert report.verdicts == {"good.example": "ok", "missing.example": "no_mx"}


def test_cache_entries_expire(zone, config):
    now = [1000.0]
    cache = DomainCache(ttl=60, clock=lambda: now[0])
    check_domains(["missing.example"], resolver=config, budget_seconds=10, cache=cache)
    zone.set("missing.example", "MX", ["10 mx.missing.example."])
    now[0] += 61
    report = check_domains(["missing.example"], resolver=config, budget_seconds=10, cache=cache)
    assert report.verdicts == {"missing.example": "ok"}


def test_hanging_domain_stops_at_the_budget(zone, config):
    zone.hang("slow.example")
    zone.hang("slower.example")
    slow_config = dataclasses.replace(config, timeout=30.0)  # only the budget can stop it
    started = time.monotonic()
    report = check_domains(
        ["good.example", "slow.example", "slower.example", "missing.example"],
        resolver=slow_config,
        budget_seconds=1.5,
        cache=DomainCache(),
        workers=2,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, elapsed
    assert report.verdicts["slow.example"] == "unknown"
    assert report.verdicts["slower.example"] == "unknown"
    # both workers were stuck on the hanging names: the domain never reached is unknown, not bad
    assert report.verdicts["missing.example"] == "unknown"
    assert report.unchecked == 1
    assert report.bad == set()
    assert report.verdicts["good.example"] == "ok"


def test_zero_budget_checks_nothing(zone, config):
    before = zone.queries
    report = check_domains(["good.example"], resolver=config, budget_seconds=0, cache=DomainCache())
    assert report.verdicts == {"good.example": "unknown"}
    assert report.unchecked == 1
    assert zone.queries == before


@dataclasses.dataclass(frozen=True)
class MxSettings:
    mx_check: bool = True
    mx_check_budget_seconds: float = 2.0
    dns_nameservers: tuple[str, ...] = ()
    dns_port: int = 53
    dns_timeout: float = TIMEOUT


def test_freeze_skips_domains_without_mail_within_the_budget(session, workspace, zone, config):
    zone.hang("hangs.example")
    people = [
        {"email": "a@good.example"},
        {"email": "b@good.example"},
        {"email": "c@nullmx.example"},
        {"email": "d@missing.example"},
        {"email": "e@aonly.example"},
        {"email": "f@hangs.example"},
    ]
    ids = add_contacts(session, workspace.id, people)
    tag = add_tag(session, workspace.id, "all", ids.values())
    campaign = make_campaign(session, workspace.id, audience={"include_tags": [tag]}, template_ids=[1])
    settings = MxSettings(dns_nameservers=(config.nameservers[0],), dns_port=config.port)
    started = time.monotonic()
    counts = freeze(session, SqlDirectory(), campaign, settings=settings, mx_cache=DomainCache())
    assert time.monotonic() - started < settings.mx_check_budget_seconds + 2.0
    rows = {
        email: (status, reason)
        for email, status, reason in session.execute(
            select(CampaignRecipient.email, CampaignRecipient.status, CampaignRecipient.reason).where(
                CampaignRecipient.campaign_id == campaign.id
            )
        )
    }
    assert rows == {
        "a@good.example": ("pending", None),
        "b@good.example": ("pending", None),
        "c@nullmx.example": ("skipped", "no_mx"),
        "d@missing.example": ("skipped", "no_mx"),
        "e@aonly.example": ("pending", None),
        "f@hangs.example": ("pending", None),  # unknown keeps its mail
    }
    assert (counts.invalid, counts.final) == (2, 4)
    assert campaign.skipped == 2
    assert campaign.total == 4


def test_freeze_without_mx_check_asks_nothing(session, workspace, zone, config):
    ids = add_contacts(session, workspace.id, [{"email": "d@missing.example"}])
    tag = add_tag(session, workspace.id, "all", ids.values())
    campaign = make_campaign(session, workspace.id, audience={"include_tags": [tag]})
    before = zone.queries
    settings = MxSettings(mx_check=False, dns_nameservers=(config.nameservers[0],), dns_port=config.port)
    assert freeze(session, SqlDirectory(), campaign, settings=settings).final == 1
    assert zone.queries == before
