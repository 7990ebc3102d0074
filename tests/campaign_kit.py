"""Builders for campaign tests: a SendCloud or SMTP account, a sender, a template, tagged contacts
and a campaign, written with the plugin's own models (no shortcuts around the services that the
runner reads from); and Acme, a SendCloud simulator account with a trigger API_USER under it, for
the template and trigger-mail tests."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import insert, select

from plugin.extension import get_state
from plugin.models import (
    Campaign,
    CampaignRecipient,
    Contact,
    ContactTag,
    ProviderAccount,
    SendBatch,
    Sender,
    Tag,
    Template,
)
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer

API_USER = "kit_batch"
API_KEY = "kit-batch-key-0123456789"

# Acme: a batch API_USER and a trigger API_USER under it, as SendCloud hands them out.
BATCH_USER, BATCH_KEY = "acme_batch", "batch-key-0123456789abcdef"
TRIGGER_USER, TRIGGER_KEY = "acme_trigger", "trigger-key-0123456789abcdef"


def sendcloud_account(
    session,
    workspace_id: int,
    *,
    api_user: str = API_USER,
    api_key: str = API_KEY,
    trigger_api_user: str | None = None,
    trigger_api_key: str | None = None,
    name: str = "SendCloud",
) -> ProviderAccount:
    """The main API_USER serves batch mail too; trigger mail gets its own only when one is given
    (without one the plugin falls back to the main API_USER)."""
    secrets = get_state().secrets
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="sendcloud",
        name=name,
        api_user=api_user,
        api_key_encrypted=secrets.encrypt(api_key),
        batch_api_user=api_user,
        batch_api_key_encrypted=secrets.encrypt(api_key),
        trigger_api_user=trigger_api_user,
        trigger_api_key_encrypted=secrets.encrypt(trigger_api_key) if trigger_api_key else None,
    )
    session.add(account)
    session.commit()
    return account


def smtp_account(
    session,
    workspace_id: int,
    *,
    host: str,
    port: int,
    security: str = "none",
    username: str = "",
    password: str = "",
    from_address: str = "news@example.com",
    rate: float | None = 0.0,
    daily_limit: int | None = None,
) -> ProviderAccount:
    secrets = get_state().secrets
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="smtp",
        name="Mailbox",
        smtp_host=host,
        smtp_port=port,
        smtp_security=security,
        smtp_username=username or None,
        smtp_password_encrypted=secrets.encrypt(password) if password else None,
        from_address=from_address,
        send_rate=rate,
        daily_limit=daily_limit,
    )
    session.add(account)
    session.commit()
    return account


def sender(
    session,
    workspace_id: int,
    *,
    address: str = "news@mail.example.com",
    from_name: str | None = "Example News",
    reply_to: str | None = "reply@example.com",
    company_name: str | None = "Example Ltd",
    postal_address: str | None = "1 Example Road, Shanghai",
) -> Sender:
    row = Sender(
        workspace_id=workspace_id,
        from_address=address,
        from_name=from_name,
        reply_to=reply_to,
        company_name=company_name,
        postal_address=postal_address,
        is_default=True,
    )
    session.add(row)
    session.commit()
    return row


def template(
    session,
    workspace_id: int,
    *,
    name: str = "Kit template",
    subject: str = "Hello {name|friend}",
    html: str | None = None,
    variables: Sequence[str] = (),
) -> Template:
    row = Template(
        workspace_id=workspace_id,
        name=name,
        subject=subject,
        html=html or "<p>Dear {name|friend}, your mail is {email}.</p>",
        variables=list(variables),
    )
    session.add(row)
    session.commit()
    return row


def contacts(
    session,
    workspace_id: int,
    n: int,
    *,
    tags: Sequence[str] = (),
    start: int = 0,
    domain: str = "example.net",
) -> list[int]:
    """``n`` contacts ``user<i>@<domain>`` with names, tagged with ``tags``; returns their ids."""
    tag_ids = []
    for name in tags:
        tag = session.scalar(select(Tag).where(Tag.workspace_id == workspace_id, Tag.name == name))
        if tag is None:
            tag = Tag(workspace_id=workspace_id, name=name)
            session.add(tag)
            session.flush()
        tag_ids.append(tag.id)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "workspace_id": workspace_id,
            "email": f"user{i}@{domain}",
            "email_domain": domain,
            "email_local": f"user{i}",
            "name": f"Name{i}",
            "custom": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(start, start + n)
    ]
    session.execute(insert(Contact), rows)
    ids: list[int] = []
    emails = [r["email"] for r in rows]
    for chunk in range(0, len(emails), 10_000):  # PostgreSQL takes at most 65,535 parameters
        ids += session.scalars(
            select(Contact.id).where(
                Contact.workspace_id == workspace_id, Contact.email.in_(emails[chunk : chunk + 10_000])
            )
        )
    ids.sort()
    if tag_ids:
        session.execute(insert(ContactTag), [{"contact_id": c, "tag_id": t} for c in ids for t in tag_ids])
    session.commit()
    return ids


def tag_id(session, workspace_id: int, name: str) -> int:
    return session.scalar(select(Tag.id).where(Tag.workspace_id == workspace_id, Tag.name == name))


def campaign(
    session,
    workspace_id: int,
    *,
    account: ProviderAccount,
    template: Template,
    sender: Sender,
    include_tags: Sequence[int] = (),
    exclude_tags: Sequence[int] = (),
    include_views: Sequence[int] = (),
    exclude_views: Sequence[int] = (),
    status: str = "scheduled",
    send_rate: float | None = 0,
    owner_id: str | None = None,
) -> Campaign:
    row = Campaign(
        workspace_id=workspace_id,
        name="Kit campaign",
        status=status,
        account_id=account.id,
        audience={
            "include_tags": list(include_tags),
            "include_views": list(include_views),
            "exclude_tags": list(exclude_tags),
            "exclude_views": list(exclude_views),
        },
        template_ids=[template.id],
        sender_ids=[sender.id],
        send_rate=send_rate,
        tracking=False,
        owner_id=owner_id,
    )
    session.add(row)
    session.commit()
    return row


def tagged_campaign(
    session,
    workspace_id: int,
    n: int,
    *,
    account: ProviderAccount,
    template: Template,
    sender: Sender,
    tag: str = "all",
    **options: Any,
) -> Campaign:
    """``n`` contacts tagged ``tag`` and a campaign whose audience is that tag (``options`` go to
    ``campaign``): the audience most sending tests need, so each names only its size."""
    contacts(session, workspace_id, n, tags=[tag])
    return campaign(
        session,
        workspace_id,
        account=account,
        template=template,
        sender=sender,
        include_tags=[tag_id(session, workspace_id, tag)],
        **options,
    )


@contextlib.contextmanager
def acme_simulator(*, seed: int) -> Iterator[SendCloudSimulator]:
    """A SendCloud simulator on loopback (its ``url`` set) that knows Acme's batch API_USER and
    the trigger API_USER under it; mail is delivered at once."""
    simulator = SendCloudSimulator(deliver_delay=0, seed=seed)
    simulator.add_account(BATCH_USER, BATCH_KEY, quota=1000)
    simulator.add_api_user(BATCH_USER, TRIGGER_USER, TRIGGER_KEY, email_type="trigger")
    with SimulatorServer(simulator) as server:
        simulator.url = server.url
        yield simulator


def acme_account(
    session,
    workspace_id: int,
    *,
    address: str = "news@mail.example.com",
    from_name: str = "Acme",
) -> ProviderAccount:
    """Acme's SendCloud account (batch and trigger API_USERs of ``acme_simulator``) and its default
    sender, whose company and postal address make the footer the tests look for."""
    account = sendcloud_account(
        session,
        workspace_id,
        api_user=BATCH_USER,
        api_key=BATCH_KEY,
        trigger_api_user=TRIGGER_USER,
        trigger_api_key=TRIGGER_KEY,
    )
    sender(
        session,
        workspace_id,
        address=address,
        from_name=from_name,
        reply_to=None,
        company_name="Acme Ltd",
        postal_address="1 Road, Shanghai",
    )
    return account


def recipient_statuses(session, campaign_id: int) -> dict[str, int]:
    """Recipients per status, the members of an open batch claimed as a range (PostgreSQL's
    SendCloud claim: still ``pending`` in their rows until recorded) counted as ``sending``, as
    a claim that marks its members stores them."""
    ranges = session.execute(
        select(SendBatch.range_after, SendBatch.range_upto, SendBatch.template_id, SendBatch.sender_id).where(
            SendBatch.campaign_id == campaign_id,
            SendBatch.status.in_(("claimed", "sending")),
            SendBatch.range_upto.is_not(None),
        )
    ).all()
    counts: dict[str, int] = {}
    rows = session.execute(
        select(
            CampaignRecipient.id,
            CampaignRecipient.status,
            CampaignRecipient.batch_id,
            CampaignRecipient.template_id,
            CampaignRecipient.sender_id,
        ).where(CampaignRecipient.campaign_id == campaign_id)
    )
    for rid, status, batch_id, template_id, sender_id in rows:
        if (
            status == "pending"
            and batch_id is None
            and any(
                after < rid <= upto and (t, s) == (template_id, sender_id) for after, upto, t, s in ranges
            )
        ):
            status = "sending"
        counts[status] = counts.get(status, 0) + 1
    return counts
