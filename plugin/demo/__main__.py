"""``python -m plugin.demo``: migrate, seed, start the sandbox SMTP sink and serve the demo CRM."""

from __future__ import annotations

import argparse

from .. import migrate
from .app import create_app
from .models import db
from .seed import DEMO_USERS, seed_demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the demo CRM with the marketing plugin.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--contacts", type=int, default=10_000, help="synthetic contacts to seed")
    args = parser.parse_args()

    app = create_app({"MARKETING_PUBLIC_BASE_URL": f"http://{args.host}:{args.port}"})
    with app.app_context():
        db.create_all()
        migrate.upgrade(db.engine)
        if seed_demo(db.session, contacts=args.contacts):
            print(f"Seeded {args.contacts} demo contacts.")
    sink = app.extensions.get("sandbox_smtp")
    url = f"http://{args.host}:{args.port}/"
    print("\n  Demo CRM with the marketing plugin")
    print(f"  Open {url}")
    print("  Log in as: " + ", ".join(f"{u} / {p} ({r})" for u, p, _, r in DEMO_USERS))
    if sink is not None:
        print(f"  Sandbox SMTP sink on {sink.host}:{sink.port} (captured mail: {url}crm/sandbox/mail)")
    print()
    app.run(host=args.host, port=args.port, debug=False, use_reloader=False, threaded=True)


if __name__ == "__main__":
    main()
