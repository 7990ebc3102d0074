"""Email marketing for Flask CRMs: SendCloud and SMTP campaigns, quota, tracking and stats."""

from .directory import ContactDirectory, ContactRecord, Segment, SqlDirectory
from .extension import Marketing

__all__ = ["ContactDirectory", "ContactRecord", "Marketing", "Segment", "SqlDirectory"]
