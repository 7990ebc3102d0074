"""Public endpoints under ``/m``: no login; every action there is authorized by a signed token.

Tracking, unsubscribe and provider webhooks are added here by the engagement work; the health
check lets a load balancer or the demo's launcher see that the plugin is mounted.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from ..config import Settings
from ..extension import get_state


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("marketing_public", __name__)
    bp.add_url_rule("/health", view_func=health)
    return bp


def health():
    """Answers 200 when the database is reachable, 503 otherwise."""
    state = get_state()
    try:
        state.session.execute(text("SELECT 1"))
    except Exception:
        state.session.rollback()
        return jsonify(status="unavailable"), 503
    return jsonify(status="ok")
