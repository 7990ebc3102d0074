"""A real IMAP server on loopback for the reply-detection tests and ``make demo``.

Reply detection talks to a mailbox over IMAP with :mod:`imaplib`; rather than faking the protocol
we run `pymap <https://github.com/icgood/pymap>`_ (an asyncio IMAP4rev1 server) with its in-memory
``dict`` backend in a child process.  Mail is put in with ``APPEND`` exactly as a mail server
delivers it, so UIDs, UIDVALIDITY, ``BODY.PEEK`` and flags behave as on a real server.

The server only listens on 127.0.0.1; it is stopped (and waited for) on :meth:`ImapServer.stop`,
on leaving a ``with`` block and at interpreter exit, so no test leaves a process behind.
"""

from __future__ import annotations

import atexit
import contextlib
import imaplib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_USER = "replies"
DEFAULT_PASSWORD = "replies-password"  # noqa: S105 - the loopback sandbox's demo user


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((DEFAULT_HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # SO_REUSEADDR: a port left in TIME_WAIT by our own previous server counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((DEFAULT_HOST, port))
        except OSError:
            return False
        return True


def _pymap_command() -> list[str]:
    """The ``pymap`` next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).with_name("pymap")
    if local.exists():
        return [str(local)]
    found = shutil.which("pymap")
    if found:
        return [found]
    return [sys.executable, "-m", "pymap"]


class ImapServer:
    """One pymap process serving one user; ``start()`` returns once the port answers IMAP."""

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        port: int | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.host = DEFAULT_HOST
        self.user = user
        self.password = password
        self.port = port or _free_port()
        self.cert = str(cert) if cert else None
        self.key = str(key) if key else None
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: imaplib.IMAP4 | None = None

    @property
    def tls(self) -> bool:
        """With a certificate the server offers STARTTLS (pymap has no implicit-TLS port)."""
        return bool(self.cert and self.key)

    def command(self) -> list[str]:
        cmd = [*_pymap_command(), "--host", self.host, "--port", str(self.port)]
        if self.tls:
            cmd += ["--cert", str(self.cert), "--key", str(self.key)]
        else:
            cmd.append("--no-tls")
        cmd += ["dict", "--demo-user", self.user, "--demo-password", self.password]
        return cmd

    def start(self) -> ImapServer:
        if self._process is not None:
            return self
        if not _port_free(self.port):  # else another server's greeting would look like ours
            raise RuntimeError(f"port {self.port} on {self.host} is in use")
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode("utf-8", "replace") if self._process.stderr else ""
                self._process = None
                raise RuntimeError(f"pymap exited at start: {err.strip()[-500:]}")
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pymap did not answer on {self.host}:{self.port}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.settimeout(2)
                return sock.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.logout()
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> ImapServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client helpers: how tests and the demo deliver mail into the mailbox ------------------

    def client(self) -> imaplib.IMAP4:
        """A logged-in client (STARTTLS first when the server has a certificate)."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        if self.tls:
            import ssl

            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the sandbox's own throwaway certificate
            conn.starttls(context)
        conn.login(self.user, self.password)
        return conn

    def _admin(self) -> imaplib.IMAP4:
        """One kept connection for the helpers below (a pymap login takes about half a second)."""
        if self._conn is not None:
            try:
                if self._conn.noop()[0] == "OK":
                    return self._conn
            except (imaplib.IMAP4.error, OSError):
                pass
        self._conn = self.client()
        return self._conn

    def append(self, raw: bytes | str, folder: str = "INBOX") -> int:
        """Deliver one message; returns its UID."""
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        typ, answer = self._admin().append(folder, None, None, data)
        if typ != "OK":
            raise RuntimeError(f"APPEND refused: {answer!r}")
        text = (answer[0] or b"").decode("ascii", "replace")
        # [APPENDUID <uidvalidity> <uid>] (UIDPLUS)
        if "APPENDUID" in text:
            return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])
        return 0

    def create_folder(self, folder: str) -> None:
        typ, answer = self._admin().create(folder)
        if typ != "OK":
            raise RuntimeError(f"CREATE refused: {answer!r}")

    def recreate_folder(self, folder: str) -> None:
        """Delete and create ``folder`` again: the server gives it a new UIDVALIDITY."""
        conn = self._admin()
        conn.select("INBOX", readonly=True)  # pymap drops a connection whose selected folder goes
        conn.delete(folder)
        conn.create(folder)

    def uidvalidity(self, folder: str = "INBOX") -> int:
        conn = self._admin()
        conn.select(folder, readonly=True)
        _, data = conn.response("UIDVALIDITY")
        return int(data[0])

    def flags(self, uid: int, folder: str = "INBOX") -> str:
        """The flags of one message (tests check that polling marks nothing as read)."""
        conn = self._admin()
        conn.select(folder, readonly=True)
        _, data = conn.uid("FETCH", str(uid), "(FLAGS)")
        return (data[0] or b"").decode("ascii", "replace") if data and isinstance(data[0], bytes) else ""


__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USER", "ImapServer"]
