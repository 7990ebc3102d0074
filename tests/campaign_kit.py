"""Builders for campaign tests: a SendCloud or SMTP account, a sender, a template, tagged contacts
and a campaign, written with the plugin's own models (no shortcuts around the services that the
runner reads from)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import insert, select

from plugin.extension import get_state
from plugin.models import (
    Campaign,
    CampaignRecipient,
    Contact,
    ContactTag,
    ProviderAccount,
    Sender,
    Tag,
    Template,
)

API_USER = "kit_batch"
API_KEY = "kit-batch-key-0123456789"


def sendcloud_account(
    session, workspace_id: int, *, api_user: str = API_USER, api_key: str = API_KEY
) -> ProviderAccount:
    secrets = get_state().secrets
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="sendcloud",
        name="SendCloud",
        api_user=api_user,
        api_key_encrypted=secrets.encrypt(api_key),
        batch_api_user=api_user,
        batch_api_key_encrypted=secrets.encrypt(api_key),
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
    rate: float = 0.0,
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


def sender(session, workspace_id: int, *, address: str = "news@mail.example.com") -> Sender:
    row = Sender(
        workspace_id=workspace_id,
        from_address=address,
        from_name="Example News",
        reply_to="reply@example.com",
        company_name="Example Ltd",
        postal_address="1 Example Road, Shanghai",
        is_default=True,
    )
    session.add(row)
    session.commit()
    return row


def template(
    session, workspace_id: int, *, subject: str = "Hello {name|friend}", html: str | None = None
) -> Template:
    row = Template(
        workspace_id=workspace_id,
        name="Kit template",
        subject=subject,
        html=html or "<p>Dear {name|friend}, your mail is {email}.</p>",
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
    ids = list(
        session.scalars(
            select(Contact.id)
            .where(Contact.workspace_id == workspace_id, Contact.email.in_([r["email"] for r in rows]))
            .order_by(Contact.id)
        )
    )
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


def recipient_statuses(session, campaign_id: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in session.scalars(
        select(CampaignRecipient.status).where(CampaignRecipient.campaign_id == campaign_id)
    ):
        counts[status] = counts.get(status, 0) + 1
    return counts
