"""A discarding aiosmtpd sink in its own process: the one SMTP server every SMTP contender uses.

Why not ``plugin.sandbox.smtp_sink``: it parses every message into headers and decoded parts
for the demo pages, which costs more than sending it and would make the sink the ceiling of
every contender.  This one only counts messages and recipients.  Why another process: on two
cores, a sink sharing the benchmark's GIL would slow the client down by its own work.

Protocol on stdin/stdout: prints ``{"port": N}`` once ready; each line ``count`` on stdin is
answered with ``{"messages": M, "recipients": R}``; end of stdin stops the sink.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from aiosmtpd.controller import Controller

from plugin.sandbox.smtp_sink import free_port


class CountingHandler:
    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos or ())
        return "250 OK"


def main() -> None:
    handler = CountingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(json.dumps({"messages": handler.messages, "recipients": handler.recipients}), flush=True)
    controller.stop()


if __name__ == "__main__":
    main()
