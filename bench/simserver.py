"""The SendCloud simulator in its own process, trimmed for throughput runs.

Why a separate process: on two cores, a simulator in the benchmark's process would share its GIL
and be counted in its memory.  Why trimmed: the simulator keeps every accepted mail, every
request and a pending "deliver" webhook job per batch; at 1,000,000 recipients that is gigabytes
and has nothing to do with what is measured.  This subclass validates, renders and charges each
call exactly as the real simulator does, then keeps only counters (mails and distinct
recipients per API_USER) and drops the stored mail.  Webhooks are never emitted.

Run: ``python -m bench.simserver`` prints one JSON line ``{"url": ..., "root": ...}`` and serves
until its stdin closes.  ``POST /_bench/account`` (apiUser, apiKey) adds an account with a huge
quota; ``GET /_bench/stats?apiUser=...`` returns ``{"mails", "unique", "calls"}``.
"""

from __future__ import annotations

import json
import sys
import threading
from decimal import Decimal
from typing import Any

from flask import Response, request
from waitress.server import create_server

from plugin.sandbox.sendcloud import DeliveredMail, SendCloudSimulator


class CountingSimulator(SendCloudSimulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(deliver_delay=3600, **kwargs)
        self._stats: dict[str, dict[str, Any]] = {}
        self.app.add_url_rule("/_bench/account", "bench_account", self._bench_account, methods=["POST"])
        self.app.add_url_rule("/_bench/stats", "bench_stats", self._bench_stats)

    def _after_accept(
        self, api_user: str, message_id: str, mails: list[DeliveredMail], task_id: int | None
    ) -> None:
        with self._lock:
            stats = self._stats.setdefault(api_user, {"mails": 0, "seen": set(), "calls": 0})
            stats["mails"] += len(mails)
            stats["calls"] += 1
            stats["seen"].update(m.recipient for m in mails)
            self._mails.clear()
            self._requests.clear()

    def _bench_account(self) -> Response:
        self.add_account(
            request.form["apiUser"],
            request.form["apiKey"],
            quota=10**9,
            balance=Decimal(10**9),
        )
        return Response("ok", mimetype="text/plain")

    def _bench_stats(self) -> Response:
        with self._lock:
            stats = self._stats.get(request.args.get("apiUser", ""), {"mails": 0, "seen": set(), "calls": 0})
            body = {"mails": stats["mails"], "unique": len(stats["seen"]), "calls": stats["calls"]}
        return Response(json.dumps(body), mimetype="application/json")


def main() -> None:
    simulator = CountingSimulator()
    # waitress, not werkzeug's development server: the floor is defined as a bare loop over one
    # keep-alive connection, and werkzeug answers every request with "Connection: close" (each
    # call then paid a TCP connect and a new server thread, engine and floor alike).  waitress
    # keeps connections open and sets TCP_NODELAY (no 40 ms wait for a delayed ACK per call).
    # Threads: more than the engine ever keeps connections open (--processes x --workers), so no
    # call waits in waitress's queue for a free thread while the floor's never does.
    server = create_server(simulator.app, host="127.0.0.1", port=0, threads=32, ident="simulator")
    root = f"http://127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    print(json.dumps({"url": f"{root}/apiv2", "root": root}), flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    server.task_dispatcher.shutdown()  # type: ignore[union-attr]  # lets calls in flight finish
    server.close()
    simulator.close()


if __name__ == "__main__":
    main()
