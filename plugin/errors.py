"""One exception tree for the whole plugin.

Services raise these; views map them to responses.  ``retryable`` on provider errors is what the
runner uses to decide between "later" and "never".
"""

from __future__ import annotations


class MarketingError(Exception):
    """Base of every error the plugin raises on purpose."""


class ConfigurationError(MarketingError):
    """The app's ``MARKETING_*`` configuration cannot work."""


class NotFound(MarketingError):
    """A record does not exist in the current workspace (or belongs to another one)."""


class PermissionDenied(MarketingError):
    """The current user's role does not allow the action."""


class InvalidInput(MarketingError):
    """Input that passed the schema but breaks a business rule; ``field`` names where."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidTransition(MarketingError):
    """A state machine refused a move (for example resuming a completed campaign)."""


class QuotaExceeded(MarketingError):
    """The daily quota or the balance cannot cover what was asked."""

    def __init__(self, message: str, *, reason: str = "quota") -> None:
        super().__init__(message)
        self.reason = reason


class ProviderError(MarketingError):
    """A provider refused or failed a call; ``retryable`` says whether trying later can help."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status_code: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.retryable = retryable

    def __str__(self) -> str:
        code = f" {self.status_code}" if self.status_code is not None else ""
        name = f"{self.provider}{code}: " if self.provider else ""
        return f"{name}{self.args[0] if self.args else ''}"


class DnsCheckError(MarketingError):
    """A DNS lookup could not be answered (timeout, SERVFAIL), as opposed to a wrong record."""


class ImportFileError(MarketingError):
    """An import file cannot be read at all (encoding, format, size); nothing was imported."""


class AuthenticationFailed(ProviderError):
    """The provider refused the credentials (SendCloud 40005): permanent until they change."""


class DuplicateRequest(ProviderError):
    """The provider already accepted a request with this idempotency key (SendCloud 40000).

    The runner treats this as "accepted earlier": the mail must not be sent again.
    """


class ProviderQuotaExceeded(ProviderError):
    """The provider says the daily quota or the balance is used up: pause until it returns."""


class Throttled(ProviderError):
    """The provider asks us to slow down: retry later with backoff."""


class WebhookRejected(MarketingError):
    """A webhook post failed verification (signature, timestamp, shape); it changes nothing.

    ``reason``: ``signature`` (not signed with the stored APP KEY), ``no_key`` (none stored),
    ``stale`` (outside the time window) or ``malformed``.  The first two mean every genuine
    event is refused too, which the account pages must say (``webhooks.note_refusal``)."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
