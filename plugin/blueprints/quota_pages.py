"""Quota pages: on-demand sync, history chart, allocation of the daily quota (admin)."""

from __future__ import annotations

from flask import Blueprint

from ..config import Settings
from . import admin
from .security import guard_page


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_quota", __name__, template_folder="../templates")
    bp.before_request(guard_page)
    bp.context_processor(admin._template_context)
    return bp
