"""``MARKETING_*`` configuration: defaults in one place, read once into a frozen object.

Deployment knobs live in ``app.config``; anything a user enters in the wizard lives in the
database.  Reading the keys once at ``init_app`` means a typo fails at start-up, not at the first
campaign, and that workers never see a half-changed configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

#: Every key the plugin reads, without its ``MARKETING_`` prefix, and its default.
DEFAULTS: dict[str, Any] = {
    #: Where the admin pages are mounted; the JSON API lives below it at ``/api/v1``.
    "URL_PREFIX": "/marketing",
    #: Where tracking, unsubscribe and webhook endpoints are mounted.
    "PUBLIC_URL_PREFIX": "/m",
    #: Absolute base URL used in links inside mail (the scheduler has no request to build from).
    "PUBLIC_BASE_URL": "http://127.0.0.1:5000",
    #: Template every plugin page extends; a host sets its own layout here.
    "BASE_TEMPLATE": "marketing/base.html",
    #: UI languages offered; the first is the default.
    "LOCALES": ("zh_CN", "en"),
    #: Time zone in which dates are shown when the user has none.
    "DEFAULT_TIMEZONE": "Asia/Shanghai",
    #: Fernet keys (urlsafe base64, 32 bytes) for secrets at rest; the first encrypts.
    "SECRET_KEYS": (),
    #: Secret for signed public links; defaults to the app's SECRET_KEY.
    "TOKEN_SECRET": None,
    #: SendCloud API base URL (CN: https://api.sendcloud.net/apiv2, SGP: https://api.sendcloud.com/apiv2).
    "SENDCLOUD_API_BASE": "https://api.sendcloud.net/apiv2",
    #: Seconds before a provider HTTP call is abandoned.
    "PROVIDER_TIMEOUT": 15.0,
    #: Nameservers used for DNS checks; empty means the system resolver.
    "DNS_NAMESERVERS": (),
    #: Port of those nameservers.
    "DNS_PORT": 53,
    #: Seconds per DNS query.
    "DNS_TIMEOUT": 3.0,
    #: Recipients per provider call (SendCloud accepts at most 100).
    "BATCH_SIZE": 100,
    #: Default mails per second for a campaign.
    "SEND_RATE": 50.0,
    #: Threads the ``threads`` backend gives one SendCloud campaign sent without a rate limit;
    #: unset: one on SQLite, three on PostgreSQL.  Each keeps ``CAMPAIGN_IN_FLIGHT`` batches in
    #: flight, so it claims, builds and records while the provider answers.  On SQLite that
    #: keeps the provider busy and more threads mostly pass the interpreter lock to each other
    #: (bench/dispatch.py, 100,000 recipients on 2 cores: one thread 14,848 recipients/s, three
    #: 11,498); on PostgreSQL a thread also waits for the database's answers, which others fill
    #: (one thread 5,202/s, three 6,497/s on a slower hour of the same machine).  A campaign
    #: with a rate, and an SMTP campaign (one connection, the account's own rate), always keep
    #: one thread.
    "CAMPAIGN_THREADS": None,
    #: SendCloud batches one runner keeps in flight when its campaign has no rate limit: it
    #: sends one, then claims, builds and records others while the provider answers
    #: (``plugin.providers.inflight``).  1 sends and waits, batch after batch.
    "CAMPAIGN_IN_FLIGHT": 3,
    #: Celery tasks queued for one SendCloud campaign sent without a rate limit, on PostgreSQL:
    #: as many worker processes share it (``FOR UPDATE SKIP LOCKED``), each on its own CPU.
    #: Two: on 2 cores, two processes sent 100,000 recipients about 25 % faster than three
    #: threads of one process, which share one interpreter lock (bench/dispatch.py --processes).
    "CAMPAIGN_WORKERS": 2,
    #: Run the scheduler inside this process (only one process of a deployment should).
    "SCHEDULER_ENABLED": False,
    #: Seconds between scheduler ticks.
    "SCHEDULER_TICK_SECONDS": 5,
    #: ``threads`` (in-process) or ``celery``.
    "EXECUTION_BACKEND": "threads",
    #: Broker URL for the celery backend.
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    #: Minutes between balance and quota syncs.
    "QUOTA_SYNC_MINUTES": 5,
    #: Rows per page in tables.
    "PAGE_SIZE": 50,
    #: Largest accepted import file, in bytes.
    "IMPORT_MAX_BYTES": 20 * 1024 * 1024,
    #: Largest number of rows accepted in one import.
    "IMPORT_MAX_ROWS": 200_000,
    #: Oldest webhook timestamp accepted, in minutes; wide enough for SendCloud's retries (~31 min).
    "WEBHOOK_MAX_AGE_MINUTES": 45,
    #: Seconds between automatic DNS re-checks on the setup wizard's records page.
    "DNS_RECHECK_SECONDS": 30,
    #: Minutes after which the account bar calls the synced balance and quota stale.
    "QUOTA_STALE_MINUTES": 15,
    #: Warn in the account bar when the available balance falls below this (yuan; 0 = never).
    "LOW_BALANCE_THRESHOLD": 10.0,
    #: Price of one mail (yuan) used by the forecast before a campaign starts.
    "PRICE_PER_MAIL": 0.0007,
    #: Campaigns with more final recipients than this need an admin's approval (0 = never).
    "APPROVAL_THRESHOLD": 100_000,
    #: Consecutive failed batches after which a campaign pauses itself.
    "MAX_CONSECUTIVE_FAILURES": 5,
    #: Minutes a scheduled campaign may start late (scheduler was down); later it waits as ``missed``.
    "MISSED_GRACE_MINUTES": 60,
    #: Largest template (HTML source) accepted, in bytes.
    "TEMPLATE_MAX_BYTES": 1024 * 1024,
    #: Seconds allowed to fetch a template from a URL.
    "TEMPLATE_FETCH_TIMEOUT": 10.0,
    #: Check recipients' MX records when freezing an audience (slow for big lists; optional).
    "MX_CHECK": False,
    #: Seconds the MX check may take in all before the remaining domains count as valid.
    "MX_CHECK_BUDGET_SECONDS": 30.0,
    #: SMTP mails per second per account when the account sets none.
    "SMTP_SEND_RATE": 6.0,
    #: Soft bounces of one address (within one campaign) after which it is suppressed.
    "SOFT_BOUNCE_LIMIT": 3,
    #: Where the /m endpoints' rate-limit counters live: ``memory://`` (one process) or a
    #: ``redis://`` URL shared by every process of a deployment.
    "RATE_LIMIT_STORAGE_URL": "memory://",
    #: Per client IP and endpoint group, ``<n>/<second|minute|hour>``; ``0`` (or empty) = no limit.
    "RATE_LIMIT_TRACKING": "600/minute",
    "RATE_LIMIT_UNSUBSCRIBE": "30/minute",
    #: SendCloud posts many events from few addresses: keep this generous.
    "RATE_LIMIT_WEBHOOKS": "20000/minute",
    #: Demo only: run the local SendCloud simulator and DNS responder instead of the real services.
    "SANDBOX": False,
}

_BACKENDS = frozenset({"threads", "celery"})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The plugin's configuration, frozen after ``init_app``."""

    url_prefix: str
    public_url_prefix: str
    public_base_url: str
    base_template: str
    locales: tuple[str, ...]
    default_timezone: str
    secret_keys: tuple[str, ...]
    token_secret: str
    sendcloud_api_base: str
    provider_timeout: float
    dns_nameservers: tuple[str, ...]
    dns_port: int
    dns_timeout: float
    batch_size: int
    send_rate: float
    scheduler_enabled: bool
    scheduler_tick_seconds: int
    execution_backend: str
    celery_broker_url: str
    quota_sync_minutes: int
    page_size: int
    import_max_bytes: int
    import_max_rows: int
    webhook_max_age_minutes: int = 45
    dns_recheck_seconds: int = 30
    sandbox: bool = False
    quota_stale_minutes: int = 15
    low_balance_threshold: float = 10.0
    price_per_mail: float = 0.0007
    approval_threshold: int = 100_000
    max_consecutive_failures: int = 5
    missed_grace_minutes: int = 60
    template_max_bytes: int = 1024 * 1024
    template_fetch_timeout: float = 10.0
    mx_check: bool = False
    mx_check_budget_seconds: float = 30.0
    smtp_send_rate: float = 6.0
    #: ``None``: decided by the database (``tasks.threads_per_campaign``).
    campaign_threads: int | None = None
    campaign_in_flight: int = 3
    campaign_workers: int = 2
    soft_bounce_limit: int = 3
    rate_limit_storage_url: str = "memory://"
    rate_limit_tracking: str = "600/minute"
    rate_limit_unsubscribe: str = "30/minute"
    rate_limit_webhooks: str = "20000/minute"

    @property
    def api_prefix(self) -> str:
        return f"{self.url_prefix}/api/v1"


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)


