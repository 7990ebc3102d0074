"""SQLAlchemy 2 models of the plugin; every table is prefixed ``marketing_``."""

from .base import Base, UTCDateTime, utcnow
from .campaigns import Campaign, CampaignRecipient, SendBatch, Template, TriggerMail
from .delivery import (
    AccountSnapshot,
    Event,
    QuotaAllocation,
    QuotaLedger,
    QuotaReservation,
    Suppression,
)
from .directory import Contact, ContactTag, CustomField, ImportJob, SavedView, Tag
from .engagement import Reply, ReplyMailbox, StatCounter, TrackedLink
from .sending import ProviderAccount, Sender, SendingDomain, SetupState
from .workspace import ApiToken, Lease, UserPreference, Workspace

__all__ = [
    "AccountSnapshot",
    "ApiToken",
    "Base",
    "Campaign",
    "CampaignRecipient",
    "Contact",
    "ContactTag",
    "CustomField",
    "Event",
    "ImportJob",
    "Lease",
    "ProviderAccount",
    "QuotaAllocation",
    "QuotaLedger",
    "QuotaReservation",
    "Reply",
    "ReplyMailbox",
    "SavedView",
    "SendBatch",
    "Sender",
    "SendingDomain",
    "SetupState",
    "StatCounter",
    "Suppression",
    "Tag",
    "Template",
    "TrackedLink",
    "TriggerMail",
    "UTCDateTime",
    "UserPreference",
    "Workspace",
    "utcnow",
]
