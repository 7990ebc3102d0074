"""What every provider offers and the value types that cross the boundary.

Providers import neither Flask nor models: credentials and settings come in through the
constructor, results go out as these dataclasses.  A batch shares one content with ``%name%``
placeholders and carries per-recipient values, which is what SendCloud's ``xsmtpapi.sub`` wants
and what the SMTP provider renders per recipient.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, Protocol

SendStatus = Literal["accepted", "rejected", "failed", "unknown"]


@dataclasses.dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    #: Values for ``%name%`` placeholders, keys without the percent signs.
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Message-ID to use (SMTP): stable per campaign recipient, so a resend after a crash carries
    #: the same id and mailbox providers can drop the duplicate.  ``None``: one is generated.
    message_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BatchMessage:
    """One content sent to up to ``max_batch_size`` recipients, each with own variables."""

    from_address: str
    subject: str
    html: str
    recipients: Sequence[Recipient]
    #: Stable per batch: SendCloud's ``sendRequestId``; a retry reuses it, never a new one.
    idempotency_key: str
    from_name: str = ""
    text: str | None = None
    reply_to: str | None = None
    #: Extra headers; ``SC-Custom-*`` ones come back in SendCloud's webhook events.
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label: str | None = None
    #: ``trigger`` (transactional, one recipient) or ``batch`` (marketing).
    kind: Literal["batch", "trigger"] = "batch"
    #: SendCloud invoke name of an approved template: the batch goes through ``mail/sendtemplate``
    #: (its content is the template's; ``html``/``text`` are then only for providers without one).
    template_name: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    recipient: str
    status: SendStatus
    provider_message_id: str | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AccountInfo:
    """Balance and quota as the provider reports them; any field may be unknown (``None``)."""

    balance: Decimal | None
    available_balance: Decimal | None
    daily_quota: int | None
    used_today: int | None
    reputation: float | None = None
    account_name: str | None = None
    account_type: str | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class TrackingEvent:
    """One provider event (delivery, open, click, bounce, ...) in our vocabulary."""

    #: request, deliver, open, click, unsubscribe, report_spam, invalid, soft_bounce, route
    event_type: str
    #: Unique per event at the provider (used to store each event once).
    provider_event_id: str
    occurred_at: dt.datetime
    recipient: str | None = None
    provider_message_id: str | None = None
    url: str | None = None
    reason: str | None = None
    #: Our own headers echoed back (``SC-Custom-*``), e.g. the campaign and recipient ids.
    user_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Provider(Protocol):
    name: str
    max_batch_size: int

    def send_batch(self, batch: BatchMessage) -> list[SendResult]:
        """Send one batch; raises ``ProviderError`` when nothing was (provably) sent."""

    def send_one(self, batch: BatchMessage) -> SendResult:
        """Send a trigger mail (a batch with exactly one recipient)."""

    def account_info(self) -> AccountInfo | None:
        """Balance and quota, or ``None`` when the provider has no such notion (SMTP)."""

    def close(self) -> None:
        """Release connections."""


def begin_batch(provider: Provider, batch: BatchMessage) -> Callable[[], list[SendResult]]:
    """Start sending ``batch``; the returned function waits for the provider's answer and
    returns or raises what ``send_batch`` would.  A provider with a ``begin_batch`` of its own
    (SendCloud) sends at once, so a runner can prepare its next batches meanwhile; any other
    sends when the answer is asked for."""
    begin = getattr(provider, "begin_batch", None)
    if begin is not None:
        return begin(batch)
    return functools.partial(provider.send_batch, batch)
