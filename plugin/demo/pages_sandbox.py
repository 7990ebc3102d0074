"""Demo CRM pages for the sandbox SMTP sink: captured mail, one message, clear, send a test.

The sink (``plugin.sandbox.SmtpSink``) is started by ``python -m plugin.demo`` and kept in
``app.extensions["sandbox_smtp"]``; without it the pages say how to start it.  Captured mail is
the demo process's, not a workspace's: the sink sees SMTP traffic, not organizations.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from html import escape

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required
from marshmallow import EXCLUDE, ValidationError, fields, validate

from ..i18n import _
from ..sandbox import SmtpSink
from ..schemas.common import MAX_ID, StrictSchema
from .views import bp, field_errors, require_permission, user_can

__all__ = ["bp"]

TEST_SENDER = "Demo CRM <demo@crm.example>"


def current_sink() -> SmtpSink | None:
    """The running sink of this app, or ``None``."""
    sink = current_app.extensions.get("sandbox_smtp")
    return sink if isinstance(sink, SmtpSink) and sink.running else None


def _matches(message, needle: str) -> bool:
    haystack = " ".join(
        [message.subject, message.from_header, message.to_header, message.envelope_from, *message.envelope_to]
    ).lower()
    return needle in haystack


@bp.get("/sandbox/mail")
@login_required
def sandbox_mail():
    require_permission("view")
    sink = current_sink()
    query = (request.args.get("q") or "").strip()[:200]
    messages = sink.messages() if sink is not None else []
    total = len(messages)
    if query:
        messages = [m for m in messages if _matches(m, query.lower())]
    return render_template(
        "demo/sandbox_mail.html",
        sink=sink,
        messages=messages,
        total=total,
        query=query,
        form={},
        errors={},
        can_clear=user_can("settings"),
        port=current_app.config.get("SANDBOX_SMTP_PORT", 2525),
    )


def _captured_or_404(message_id: int):
    sink = current_sink()
    message = sink.get(message_id) if sink is not None else None
    if message is None:
        abort(404)
    return message


@bp.get(f"/sandbox/mail/<int(min=1,max={MAX_ID}):message_id>")
@login_required
def sandbox_mail_detail(message_id: int):
    require_permission("view")
    return render_template("demo/sandbox_mail_detail.html", message=_captured_or_404(message_id))


@bp.get(f"/sandbox/mail/<int(min=1,max={MAX_ID}):message_id>/raw")
@login_required
def sandbox_mail_raw(message_id: int):
    """The message as received, for checking headers a page does not show."""
    require_permission("view")
    message = _captured_or_404(message_id)
    response = Response(message.raw, mimetype="text/plain")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


@bp.post("/sandbox/mail/clear")
@login_required
def sandbox_mail_clear():
    require_permission("settings")
    sink = current_sink()
    if sink is not None:
        count = sink.clear()
        flash(_("%(n)s captured messages cleared.", n=count), "success")
    return redirect(url_for("crm.sandbox_mail"))


class MailTestForm(StrictSchema):
    class Meta:
        unknown = EXCLUDE

    to = fields.Email(required=True, validate=validate.Length(max=320))
    subject = fields.String(required=True, validate=validate.Length(min=1, max=200))
    body = fields.String(load_default="", validate=validate.Length(max=20_000))


def build_test_mail(to: str, subject: str, body: str) -> EmailMessage:
    """A text + HTML message, like the ones campaigns send, so both parts can be seen."""
    message = EmailMessage()
    message["From"] = TEST_SENDER
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="crm.example")
    message.set_content(body or subject)
    paragraphs = "".join(f"<p>{escape(line)}</p>" for line in (body or subject).splitlines() if line.strip())
    message.add_alternative(
        f'<!doctype html><html><body style="font-family:sans-serif">'
        f"<h2>{escape(subject)}</h2>{paragraphs}</body></html>",
        subtype="html",
    )
    return message


@bp.post("/sandbox/mail/send")
@login_required
def sandbox_mail_send():
    require_permission("view")
    sink = current_sink()
    if sink is None:
        flash(_("The sandbox SMTP sink is not running."), "error")
        return redirect(url_for("crm.sandbox_mail"))
    raw = {k: request.form.get(k, "") for k in ("to", "subject", "body")}
    raw["to"] = raw["to"].strip()
    try:
        data = MailTestForm().load(raw)
    except ValidationError as exc:
        return render_template(
            "demo/sandbox_mail.html",
            sink=sink,
            messages=sink.messages(),
            total=len(sink),
            query="",
            form=raw,
            errors=field_errors(exc),
            can_clear=user_can("settings"),
            port=sink.port,
        ), 400
    message = build_test_mail(data["to"], data["subject"], data["body"])
    try:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        flash(_("Sending failed: %(error)s", error=str(exc)), "error")
    else:
        flash(_("Test mail sent to %(to)s.", to=data["to"]), "success")
    return redirect(url_for("crm.sandbox_mail"))
