"""A campaign worker process for the crash tests: ``python tests/crash_worker.py <campaign_id>``.

The app configuration arrives as JSON in ``CRASH_APP_CONFIG``.  ``CRASH_AT=<step>:<n>`` makes the
worker SIGKILL itself the n-th time the runner reaches that step boundary, which is how the tests
hit every boundary exactly; random kills come from the parent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from plugin.campaigns import runner
    from plugin.demo.app import create_app

    campaign_id = int(sys.argv[1])
    config = json.loads(os.environ["CRASH_APP_CONFIG"])
    kill_at = os.environ.get("CRASH_AT", "")
    step_name, _, nth = kill_at.rpartition(":")
    seen = {"n": 0}

    def on_step(name: str) -> None:
        if name == step_name:
            seen["n"] += 1
            if seen["n"] == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)

    app = create_app(config)
    with app.app_context():
        session = app.extensions["marketing"].session
        ctx = runner.context_from_app(
            app,
            on_step=on_step if kill_at else None,
            batch_lease=dt.timedelta(seconds=1),
            backoff_base=0.01,
        )
        from plugin.models import Campaign

        if session.get(Campaign, campaign_id).status == "scheduled":
            runner.start(session, campaign_id, ctx)
        outcome = runner.run_campaign(session, campaign_id, ctx)
        ctx.close()
    print(outcome, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
