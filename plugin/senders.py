"""Senders: the From addresses campaigns send as, kept after the setup wizard.

Why a service of its own: the wizard stores one default sender, but a campaign may rotate
several (``Campaign.sender_ids``) and a company sends as news@, events@ and its sales people
from the same bound domain.  The wizard's last step and the senders page share these rules:

* the address must be on one of the workspace's sending domains (SendCloud refuses any other,
  and only those domains carry the SPF and DKIM records that make the mail pass DMARC);
* the footer fields are required, because every mail prints them;
* a new or changed Reply-To is unconfirmed until its owner opens the link mailed to it (the
  caller sends that mail, see ``SetupWizard.send_reply_to_confirmation``);
* exactly one sender is the default (preselected in the campaign form, used by trigger mail),
  and only a sender whose Reply-To is confirmed can become it;
* a Reply-To the workspace already confirmed for another sender counts as confirmed;
* a sender a campaign names is never deleted: its statistics and recipients refer to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .addresses import normalize_email, split_email
from .errors import InvalidInput, InvalidTransition, NotFound
from .i18n import _
from .models import Campaign, Sender, SendingDomain
from .schemas.senders import SenderIn


class SenderErrors(InvalidInput):
    """Several sender fields are wrong at once; ``errors`` maps each field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        first_field, first_message = next(iter(errors.items()))
        super().__init__(first_message, field=first_field)
        self.errors = errors


def sending_domains(session: Session, workspace_id: int) -> list[SendingDomain]:
    return list(
        session.scalars(
            select(SendingDomain)
            .where(SendingDomain.workspace_id == workspace_id)
            .order_by(SendingDomain.name)
        )
    )


def load(data: Mapping[str, Any], domains: Sequence[SendingDomain]) -> tuple[dict[str, str], SendingDomain]:
    """The posted fields checked (every error at once, see :class:`SenderErrors`), with the
    sending domain the address is on."""
    errors: dict[str, str] = {}
    clean: dict[str, str] = {}
    try:
        clean = SenderIn().load(dict(data))
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"from_address": exc.messages}
        errors = {
            str(k): " ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in messages.items()
        }
    address = clean.get("from_address") or ""
    if not address and "from_address" not in errors:  # it parsed; another field failed
        address = normalize_email(str(data.get("from_address") or ""))
    domain = None
    if not domains:
        errors.setdefault("from_address", _("Bind a sending domain in the setup wizard first."))
    elif address:  # an address that did not parse has its own error already
        host = split_email(address)[1]
        domain = next((d for d in domains if d.name.lower() == host), None)
        if domain is None:
            names = ", ".join(d.name for d in domains)
            errors["from_address"] = (
                _("The from address must be on %(domain)s.", domain=names)
                if len(domains) == 1
                else _("The from address must be on one of your sending domains: %(domains)s.", domains=names)
            )
    if errors:
        raise SenderErrors(errors)
    assert domain is not None
    return clean, domain


def list_senders(session: Session, workspace_id: int) -> list[Sender]:
    """The default first, then by address."""
    return list(
        session.scalars(
            select(Sender)
            .where(Sender.workspace_id == workspace_id)
            .order_by(Sender.is_default.desc(), Sender.from_address)
        )
    )


def get_sender(session: Session, workspace_id: int, sender_id: int) -> Sender:
    sender = session.get(Sender, sender_id)
    if sender is None or sender.workspace_id != workspace_id:
        raise NotFound(_("No such sender."))
    return sender


def save_sender(
    session: Session, workspace_id: int, data: Mapping[str, Any], *, sender_id: int | None = None
) -> Sender:
    """Create (``sender_id`` None) or change a sender from the posted fields; flushes, does not
    commit.  A changed Reply-To is unconfirmed again.  The workspace's first sender becomes
    its default."""
    clean, domain = load(data, sending_domains(session, workspace_id))
    sender = get_sender(session, workspace_id, sender_id) if sender_id is not None else None
    taken = session.scalar(
        select(Sender.id).where(
            Sender.workspace_id == workspace_id,
            Sender.from_address == clean["from_address"],
            Sender.id != (sender.id if sender is not None else 0),
        )
    )
    if taken is not None:
        raise SenderErrors(
            {"from_address": _("%(address)s is already a sender.", address=clean["from_address"])}
        )
    if sender is None:
        first = session.scalar(select(Sender.id).where(Sender.workspace_id == workspace_id).limit(1)) is None
        sender = Sender(workspace_id=workspace_id, from_address=clean["from_address"], is_default=first)
        session.add(sender)
    sender.domain_id = domain.id
    sender.from_address = clean["from_address"]
    sender.from_name = clean["from_name"]
    sender.company_name = clean["company_name"]
    sender.postal_address = clean["postal_address"]
    if sender.reply_to != clean["reply_to"]:
        sender.reply_to = clean["reply_to"]
        # A mailbox the workspace already confirmed for another sender needs no second mail.
        sender.reply_to_verified_at = session.scalar(
            select(Sender.reply_to_verified_at)
            .where(
                Sender.workspace_id == workspace_id,
                Sender.reply_to == clean["reply_to"],
                Sender.reply_to_verified_at.is_not(None),
            )
            .limit(1)
        )
        sender.reply_to_verification_sent_at = None
    session.flush()
    return sender


def needs_confirmation_mail(sender: Sender) -> bool:
    """A Reply-To nobody confirmed and no confirmation mail went to yet."""
    return (
        bool(sender.reply_to)
        and sender.reply_to_verified_at is None
        and sender.reply_to_verification_sent_at is None
    )


def make_default(session: Session, workspace_id: int, sender_id: int) -> Sender:
    """This sender becomes the default, every other one stops being it (flushes)."""
    sender = get_sender(session, workspace_id, sender_id)
    if sender.reply_to and sender.reply_to_verified_at is None:
        # The default also answers trigger mail: its replies must reach a confirmed mailbox.
        raise InvalidTransition(
            _(
                "Confirm the reply-to address %(address)s first (open the link mailed to it).",
                address=sender.reply_to,
            )
        )
    session.execute(
        update(Sender)
        .where(Sender.workspace_id == workspace_id, Sender.id != sender.id)
        .values(is_default=False)
        .execution_options(synchronize_session="fetch")
    )
    sender.is_default = True
    session.flush()
    return sender


def campaigns_using(session: Session, workspace_id: int, sender_id: int) -> list[str]:
    """Names of the campaigns that name this sender (any status)."""
    rows = session.execute(
        select(Campaign.name, Campaign.sender_ids).where(Campaign.workspace_id == workspace_id)
    ).all()
    return [name for name, ids in rows if sender_id in {int(i) for i in ids or ()}]


def delete_sender(session: Session, workspace_id: int, sender_id: int) -> None:
    """Remove a sender no campaign names and that is not the default (flushes)."""
    sender = get_sender(session, workspace_id, sender_id)
    if sender.is_default:
        raise InvalidTransition(_("Make another sender the default before deleting this one."))
    used = campaigns_using(session, workspace_id, sender_id)
    if used:
        raise InvalidTransition(
            _(
                "%(address)s is used by %(n)s campaigns (%(names)s); "
                "their statistics refer to it, so it stays.",
                address=sender.from_address,
                n=len(used),
                names=", ".join(used[:3]) + ("…" if len(used) > 3 else ""),
            )
        )
    session.delete(sender)
    session.flush()


__all__ = [
    "SenderErrors",
    "campaigns_using",
    "delete_sender",
    "get_sender",
    "list_senders",
    "load",
    "make_default",
    "needs_confirmation_mail",
    "save_sender",
    "sending_domains",
]
