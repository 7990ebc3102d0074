"""Shared pieces of the quota tests: a SendCloud simulator over HTTP and a bound account."""

from __future__ import annotations

from plugin.channels import build_provider
from plugin.extension import get_state
from plugin.models import ProviderAccount

API_USER = "acme_batch"
API_KEY = "Secret-Key-For-Quota-Tests-0001"
TRIGGER_USER = "acme_trigger"
TRIGGER_KEY = "Secret-Key-For-Trigger-Tests-01"


def bind_account(
    session, workspace_id: int, *, api_user: str = API_USER, api_key: str = API_KEY, name="main"
):
    """A SendCloud account of the workspace with its key encrypted, as the wizard stores it."""
    secrets = get_state().secrets
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="sendcloud",
        name=name,
        api_user=api_user,
        api_key_encrypted=secrets.encrypt(api_key),
    )
    session.add(account)
    session.commit()
    return account


def factory(account, channel):
    """The production provider construction (real HTTP to the configured API base)."""
    state = get_state()
    return build_provider(account, channel, secrets=state.secrets, settings=state.settings)
