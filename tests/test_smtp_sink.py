"""The sandbox SMTP sink with real smtplib sends, and the demo's captured-mail pages."""

from __future__ import annotations

import re
import smtplib
import socket
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from plugin.sandbox import SmtpSink


@pytest.fixture
def sink():
    with SmtpSink(capacity=5) as running:
        yield running


@pytest.fixture
def attached(app, sink):
    """The sink as the demo attaches it (``python -m plugin.demo`` does this)."""
    app.extensions["sandbox_smtp"] = sink
    yield sink
    app.extensions.pop("sandbox_smtp", None)


def send(
    sink: SmtpSink, message, sender: str = "from@example.com", to: tuple[str, ...] = ("to@example.com",)
):
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.send_message(message, from_addr=sender, to_addrs=list(to))


def test_port_zero_picks_a_free_port_and_stop_releases_it():
    sink = SmtpSink(port=0).start()
    port = sink.port
    assert port > 0
    assert sink.running
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(100).startswith(b"220")
    sink.stop()
    assert not sink.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_busy_port_is_a_clear_error(sink):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{sink.port}"):
        SmtpSink(port=sink.port).start()


def test_ascii_message(sink):
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "Bob <bob@example.com>"
    message["Subject"] = "Hello Bob"
    message["Date"] = "Tue, 03 Mar 2026 10:00:00 +0800"
    message.set_content("Line one\nLine two\n")
    send(sink, message, sender="bounce@example.com", to=("bob@example.com", "carol@example.com"))
    [captured] = sink.messages()
    assert captured.envelope_from == "bounce@example.com"
    assert captured.envelope_to == ("bob@example.com", "carol@example.com")
    assert captured.subject == "Hello Bob"
    assert captured.from_header == "Alice <alice@example.com>"
    assert captured.text == "Line one\nLine two\n"
    assert captured.html is None
    assert captured.date.isoformat() == "2026-03-03T10:00:00+08:00"
    assert captured.size == len(captured.raw) > 100


def test_chinese_subject_and_body_in_base64_and_quoted_printable(sink):
    subject = "广交会邀请函 — 第139届"
    body = "尊敬的王先生：\n欢迎莅临我们的展位。"
    quoted_printable = Charset("utf-8")
    quoted_printable.body_encoding = QP
    for charset in ("utf-8", quoted_printable):  # MIMEText's utf-8 default is base64
        part = MIMEText(body, "plain", charset)
        part["Subject"] = Header(subject, "utf-8")
        part["From"] = f"{Header('市场部', 'utf-8').encode()} <market@example.cn>"
        part["To"] = "wang@example.cn"
        send(sink, part)
    newest, oldest = sink.messages()
    assert b"Content-Transfer-Encoding: base64" in oldest.raw
    assert b"Content-Transfer-Encoding: quoted-printable" in newest.raw
    for captured in (newest, oldest):
        assert captured.subject == subject
        assert captured.from_header == "市场部 <market@example.cn>"
        assert captured.text.rstrip("\n") == body


def test_gbk_body(sink):
    part = MIMEText("你好，世界", "plain", "gbk")
    part["Subject"] = Header("中文 GBK", "gbk")
    send(sink, part)
    [captured] = sink.messages()
    assert captured.subject == "中文 GBK"
    assert captured.text.strip() == "你好，世界"


def test_multipart_alternative_with_html_and_attachment(sink):
    message = EmailMessage()
    message["From"] = "news@example.com"
    message["To"] = "张伟 <zhang@example.cn>"
    message["Subject"] = "新品发布 New products"
    message.set_content("纯文本版本")
    message.add_alternative(
        "<html><body><h1>新品</h1><script>alert(1)</script></body></html>", subtype="html"
    )
    message.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="目录.pdf")
    send(sink, message)
    [captured] = sink.messages()
    assert captured.to_header == "张伟 <zhang@example.cn>"
    assert captured.text.strip() == "纯文本版本"
    assert "<h1>新品</h1>" in captured.html
    [attachment] = captured.attachments
    assert (attachment.filename, attachment.content_type, attachment.size) == (
        "目录.pdf",
        "application/pdf",
        13,
    )
    assert captured.header("subject") == "新品发布 New products"


def test_legacy_mime_multipart_from_smtplib_users(sink):
    outer = MIMEMultipart("alternative")
    outer["Subject"] = Header("旧式 multipart", "utf-8")
    outer.attach(MIMEText("text 文本", "plain", "utf-8"))
    outer.attach(MIMEText("<p>html 超文本</p>", "html", "utf-8"))
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], outer.as_string())
    [captured] = sink.messages()
    assert captured.subject == "旧式 multipart"
    assert captured.text.strip() == "text 文本"
    assert captured.html.strip() == "<p>html 超文本</p>"


