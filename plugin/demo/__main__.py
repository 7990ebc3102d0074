"""``python -m plugin.demo``: migrate, seed, start the sandbox SMTP sink and IMAP reply mailbox,
and serve the demo CRM."""

from __future__ import annotations

import argparse
import os

from flask import Flask

from .. import migrate
from ..sandbox import SmtpSink
from ..scheduler import start_scheduler_if_enabled
from .app import create_app, restore_sandbox_account, stop_sendcloud_sandbox
from .models import db
from .seed import DEMO_USERS, seed_demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the demo CRM with the marketing plugin.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--contacts", type=int, default=10_000, help="synthetic contacts to seed")
    parser.add_argument(
        "--smtp-port",
        type=int,
        default=None,
        help="port of the sandbox SMTP sink (default: SANDBOX_SMTP_PORT, else 2525; 0 = any free port)",
    )
    parser.add_argument(
        "--no-sandbox",
        action="store_true",
        help="talk to the real SendCloud and DNS instead of the local simulator and DNS responder",
    )
    args = parser.parse_args()

    app = create_app(
        {
            "MARKETING_PUBLIC_BASE_URL": f"http://{args.host}:{args.port}",
            "MARKETING_SANDBOX": not args.no_sandbox,
            # The demo server is the one process that schedules: timed campaigns start by themselves.
            "MARKETING_SCHEDULER_ENABLED": True,
        }
    )
    with app.app_context():
        db.create_all()
        migrate.upgrade(db.engine)
        if seed_demo(db.session, contacts=args.contacts):
            print(f"Seeded {args.contacts} demo contacts.")
        restored = restore_sandbox_account(app)
        if restored:
            print(f"Restored the sandbox API_USERs of an earlier run: {', '.join(restored)}.")
    sink = start_sink(app, args.smtp_port)
    imap = start_reply_mailbox(app) if not args.no_sandbox else None
    scheduler = start_scheduler_if_enabled(app)
    url = f"http://{args.host}:{args.port}/"
    print("\n  Demo CRM with the marketing plugin")
    print(f"  Open {url}")
    print("  Log in as: " + ", ".join(f"{u} / {p} ({r})" for u, p, _, r in DEMO_USERS))
    if sink is not None:
        print(f"  Sandbox SMTP sink on {sink.host}:{sink.port} (captured mail: {url}crm/sandbox/mail)")
    simulator = app.extensions.get("sandbox_sendcloud")
    if simulator is not None:
        account = app.config["MARKETING_SANDBOX_ACCOUNT"]
        dns = app.extensions["sandbox_dns"]
        login = f"{account['api_user']} / {account['api_key']}"
        print(f"  SendCloud simulator on {simulator.root}/ (account {login})")
        print(f"  Sandbox DNS on {dns.host}:{dns.port} (publish records from {url}marketing/setup/dns)")
    if imap is not None:
        print(
            f"  Sandbox IMAP reply mailbox on {imap.host}:{imap.port} (user {imap.user} / {imap.password}, "
            "no TLS): put replies in with any IMAP client; they are read every 5 minutes or at "
            f"{url}marketing/replies/mailbox"
        )
    if scheduler is not None:
        print(f"  Scheduler: tick every {scheduler.tick_seconds:g} s, campaigns run in this process")
    print()
    try:
        app.run(host=args.host, port=args.port, debug=False, use_reloader=False, threaded=True)
    finally:
        if scheduler is not None:
            scheduler.stop()
        if sink is not None:
            sink.stop()
        if imap is not None:
            imap.stop()
        stop_sendcloud_sandbox(app)


def start_sink(app: Flask, port: int | None = None) -> SmtpSink | None:
    """Start the sandbox SMTP sink and attach it as ``app.extensions["sandbox_smtp"]``.

    The port comes from ``--smtp-port``, else the ``SANDBOX_SMTP_PORT`` environment variable, else
    the app's ``SANDBOX_SMTP_PORT`` setting.  A busy port falls back to a free one (said aloud), so
    a second demo or another mail catcher does not stop the CRM from starting.
    """
    if port is None:
        port = int(os.environ.get("SANDBOX_SMTP_PORT") or app.config.get("SANDBOX_SMTP_PORT", 2525))
    sink = SmtpSink("127.0.0.1", port)
    try:
        sink.start()
    except OSError as exc:
        print(f"  Sandbox SMTP sink: {exc}; using a free port instead.")
        sink = SmtpSink("127.0.0.1", 0)
        try:
            sink.start()
        except OSError as again:
            print(f"  Sandbox SMTP sink not started: {again}")
            return None
    app.extensions["sandbox_smtp"] = sink
    return sink


def start_reply_mailbox(app: Flask):
    """Start the sandbox IMAP server (pymap) and make it the demo workspace's reply mailbox.

    An existing mailbox setting is replaced only when it points at a previous sandbox (loopback),
    so a reply mailbox an operator configured for real stays as it is.
    """
    from .. import replies
    from ..access import ensure_workspace
    from ..extension import get_state
    from ..sandbox.imap import ImapServer

    try:
        server = ImapServer().start()
    except (OSError, RuntimeError) as exc:
        print(f"  Sandbox IMAP reply mailbox not started: {exc}")
        return None
    with app.app_context():
        state = get_state()
        workspace = ensure_workspace(db.session, "default")
        mailbox = replies.get_mailbox(db.session, workspace.id)
        if mailbox is None or mailbox.imap_host == server.host:
            replies.save_mailbox(
                db.session,
                workspace.id,
                {
                    "host": server.host,
                    "port": server.port,
                    "security": "none",
                    "username": server.user,
                    "password": server.password,
                    "folder": "INBOX",
                    "tag_name": mailbox.tag_name if mailbox else "Replied",
                    "notify_owner": True,
                    "match_window_days": mailbox.match_window_days
                    if mailbox
                    else replies.DEFAULT_WINDOW_DAYS,
                    "enabled": True,
                },
                secrets=state.secrets,
            )
        db.session.commit()
    app.extensions["sandbox_imap"] = server
    return server


if __name__ == "__main__":
    main()
