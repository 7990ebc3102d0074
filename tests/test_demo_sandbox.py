"""The demo's in-process SendCloud simulator after a restart: the wizard's API_USERs come back."""

from __future__ import annotations

import pytest

from plugin.demo.app import DEMO_API_KEY, DEMO_API_USER, restore_sandbox_account, stop_sendcloud_sandbox
from plugin.extension import get_state
from plugin.models import ProviderAccount, SetupState, utcnow
from plugin.providers.sendcloud import SendCloudClient


@pytest.fixture
def app_config(app_config):
    app_config["MARKETING_SANDBOX"] = True
    return app_config


@pytest.fixture
def sandbox(app):
    yield app.extensions["sandbox_sendcloud"]
    stop_sendcloud_sandbox(app)


def test_a_restarted_demo_restores_the_api_users_its_wizard_made(app, session, workspace, sandbox):
    """The database keeps the wizard's batch and trigger API_USERs; a new simulator (memory only)
    did not know them, so syncing and sending failed with "认证失败" until they are restored.
    An account on another API_USER than the demo's sandbox one is left alone."""
    secrets = get_state().secrets
    session.add(
        ProviderAccount(
            workspace_id=workspace.id,
            kind="sendcloud",
            name="SendCloud",
            api_user=DEMO_API_USER,
            api_key_encrypted=secrets.encrypt(DEMO_API_KEY),
            batch_api_user="demo_batch",
            batch_api_key_encrypted=secrets.encrypt("batch-key"),
            trigger_api_user="demo_trigger",
            trigger_api_key_encrypted=secrets.encrypt("trigger-key"),
            webhook_url="http://127.0.0.1:9/marketing/hooks/sendcloud/1",
            webhook_app_key_encrypted=secrets.encrypt("hook-key"),
            webhook_registered_at=utcnow(),
        )
    )
    session.add(  # written under another instance's secrets: skipped, the demo still starts
        ProviderAccount(
            workspace_id=workspace.id,
            kind="sendcloud",
            name="Elsewhere",
            api_user=DEMO_API_USER,
            batch_api_user="foreign_batch",
            batch_api_key_encrypted="not-a-token-of-this-instance",
        )
    )
    session.add(
        ProviderAccount(
            workspace_id=workspace.id,
            kind="sendcloud",
            name="Real",
            api_user="someone_real",
            api_key_encrypted=secrets.encrypt("x"),
            batch_api_user="real_batch",
            batch_api_key_encrypted=secrets.encrypt("y"),
        )
    )
    session.add(SetupState(workspace_id=workspace.id, step="done", completed_at=utcnow()))
    session.commit()
    simulator = sandbox.simulator
    assert not simulator.knows("demo_batch")

    assert restore_sandbox_account(app) == ["demo_batch", "demo_trigger"]
    assert not simulator.knows("foreign_batch")
    assert simulator.webhook_app_key == "hook-key"  # events signed as the stored key expects
    assert simulator.knows("demo_batch")
    assert simulator.knows("demo_trigger")
    assert not simulator.knows("real_batch")
    info = SendCloudClient("demo_batch", "batch-key", base_url=sandbox.url).userinfo()
    assert info.daily_quota == 2000  # the restored key authenticates, on the sandbox account
    assert restore_sandbox_account(app) == []  # a second start finds them there
