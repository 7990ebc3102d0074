"""A worker process racing others for one account's daily quota:
``python tests/race_worker.py <campaign_id> [<campaign_id> ...]`` (config JSON in ``RACE_APP_CONFIG``).

It keeps running whichever of its campaigns can still send, in a random order, until every one
is paused or finished, exactly as several Celery workers would share them.
"""

from __future__ import annotations

import json
import os
import random
import sys


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from plugin.campaigns import runner
    from plugin.demo.app import create_app

    ids = [int(a) for a in sys.argv[1:]]
    rng = random.Random(os.getpid())
    app = create_app(json.loads(os.environ["RACE_APP_CONFIG"]))
    with app.app_context():
        session = app.extensions["marketing"].session
        ctx = runner.context_from_app(app, backoff_base=0.01)
        active = list(ids)
        while active:
            campaign_id = rng.choice(active)
            outcome = runner.run_batch(session, campaign_id, ctx)
            if outcome in (runner.DONE, runner.BLOCKED) or (
                outcome == runner.IDLE and not runner._open_batches_elsewhere(session, campaign_id)
            ):
                active.remove(campaign_id)
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