def test_keeps_the_newest_messages_and_clears(sink):
    for n in range(7):
        message = EmailMessage()
        message["Subject"] = f"n{n}"
        message.set_content("x")
        send(sink, message)
    kept = sink.messages()
    assert [m.subject for m in kept] == ["n6", "n5", "n4", "n3", "n2"]
    assert sink.get(kept[0].id).subject == "n6"
    assert sink.get(1) is None  # dropped off the end
    assert sink.clear() == 5
    assert sink.messages() == []
    assert len(sink) == 0


# -- pages -----------------------------------------------------------------------------------


def test_page_says_how_to_start_the_sink_when_it_is_not_running(login, app):
    app.extensions.pop("sandbox_smtp", None)
    html = login("sales").get("/crm/sandbox/mail").get_data(as_text=True)
    assert 'id="sandbox-off"' in html
    assert "make demo" in html
    assert "2525" in html
    assert login("admin").get("/crm/sandbox/mail/1").status_code == 404


def test_send_a_test_mail_from_the_page_and_read_it(login, attached):
    browser = login("sales")
    response = browser.post(
        "/crm/sandbox/mail/send",
        data={"to": "client@example.com", "subject": "测试 <b>邮件</b>", "body": "第一行\n第二行"},
    )
    assert response.status_code == 302
    [captured] = attached.messages()
    assert captured.subject == "测试 <b>邮件</b>"
    assert captured.envelope_to == ("client@example.com",)
    listing = browser.get("/crm/sandbox/mail").get_data(as_text=True)
    assert f'<tr data-id="{captured.id}">' in listing
    assert "测试 &lt;b&gt;邮件&lt;/b&gt;" in listing
    assert "<b>邮件</b>" not in listing
    detail = browser.get(f"/crm/sandbox/mail/{captured.id}").get_data(as_text=True)
    assert '<pre class="mail" id="mail-text">第一行\n第二行' in detail
    frame = re.search(r'<iframe id="mail-html"[^>]*>', detail).group(0)
    assert 'sandbox=""' in frame
    srcdoc = re.search(r'srcdoc="([^"]*)"', frame).group(1)
    assert "&lt;p&gt;第一行&lt;/p&gt;" in srcdoc
    assert "<p>第一行</p>" not in detail
    raw = browser.get(f"/crm/sandbox/mail/{captured.id}/raw")
    assert raw.mimetype == "text/plain"
    assert b"Subject:" in raw.data


def test_html_of_a_message_stays_inside_the_sandboxed_frame(login, attached):
    message = EmailMessage()
    message["Subject"] = "evil"
    message.set_content("plain")
    message.add_alternative('<img src=x onerror="alert(1)"><script>alert(2)</script>', subtype="html")
    send(attached, message)
    [captured] = attached.messages()
    detail = login("marketer").get(f"/crm/sandbox/mail/{captured.id}").get_data(as_text=True)
    assert "<script>alert(2)</script>" not in detail
    assert 'onerror="alert' not in detail
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in detail


def test_send_form_validates(login, attached):
    response = login("marketer").post("/crm/sandbox/mail/send", data={"to": "nobody", "subject": ""})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'id="error-to"' in html
    assert 'id="error-subject"' in html
    assert attached.messages() == []


def test_clear_is_for_admins(login, attached):
    message = EmailMessage()
    message["Subject"] = "keep?"
    message.set_content("x")
    send(attached, message)
    marketer = login("marketer")
    assert 'id="sandbox-clear"' not in marketer.get("/crm/sandbox/mail").get_data(as_text=True)
    assert marketer.post("/crm/sandbox/mail/clear").status_code == 403
    assert len(attached) == 1
    admin = login("admin")
    page = admin.get("/crm/sandbox/mail").get_data(as_text=True)
    assert re.search(r'id="sandbox-clear"\s+data-confirm=', page)
    assert admin.post("/crm/sandbox/mail/clear").status_code == 302
    assert len(attached) == 0
    assert 'id="mail-empty"' in admin.get("/crm/sandbox/mail").get_data(as_text=True)


def test_search_and_login_required(app, login, attached):
    for subject in ("Invoice 42", "Newsletter"):
        message = EmailMessage()
        message["Subject"] = subject
        message.set_content("x")
        send(attached, message)
    html = login("sales").get("/crm/sandbox/mail?q=invoice").get_data(as_text=True)
    assert "Invoice 42" in html
    assert "Newsletter" not in html
    assert app.test_client().get("/crm/sandbox/mail").status_code == 302
