"""The loopback IMAP server (pymap in a child process) that reply detection is tested against."""

from __future__ import annotations

import imaplib

import pytest

from plugin.sandbox.imap import ImapServer

MESSAGE = b"From: a@example.net\r\nTo: r@x.com\r\nSubject: hi\r\nMessage-ID: <s1@example.net>\r\n\r\nhi\r\n"


@pytest.fixture(scope="module")
def server():
    with ImapServer(user="box", password="secret-1") as srv:
        yield srv


def test_starts_answers_and_stops():
    srv = ImapServer().start()
    try:
        assert srv.running
        conn = srv.client()
        assert conn.noop()[0] == "OK"
        conn.logout()
    finally:
        srv.stop()
    assert not srv.running
    with pytest.raises(ConnectionRefusedError):
        imaplib.IMAP4(srv.host, srv.port, timeout=2)


def test_append_returns_uid_and_fetch_reads_it(server):
    uid = server.append(MESSAGE)
    assert uid > 0
    conn = server.client()
    try:
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK"
        assert b"Message-ID: <s1@example.net>" in data[0][1]
    finally:
        conn.logout()
    assert "\\Seen" not in server.flags(uid)


def test_wrong_password_refused(server):
    conn = imaplib.IMAP4(server.host, server.port, timeout=5)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login("box", "wrong")
    finally:
        conn.shutdown()


def test_recreated_folder_gets_new_uidvalidity(server):
    server.create_folder("Replies")
    before = server.uidvalidity("Replies")
    server.recreate_folder("Replies")
    assert server.uidvalidity("Replies") != before


def test_refuses_to_start_on_a_busy_port(server):
    with pytest.raises(RuntimeError):
        ImapServer(port=server.port, startup_timeout=5).start()
