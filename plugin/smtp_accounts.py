"""SMTP accounts ("send from my mailbox"): create, change, delete, list and test (admin only).

Why a service of its own: the account's password and DKIM private key are secrets.  They are
encrypted here with the workspace's ``SecretBox`` the moment they arrive and are decrypted only
for a connection (``plugin.channels``) or to show a hint (``••••`` plus the last four
characters).  Nothing in this module logs a field value, and the account objects' ``repr`` shows
no secret either.

Every account carries a daily limit: the quota gate (``quota.reserve_for_send``) counts SMTP
mail against it the way it counts SendCloud mail against the provider's daily quota.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .config import Settings
from .crypto import SecretBox
from .errors import InvalidInput, InvalidTransition, NotFound
from .i18n import _
from .models import Campaign, ProviderAccount

KIND = "smtp"
#: Campaign states in which an account is in use and may not disappear.
_BUSY = ("scheduled", "running", "paused", "awaiting_approval")


@dataclasses.dataclass(frozen=True, slots=True)
class DkimInfo:
    """What the page shows of a stored DKIM key: never the key, only what DNS needs."""

    selector: str
    domain: str
    key_bits: int
    #: ``<selector>._domainkey.<domain>``
    record_host: str
    #: ``v=DKIM1; k=rsa; p=<public key>`` — public by design.
    record_value: str
    #: ``••••`` plus the last four characters of the public key's SHA-256 (to tell keys apart).
    hint: str


def mask_last4(secret: str | None) -> str:
    """``••••abcd``; short secrets show only the dots (four of eight characters is too much)."""
    if not secret:
        return ""
    return "••••" + secret[-4:] if len(secret) > 8 else "••••"


# --------------------------------------------------------------------------- reading


def list_accounts(session: Session, workspace_id: int) -> list[ProviderAccount]:
    return list(
        session.scalars(
            select(ProviderAccount)
            .where(ProviderAccount.workspace_id == workspace_id, ProviderAccount.kind == KIND)
            .order_by(func.lower(ProviderAccount.name), ProviderAccount.id)
        )
    )


def get_account(session: Session, workspace_id: int, account_id: int) -> ProviderAccount:
    account = session.scalar(
        select(ProviderAccount).where(
            ProviderAccount.id == account_id,
            ProviderAccount.workspace_id == workspace_id,
            ProviderAccount.kind == KIND,
        )
    )
    if account is None:
        raise NotFound(f"SMTP account {account_id}")
    return account


def password_hint(account: ProviderAccount, secrets: SecretBox) -> str:
    if not account.smtp_password_encrypted:
        return ""
    return mask_last4(secrets.decrypt(account.smtp_password_encrypted))


def dkim_info(account: ProviderAccount, secrets: SecretBox) -> DkimInfo | None:
    """The DNS record to publish for the stored key, or ``None`` without DKIM."""
    if not (account.dkim_selector and account.dkim_private_key_encrypted):
        return None
    key = _load_private_key(secrets.decrypt(account.dkim_private_key_encrypted))
    public = _public_key_b64(key)
    domain = (account.from_address or "").rpartition("@")[2].lower()
    return DkimInfo(
        selector=account.dkim_selector,
        domain=domain,
        key_bits=key.key_size,
        record_host=f"{account.dkim_selector}._domainkey.{domain}",
        record_value=f"v=DKIM1; k=rsa; p={public}",
        hint=mask_last4(hashlib.sha256(public.encode()).hexdigest()),
    )


# --------------------------------------------------------------------------- writing


def create_account(
    session: Session, workspace_id: int, data: Mapping[str, Any], *, secrets: SecretBox
) -> ProviderAccount:
    """A new SMTP account from the form's loaded data (``schemas.smtp_accounts.SmtpAccountIn``)."""
    account = ProviderAccount(workspace_id=workspace_id, kind=KIND, status="active")
    _apply(session, account, data, secrets=secrets, creating=True)
    session.add(account)
    session.flush()
    return account


def update_account(
    session: Session, workspace_id: int, account_id: int, data: Mapping[str, Any], *, secrets: SecretBox
) -> ProviderAccount:
    """Change an account; an empty password or DKIM key keeps the stored one."""
    account = get_account(session, workspace_id, account_id)
    _apply(session, account, data, secrets=secrets, creating=False)
    session.flush()
    return account


def delete_account(session: Session, workspace_id: int, account_id: int) -> None:
    """Delete an account no live campaign uses (its trigger-mail log keeps the rows, unlinked)."""
    account = get_account(session, workspace_id, account_id)
    busy = session.scalar(
        select(func.count())
        .select_from(Campaign)
        .where(
            Campaign.workspace_id == workspace_id,
            Campaign.account_id == account.id,
            Campaign.status.in_(_BUSY),
        )
    )
    if busy:
        raise InvalidTransition(
            _(
                "%(count)s campaign(s) that are scheduled, running or paused send through this "
                "account; cancel them or switch them to another account first.",
                count=busy,
            )
        )
    session.delete(account)
    session.flush()


