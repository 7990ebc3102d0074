"""Which provider object sends for a stored account, and with which credentials.

The runner, the trigger-mail service and the quota sync all need "a provider for this account";
building it here keeps secrets handling (decrypt at the last moment, never log) and the choice
between SendCloud's batch and trigger API_USERs in one place.  Tests and the demo replace the
factory through ``app.extensions["marketing_provider_factory"]`` when they need to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from .config import Settings
from .crypto import SecretBox
from .errors import ConfigurationError
from .i18n import _
from .models import ProviderAccount
from .providers.base import Provider

Channel = Literal["batch", "trigger"]
ProviderFactory = Callable[[ProviderAccount, Channel], Provider]


def sendcloud_credentials(account: ProviderAccount, secrets: SecretBox, channel: Channel) -> tuple[str, str]:
    """API_USER and key for a channel; falls back to the main API_USER when no separate one exists."""
    pairs = {
        "batch": (account.batch_api_user, account.batch_api_key_encrypted),
        "trigger": (account.trigger_api_user, account.trigger_api_key_encrypted),
    }
    user, key = pairs[channel]
    if not user or not key:
        user, key = account.api_user, account.api_key_encrypted
    if not user or not key:
        # Whole sentences per channel: the channel code is not a word of the user's language.
        if channel == "trigger":
            message = _("The SendCloud account %(name)s has no API_USER for trigger mail.", name=account.name)
        else:
            message = _("The SendCloud account %(name)s has no API_USER for batch mail.", name=account.name)
        raise ConfigurationError(message)
    return user, secrets.decrypt(key)


def smtp_settings(account: ProviderAccount, secrets: SecretBox, settings: Settings):
    """``SmtpSettings`` of a stored SMTP account (password and DKIM key decrypted here only)."""
    from .providers.smtp import SmtpSettings

    if not account.smtp_host or not account.smtp_port:
        raise ConfigurationError(_("The SMTP account %(name)s has no server.", name=account.name))
    dkim_key = (
        secrets.decrypt(account.dkim_private_key_encrypted).encode()
        if account.dkim_private_key_encrypted
        else None
    )
    from_address = account.from_address or account.smtp_username or ""
    return SmtpSettings(
        host=account.smtp_host,
        port=int(account.smtp_port),
        security=(account.smtp_security or "starttls"),  # type: ignore[arg-type]
        username=account.smtp_username or "",
        password=secrets.decrypt(account.smtp_password_encrypted) if account.smtp_password_encrypted else "",
        from_address=from_address,
        timeout=settings.provider_timeout,
        rate_per_second=account.send_rate if account.send_rate is not None else settings.smtp_send_rate,
        dkim_selector=account.dkim_selector,
        dkim_domain=from_address.rpartition("@")[2] or None,
        dkim_private_key=dkim_key,
    )


def build_provider(
    account: ProviderAccount, channel: Channel, *, secrets: SecretBox, settings: Settings
) -> Provider:
    """A new provider for ``account``; the caller closes it."""
    if account.kind == "sendcloud":
        from .providers.sendcloud import SendCloudProvider

        user, key = sendcloud_credentials(account, secrets, channel)
        return SendCloudProvider(
            user, key, base_url=settings.sendcloud_api_base, timeout=settings.provider_timeout
        )
    if account.kind == "smtp":
        from .providers.smtp import SmtpProvider

        return SmtpProvider(smtp_settings(account, secrets, settings))
    raise ConfigurationError(_("Unknown account kind %(kind)s.", kind=account.kind))


def provider_factory(app_extensions: dict, *, secrets: SecretBox, settings: Settings) -> ProviderFactory:
    """The factory in force: the one a host/test registered, else :func:`build_provider`."""
    custom = app_extensions.get("marketing_provider_factory")
    if custom is not None:
        return custom
    return lambda account, channel: build_provider(account, channel, secrets=secrets, settings=settings)
