"""A sending world for scheduler, executor and benchmark runs, on top of ``campaign_kit``: a fresh
SendCloud simulator account and the matching provider account, a sender, a template, tagged
contacts on a domain of the world's own (so several worlds share one workspace), and timed
campaigns on them."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy.orm import Session

from plugin.models import Campaign
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer

try:
    import campaign_kit as kit
except ImportError:  # imported from the repository root (benchmarks)
    from tests import campaign_kit as kit

_worlds = itertools.count(1)


@contextlib.contextmanager
def simulator_server() -> Iterator[SimulatorServer]:
    """A simulator on loopback; accepted mail is recorded at once, delivery events never come."""
    sim = SendCloudSimulator(deliver_delay=3600)
    with SimulatorServer(sim) as server:
        yield server


@dataclasses.dataclass
class World:
    workspace_id: int
    api_user: str
    account_id: int
    sender_id: int
    template_id: int
    tag_id: int
    emails: list[str]

    def recipients_seen(self, server: SimulatorServer) -> list[str]:
        """Every recipient the simulator accepted for this world's account (repeats included)."""
        return [m.recipient for m in server.simulator.mails() if m.api_user == self.api_user]


def build_world(
    session: Session,
    workspace_id: int,
    server: SimulatorServer,
    *,
    contacts: int,
    quota: int = 1_000_000,
    balance: str = "100000",
) -> World:
    n = next(_worlds)
    prefix = f"w{n}"
    api_user = f"sched_{prefix}_{id(server) % 10_000}"
    server.simulator.add_account(api_user, kit.API_KEY, quota=quota, balance=Decimal(balance))
    account = kit.sendcloud_account(session, workspace_id, api_user=api_user)
    sender = kit.sender(session, workspace_id, address=f"news-{prefix}@mail.example.com")
    template = kit.template(session, workspace_id)
    domain = f"{prefix}.example.net"
    tag = f"news-{prefix}"
    kit.contacts(session, workspace_id, contacts, tags=[tag], domain=domain)
    emails = [f"user{i}@{domain}" for i in range(contacts)]
    return World(
        workspace_id,
        api_user,
        account.id,
        sender.id,
        template.id,
        kit.tag_id(session, workspace_id, tag),
        emails,
    )


def add_campaign(
    session: Session,
    world: World,
    *,
    send_at: dt.datetime | None,
    name: str = "Timed campaign",
    send_rate: float | None = 0,
) -> Campaign:
    from plugin.models import ProviderAccount, Sender, Template

    campaign = kit.campaign(
        session,
        world.workspace_id,
        account=session.get(ProviderAccount, world.account_id),
        template=session.get(Template, world.template_id),
        sender=session.get(Sender, world.sender_id),
        include_tags=[world.tag_id],
        send_rate=send_rate,
        owner_id="1",
    )
    campaign.name = name
    campaign.send_at = send_at
    session.commit()
    return campaign
