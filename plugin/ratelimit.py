"""Fixed-window rate limits for the public ``/m`` endpoints, in Redis or in memory.

Why not Flask-Limiter: it installs itself on the whole application (a ``before_request`` hook,
default limits, response headers, its own ``app.extensions`` entry).  This plugin lives inside a
host CRM that may run its own limiter with other storage and rules; the plugin must only limit
its own blueprint.  A fixed window per (endpoint group, client address) is all these endpoints
need: they are hit by mail clients, image proxies and the provider's webhook sender, and the
point is to stop floods and token guessing, not to shape traffic.

Storage: ``redis://...`` shares the counts between every process of a deployment (one
``INCR`` + ``EXPIRE`` per request, pipelined); ``memory://`` counts per process.  If Redis is
unreachable the request is let through (logged): tracking and unsubscribe must keep working.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_ALIASES = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour", "d": "day"}


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    amount: int
    seconds: int


def parse(text: str) -> Limit | None:
    """``"600/minute"`` → ``Limit(600, 60)``; ``"0"``, ``""`` or ``"off"`` → ``None`` (no limit)."""
    value = (text or "").strip().lower()
    if value in ("", "0", "off", "none"):
        return None
    amount, _, unit = value.partition("/")
    unit = unit.strip() or "minute"
    unit = _ALIASES.get(unit, unit.removesuffix("s"))
    if unit not in _UNITS or not amount.strip().isdigit():
        raise ValueError(f"rate limit must look like '100/minute', got {text!r}")
    number = int(amount)
    return None if number <= 0 else Limit(number, _UNITS[unit])


class RateLimiter:
    """``hit(group, client, limit)`` → seconds to wait (0: allowed)."""

    def __init__(self, storage_url: str = "memory://", *, clock: Any = time.time) -> None:
        self.clock = clock
        self._redis: Any = None
        self._counts: dict[tuple[str, str, int, int], int] = {}
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        if storage_url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            self._redis = redis.Redis.from_url(storage_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def hit(self, group: str, client: str, limit: Limit | None) -> int:
        if limit is None:
            return 0
        now = self.clock()
        window = int(now // limit.seconds)
        retry_after = max(1, int((window + 1) * limit.seconds - now + 0.999))
        if self._redis is not None:
            key = f"mkt:rl:{group}:{client}:{limit.seconds}:{window}"
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.incr(key)
                pipe.expire(key, limit.seconds + 1)
                count = int(pipe.execute()[0])
            except Exception as exc:  # Redis down: do not take tracking and unsubscribe down too
                log.warning("rate limit storage unavailable, request allowed: %s", exc)
                return 0
        else:
            with self._lock:
                mkey = (group, client, limit.seconds, window)
                count = self._counts.get(mkey, 0) + 1
                self._counts[mkey] = count
                if now - self._pruned_at > 60:  # drop finished windows
                    self._pruned_at = now
                    self._counts = {k: v for k, v in self._counts.items() if k[3] >= int(now // k[2]) - 1}
        return retry_after if count > limit.amount else 0


__all__ = ["Limit", "RateLimiter", "parse"]
