"""``POST /trigger-mails``: one transactional mail, sent at once, idempotent per client key."""

from __future__ import annotations

from .errors import api_blueprint

URL = "/trigger-mails"
blp = api_blueprint("marketing_api_trigger_mails", "Trigger (transactional) mail")
