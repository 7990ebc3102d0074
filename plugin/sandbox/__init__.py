"""Sandbox pieces for trying the plugin without real mail accounts (the demo and the tests)."""

from __future__ import annotations

from .smtp_sink import Attachment, CapturedMessage, SmtpSink, free_port, parse_message

__all__ = ["Attachment", "CapturedMessage", "SmtpSink", "free_port", "parse_message"]
