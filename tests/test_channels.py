"""Channel credentials: a SendCloud account without an API_USER names the channel in words."""

from __future__ import annotations

import pytest
from flask_babel import force_locale

from plugin.channels import sendcloud_credentials
from plugin.errors import ConfigurationError
from plugin.extension import get_state
from plugin.models import ProviderAccount


@pytest.mark.parametrize(
    ("channel", "english", "chinese"),
    [("batch", "for batch mail", "用于批量邮件"), ("trigger", "for trigger mail", "用于触发邮件")],
)
def test_an_account_without_api_user_names_the_channel_in_the_users_language(app, channel, english, chinese):
    account = ProviderAccount(name="acme")  # no main, batch or trigger API_USER
    secrets = get_state().secrets
    with pytest.raises(ConfigurationError) as caught, force_locale("en"):
        sendcloud_credentials(account, secrets, channel)
    assert f"The SendCloud account acme has no API_USER {english}." == str(caught.value)
    # The default UI language (Chinese) outside a request: no raw channel code in the sentence.
    with pytest.raises(ConfigurationError) as caught:
        sendcloud_credentials(account, secrets, channel)
    assert chinese in str(caught.value)
    assert channel not in str(caught.value)
