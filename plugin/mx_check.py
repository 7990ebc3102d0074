"""Optional MX check of recipient domains before a campaign is frozen.

Why: a domain that does not exist, or publishes a "null MX" (RFC 7505), can never receive mail;
sending to it costs quota and hurts the sender's reputation with the provider.  Why only
optional and bounded: DNS is slow and sometimes hangs, and a campaign must not wait minutes for
it.  So the check

* asks once per *domain* (recipients share few domains), most common domains first, so a budget
  that runs out still covered most recipients;
* runs a few lookups in parallel, each limited to what is left of the budget, so the whole check
  ends at the deadline even when a name server never answers;
* keeps verdicts in a per-domain cache with a lifetime, shared by later freezes of the process;
* only ever says "no" for a definite answer (NXDOMAIN, null MX, no MX and no address record).
  Timeouts, SERVFAIL and domains left when the budget ran out are "unknown" and keep their mail.

Resolver: a ``ResolverConfig`` (like ``dns_check``; tests point it at the loopback responder) or
a ready dnspython resolver.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from .dns_check import ResolverConfig, make_resolver

Verdict = Literal["ok", "no_mx", "unknown"]

#: How long a cached verdict is trusted (seconds).  Unknown verdicts are never cached.
CACHE_TTL = 3600.0
#: Parallel lookups.  DNS waits on the network, not the CPU, so threads are enough.
WORKERS = 16


@dataclass
class DomainCache:
    """Verdicts per domain with an expiry; thread-safe, bounded."""

    ttl: float = CACHE_TTL
    max_entries: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, tuple[Verdict, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, domain: str) -> Verdict | None:
        with self._lock:
            entry = self._entries.get(domain)
            if entry is None:
                return None
            if entry[1] <= self.clock():
                del self._entries[domain]
                return None
            return entry[0]

    def put(self, domain: str, verdict: Verdict) -> None:
        if verdict == "unknown":
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; a cache miss only costs a lookup
            self._entries[domain] = (verdict, self.clock() + self.ttl)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The process-wide cache used when a caller does not bring its own.
DEFAULT_CACHE = DomainCache()


@dataclass(frozen=True)
class MxReport:
    verdicts: dict[str, Verdict]
    #: Domains not looked up because the budget ran out (they count as "unknown").
    unchecked: int
    elapsed: float

    @property
    def bad(self) -> set[str]:
        return {domain for domain, verdict in self.verdicts.items() if verdict == "no_mx"}


def _resolver_for(resolver: ResolverConfig | dns.resolver.Resolver | None) -> dns.resolver.Resolver:
    if isinstance(resolver, dns.resolver.Resolver):
        return resolver
    return make_resolver(resolver or ResolverConfig())


def _query(res: dns.resolver.Resolver, domain: str, rtype: str, lifetime: float) -> list[object] | None:
    """Records of ``rtype``; ``[]`` for NODATA; ``None`` for NXDOMAIN.  Other failures raise."""
    qname = dns.name.from_text(domain.rstrip(".") + ".")
    try:
        answer = res.resolve(qname, rtype, search=False, lifetime=lifetime, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    return list(answer)


def lookup(res: dns.resolver.Resolver, domain: str, deadline: float, clock=time.monotonic) -> Verdict:
    """Can ``domain`` receive mail?  Follows RFC 5321 §5.1: no MX means the address records count."""
    try:
        for rtype in ("MX", "A", "AAAA"):
            left = deadline - clock()
            if left <= 0.01:
                return "unknown"
            records = _query(res, domain, rtype, min(left, res.lifetime or left))
            if records is None:
                return "no_mx"
            if rtype == "MX" and records:
                # RFC 7505 null MX: a single record "0 ." says the domain accepts no mail.
                hosts = {r.exchange.to_text() for r in records}  # type: ignore[attr-defined]
                return "no_mx" if hosts == {"."} else "ok"
            if records:
                return "ok"
        return "no_mx"
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout):
        return "unknown"
    except (dns.exception.DNSException, OSError, ValueError):
        return "unknown"


def check_domains(
    domains: Iterable[str],
    *,
    resolver: ResolverConfig | dns.resolver.Resolver | None,
    budget_seconds: float,
    cache: DomainCache | None = None,
    workers: int = WORKERS,
    clock: Callable[[], float] = time.monotonic,
) -> MxReport:
    """Verdicts for ``domains`` (give the most common first) within ``budget_seconds``."""
    started = clock()
    deadline = started + max(0.0, budget_seconds)
    cache = DEFAULT_CACHE if cache is None else cache
    verdicts: dict[str, Verdict] = {}
    todo: list[str] = []
    for raw in domains:
        domain = raw.strip().rstrip(".").lower()
        if not domain or domain in verdicts:
            continue
        cached = cache.get(domain)
        if cached is not None:
            verdicts[domain] = cached
        else:
            verdicts[domain] = "unknown"
            todo.append(domain)
    if not todo or budget_seconds <= 0:
        return MxReport(verdicts, len(todo), clock() - started)
    res = _resolver_for(resolver)
    pending = iter(todo)
    done_count = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mx-check") as pool:
        running: dict[Future[Verdict], str] = {}

        def submit_next() -> bool:
            if clock() >= deadline:
                return False
            domain = next(pending, None)
            if domain is None:
                return False
            running[pool.submit(lookup, res, domain, deadline, clock)] = domain
            return True

        for _ in range(max(1, workers)):
            if not submit_next():
                break
        while running:
            finished, _ = wait(
                list(running), timeout=max(0.0, deadline - clock()) + 0.5, return_when=FIRST_COMPLETED
            )
            if not finished:
                break  # every lookup is bounded by the deadline; this is only a safety net
            for future in finished:
                domain = running.pop(future)
                verdict = future.result()
                verdicts[domain] = verdict
                cache.put(domain, verdict)
                done_count += 1
                submit_next()
    return MxReport(verdicts, len(todo) - done_count, clock() - started)