def _apply(
    session: Session,
    account: ProviderAccount,
    data: Mapping[str, Any],
    *,
    secrets: SecretBox,
    creating: bool,
) -> None:
    name = data["name"]
    clash = session.scalar(
        select(ProviderAccount.id).where(
            ProviderAccount.workspace_id == account.workspace_id,
            ProviderAccount.kind == KIND,
            func.lower(ProviderAccount.name) == name.lower(),
            ProviderAccount.id != (account.id or 0),
        )
    )
    if clash is not None:
        raise InvalidInput(_("Another SMTP account is already called %(name)s.", name=name), field="name")
    username = data.get("username") or ""
    password = data.get("password")
    has_password = bool(password) or (not creating and bool(account.smtp_password_encrypted))
    if username and not has_password:
        raise InvalidInput(_("Enter the password (or authorization code) of this mailbox."), field="password")
    if password and not username:
        raise InvalidInput(_("A password needs a user name."), field="username")
    if (username + (password or "")) and not (username.isascii() and (password or "").isascii()):
        # smtplib sends AUTH credentials as ASCII; mailbox "authorization codes" always are.
        raise InvalidInput(_("The user name and password must be ASCII characters."), field="password")
    if data["security"] == "none" and username:
        raise InvalidInput(
            _("Choose SSL or STARTTLS: a password is never sent over an unencrypted connection."),
            field="security",
        )

    selector = data.get("dkim_selector")
    new_key = data.get("dkim_private_key")
    remove_dkim = bool(data.get("remove_dkim"))
    key_pem: str | None = None
    if new_key:
        key_pem = _normalize_pem(new_key)
        _load_private_key(key_pem)  # raises InvalidInput naming the field
    keeps_key = bool(account.dkim_private_key_encrypted) and not remove_dkim
    if not remove_dkim:
        if selector and not (key_pem or keeps_key):
            raise InvalidInput(_("Upload the DKIM private key for this selector."), field="dkim_private_key")
        if key_pem and not selector:
            raise InvalidInput(
                _("Enter the DKIM selector the key is published under."), field="dkim_selector"
            )

    account.name = name
    account.smtp_host = data["host"].lower()
    account.smtp_port = int(data["port"])
    account.smtp_security = data["security"]
    account.smtp_username = username or None
    account.from_address = data["from_address"]
    account.daily_limit = int(data["daily_limit"])
    account.send_rate = float(data["send_rate"]) if data.get("send_rate") is not None else None
    if password:
        account.smtp_password_encrypted = secrets.encrypt(password)
    elif not username:
        account.smtp_password_encrypted = None
    if remove_dkim:
        account.dkim_selector = None
        account.dkim_private_key_encrypted = None
    else:
        account.dkim_selector = selector or None
        if key_pem:
            account.dkim_private_key_encrypted = secrets.encrypt(key_pem)
        if not selector:
            account.dkim_private_key_encrypted = None


# --------------------------------------------------------------------------- testing


def test_account(account: ProviderAccount, *, secrets: SecretBox, settings: Settings) -> tuple[bool, str]:
    """Connect, secure, log in and NOOP with the stored settings; ``(ok, readable message)``."""
    from .channels import smtp_settings
    from .errors import ConfigurationError
    from .providers import smtp

    try:
        smtp_config = smtp_settings(account, secrets, settings)
    except ConfigurationError as exc:
        return False, str(exc)
    ok, message = smtp.test_connection(smtp_config)
    if ok and smtp_config.dkim_enabled:
        message = _(
            "%(message)s DKIM signing is on (selector %(selector)s).",
            message=message,
            selector=smtp_config.dkim_selector,
        )
    return ok, message


test_account.__test__ = False  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- keys


def _normalize_pem(text: str) -> str:
    """Line ends unified and surrounding blanks dropped (keys pasted from Windows editors)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip() + "\n"


def _load_private_key(pem: str):
    """The RSA key in ``pem``; ``InvalidInput`` on field ``dkim_private_key`` otherwise."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode("ascii", "replace"), password=None)
    except TypeError:
        raise InvalidInput(
            _("The DKIM key is protected by a passphrase; upload it without one."), field="dkim_private_key"
        ) from None
    except ValueError:
        raise InvalidInput(
            _("This is not a PEM private key (it should start with -----BEGIN PRIVATE KEY-----)."),
            field="dkim_private_key",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 1024:
        raise InvalidInput(
            _("The DKIM key must be an RSA key of 1024 bits or more (2048 recommended)."),
            field="dkim_private_key",
        )
    return key


def _public_key_b64(key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


__all__ = [
    "DkimInfo",
    "create_account",
    "delete_account",
    "dkim_info",
    "get_account",
    "list_accounts",
    "mask_last4",
    "password_hint",
    "test_account",
    "update_account",
]
