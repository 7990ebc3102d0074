"""The Python tools a user would otherwise pick, driven like the plugin's SMTP channel.

Each peer runs in its own process (``python -m bench.smtp_peers --peer NAME ...``) so Django's
settings, Flask-Mailman's app and mailmerge's CLI never meet the benchmark's own app, and reads
``content.json`` written by ``bench.smtp``: the plugin's compiled subject, HTML and text (CSS
inlined, footer and unsubscribe link added, ``%name%`` markers) and, per recipient, the values
the plugin would send.  The markers become the tool's own template syntax, compiled once.
Giving the peers ready-made values is in their favour: our engine computes its values (and
signs an unsubscribe token) per recipient inside the timed run.

Prints one JSON line: ``{"seconds": s, "sent": n, ...}`` with the time of the sending work only
(Django's migrate and file writing are set up before the clock starts).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"%([A-Za-z0-9_]+)%")


def _to_jinja(text: str) -> str:
    return _MARKER.sub(lambda m: "{{ " + m.group(1) + " }}", text)


def flask_mailman(content: dict[str, Any], host: str, port: int, workdir: Path) -> dict[str, Any]:
    """One connection, ``send_messages`` per 100, a precompiled Jinja2 template (no autoescape)."""
    import jinja2
    from flask import Flask
    from flask_mailman import EmailMultiAlternatives, Mail

    app = Flask("peer")
    app.config.update(MAIL_SERVER=host, MAIL_PORT=port, MAIL_USE_TLS=False, MAIL_USE_SSL=False)
    mail = Mail(app)
    # Values arrive escaped by the plugin's rules already (as SendCloud substitutes them).
    env = jinja2.Environment(autoescape=False)  # noqa: S701
    subject_t, html_t, text_t = (env.from_string(_to_jinja(content[k])) for k in ("subject", "html", "text"))
    sender = f"{content['from_name']} <{content['from']}>"
    sent = 0
    with app.app_context():
        started = time.perf_counter()
        connection = mail.get_connection()
        connection.open()
        batch = []
        for item in content["recipients"]:
            values = item["values"]
            message = EmailMultiAlternatives(
                subject=subject_t.render(values),
                body=text_t.render(values),
                from_email=sender,
                to=[item["email"]],
                reply_to=[content["reply_to"]],
                connection=connection,
            )
            message.attach_alternative(html_t.render(values), "text/html")
            batch.append(message)
            if len(batch) == 100:
                sent += connection.send_messages(batch)
                batch = []
        if batch:
            sent += connection.send_messages(batch)
        connection.close()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "sent": sent}


def mailmerge(content: dict[str, Any], host: str, port: int, workdir: Path) -> dict[str, Any]:
    """Its CLI in-process: template file, CSV database, server config with ``ratelimit = 0``.

    It sends the HTML part only (its template is one body; multipart needs hand-written MIME),
    which favours it slightly.  It opens one SMTP connection per message by design.
    """
    from mailmerge.__main__ import main as mailmerge_main

    names = sorted({k for item in content["recipients"] for k in item["values"]})
    template = workdir / "mailmerge_template.txt"
    template.write_text(
        f"TO: {{{{ email_to }}}}\nSUBJECT: {_to_jinja(content['subject'])}\n"
        f"FROM: {content['from_name']} <{content['from']}>\nREPLY-TO: {content['reply_to']}\n"
        f"CONTENT-TYPE: text/html\n\n{_to_jinja(content['html'])}\n",
        encoding="utf-8",
    )
    database = workdir / "mailmerge_database.csv"
    with database.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email_to", *names])
        for item in content["recipients"]:
            writer.writerow([item["email"], *(item["values"].get(n, "") for n in names)])
    config = workdir / "mailmerge_server.conf"
    config.write_text(f"[smtp_server]\nhost = {host}\nport = {port}\nratelimit = 0\n", encoding="utf-8")
    args = [
        "--no-dry-run",
        "--no-limit",
        "--output-format",
        "raw",
        "--template",
        str(template),
        "--database",
        str(database),
        "--config",
        str(config),
    ]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        mailmerge_main(args, standalone_mode=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "sent": out.getvalue().count(" sent\n")}


def post_office(content: dict[str, Any], host: str, port: int, workdir: Path) -> dict[str, Any]:
    """django-post-office as its README says: ``send_many`` with a template and per-recipient
    context (rendered on delivery), then ``send_queued`` until the queue is empty; SQLite;
    its default 5 delivery threads per process and batches of 100."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        SECRET_KEY="bench-only",  # noqa: S106 - a throw-away settings module
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(workdir / "po.sqlite")}},
        INSTALLED_APPS=["django.contrib.contenttypes", "post_office"],
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST=host,
        EMAIL_PORT=port,
        DEFAULT_FROM_EMAIL=content["from"],
        POST_OFFICE={"BATCH_SIZE": 100, "LOG_LEVEL": 1},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from post_office import mail
    from post_office.models import EmailTemplate

    def django_syntax(text: str) -> str:
        return "{% autoescape off %}" + _to_jinja(text) + "{% endautoescape %}"

    template = EmailTemplate.objects.create(
        name="bench",
        subject=_to_jinja(content["subject"]),
        content=django_syntax(content["text"]),
        html_content=django_syntax(content["html"]),
    )
    sender = f"{content['from_name']} <{content['from']}>"
    started = time.perf_counter()
    kwargs = [
        {
            "recipients": [item["email"]],
            "sender": sender,
            "template": template,
            "context": item["values"],
            "render_on_delivery": True,
            "headers": {"Reply-To": content["reply_to"]},
        }
        for item in content["recipients"]
    ]
    for start in range(0, len(kwargs), 1000):
        mail.send_many(kwargs[start : start + 1000])
    queued = time.perf_counter()
    sent = 0
    while True:
        done, failed, requeued = mail.send_queued(processes=1)
        sent += done
        if done + failed + requeued == 0:
            break
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "sent": sent,
        "enqueue_seconds": queued - started,
        "deliver_seconds": finished - queued,
    }


PEERS = {"django-post-office": post_office, "flask-mailman": flask_mailman, "mailmerge": mailmerge}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--peer", choices=sorted(PEERS), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    args = p.parse_args()
    content = json.loads((args.workdir / "content.json").read_text(encoding="utf-8"))
    peer_dir = args.workdir / args.peer
    peer_dir.mkdir(exist_ok=True)
    result = PEERS[args.peer](content, args.host, args.port, peer_dir)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