def _as_bool(value: Any) -> bool:
    """``True``/``"1"``/``"true"``/``"yes"``/``"on"``; environment variables arrive as text."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def load_settings(config: Mapping[str, Any]) -> Settings:
    """Build :class:`Settings` from an app config, raising on values that cannot work."""
    raw = {key: config.get(f"MARKETING_{key}", default) for key, default in DEFAULTS.items()}
    token_secret = raw["TOKEN_SECRET"] or config.get("SECRET_KEY")
    if not token_secret:
        raise ConfigurationError("set SECRET_KEY or MARKETING_TOKEN_SECRET: public links are signed")
    batch_size = int(raw["BATCH_SIZE"])
    if not 1 <= batch_size <= 100:
        raise ConfigurationError("MARKETING_BATCH_SIZE must be between 1 and 100")
    campaign_threads = None if raw["CAMPAIGN_THREADS"] in (None, "") else int(raw["CAMPAIGN_THREADS"])
    if campaign_threads is not None and not 1 <= campaign_threads <= 8:
        raise ConfigurationError("MARKETING_CAMPAIGN_THREADS must be between 1 and 8")
    campaign_in_flight = int(raw["CAMPAIGN_IN_FLIGHT"])
    if not 1 <= campaign_in_flight <= 8:
        raise ConfigurationError("MARKETING_CAMPAIGN_IN_FLIGHT must be between 1 and 8")
    campaign_workers = int(raw["CAMPAIGN_WORKERS"])
    if not 1 <= campaign_workers <= 32:
        raise ConfigurationError("MARKETING_CAMPAIGN_WORKERS must be between 1 and 32")
    backend = str(raw["EXECUTION_BACKEND"])
    if backend not in _BACKENDS:
        raise ConfigurationError(f"MARKETING_EXECUTION_BACKEND must be one of {sorted(_BACKENDS)}")
    webhook_max_age = int(raw["WEBHOOK_MAX_AGE_MINUTES"])
    if webhook_max_age < 1:
        raise ConfigurationError("MARKETING_WEBHOOK_MAX_AGE_MINUTES must be at least 1")
    recheck = int(raw["DNS_RECHECK_SECONDS"])
    if recheck < 0:
        raise ConfigurationError("MARKETING_DNS_RECHECK_SECONDS must be 0 (off) or more")
    locales = _as_tuple(raw["LOCALES"])
    if not locales:
        raise ConfigurationError("MARKETING_LOCALES needs at least one locale")
    return Settings(
        url_prefix="/" + str(raw["URL_PREFIX"]).strip("/"),
        public_url_prefix="/" + str(raw["PUBLIC_URL_PREFIX"]).strip("/"),
        public_base_url=str(raw["PUBLIC_BASE_URL"]).rstrip("/"),
        base_template=str(raw["BASE_TEMPLATE"]),
        locales=locales,
        default_timezone=str(raw["DEFAULT_TIMEZONE"]),
        secret_keys=_as_tuple(raw["SECRET_KEYS"]),
        token_secret=str(token_secret),
        sendcloud_api_base=str(raw["SENDCLOUD_API_BASE"]).rstrip("/"),
        provider_timeout=float(raw["PROVIDER_TIMEOUT"]),
        dns_nameservers=_as_tuple(raw["DNS_NAMESERVERS"]),
        dns_port=int(raw["DNS_PORT"]),
        dns_timeout=float(raw["DNS_TIMEOUT"]),
        batch_size=batch_size,
        send_rate=float(raw["SEND_RATE"]),
        scheduler_enabled=_as_bool(raw["SCHEDULER_ENABLED"]),
        scheduler_tick_seconds=int(raw["SCHEDULER_TICK_SECONDS"]),
        execution_backend=backend,
        celery_broker_url=str(raw["CELERY_BROKER_URL"]),
        quota_sync_minutes=int(raw["QUOTA_SYNC_MINUTES"]),
        page_size=int(raw["PAGE_SIZE"]),
        import_max_bytes=int(raw["IMPORT_MAX_BYTES"]),
        import_max_rows=int(raw["IMPORT_MAX_ROWS"]),
        webhook_max_age_minutes=webhook_max_age,
        dns_recheck_seconds=recheck,
        sandbox=_as_bool(raw["SANDBOX"]),
        quota_stale_minutes=int(raw["QUOTA_STALE_MINUTES"]),
        low_balance_threshold=float(raw["LOW_BALANCE_THRESHOLD"]),
        price_per_mail=float(raw["PRICE_PER_MAIL"]),
        approval_threshold=int(raw["APPROVAL_THRESHOLD"]),
        max_consecutive_failures=max(1, int(raw["MAX_CONSECUTIVE_FAILURES"])),
        missed_grace_minutes=int(raw["MISSED_GRACE_MINUTES"]),
        template_max_bytes=int(raw["TEMPLATE_MAX_BYTES"]),
        template_fetch_timeout=float(raw["TEMPLATE_FETCH_TIMEOUT"]),
        mx_check=_as_bool(raw["MX_CHECK"]),
        mx_check_budget_seconds=float(raw["MX_CHECK_BUDGET_SECONDS"]),
        smtp_send_rate=float(raw["SMTP_SEND_RATE"]),
        campaign_threads=campaign_threads,
        campaign_in_flight=campaign_in_flight,
        campaign_workers=campaign_workers,
        soft_bounce_limit=max(1, int(raw["SOFT_BOUNCE_LIMIT"])),
        rate_limit_storage_url=str(raw["RATE_LIMIT_STORAGE_URL"] or "memory://"),
        rate_limit_tracking=str(raw["RATE_LIMIT_TRACKING"] or "0"),
        rate_limit_unsubscribe=str(raw["RATE_LIMIT_UNSUBSCRIBE"] or "0"),
        rate_limit_webhooks=str(raw["RATE_LIMIT_WEBHOOKS"] or "0"),
    )
