"""Secrets at rest: Fernet tokens with key rotation (``MultiFernet``).

The first key in ``MARKETING_SECRET_KEYS`` encrypts; all of them decrypt, so a deployment rotates
by putting a new key first and running ``flask marketing rotate-keys``.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigurationError


class SecretBox:
    """Encrypts and decrypts short secrets (API keys, SMTP passwords, webhook keys)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ConfigurationError(
                "MARKETING_SECRET_KEYS is empty: generate one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
            )
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigurationError("MARKETING_SECRET_KEYS holds a value that is not a Fernet key") from exc

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ConfigurationError(
                "a stored secret cannot be decrypted with MARKETING_SECRET_KEYS (was a key removed?)"
            ) from exc

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()

    def __repr__(self) -> str:  # never show key material
        return "SecretBox(<keys hidden>)"
