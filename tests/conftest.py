"""Shared fixtures: an app on SQLite or PostgreSQL (``MARKETING_TEST_DATABASE=postgres``), users
of each role in two organizations, logged-in clients, API tokens and a live server.

Each test session gets its own database (a temporary SQLite file, or a PostgreSQL database named
after the process), migrated once with the plugin's Alembic history; every test starts from empty
tables.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import g
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from plugin import migrate
from plugin.access import ensure_workspace, issue_token
from plugin.demo.app import create_app
from plugin.demo.models import User, db
from plugin.models import Base

PG_ADMIN_URL = os.environ.get(
    "MARKETING_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKEND = os.environ.get("MARKETING_TEST_DATABASE", "sqlite")
FERNET_KEY = Fernet.generate_key().decode()


def _create_pg_database() -> tuple[str, str]:
    name = f"mkt_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _drop_pg_database(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test session's own, migrated to the newest revision."""
    if BACKEND == "postgres":
        name, url = _create_pg_database()
        try:
            _migrate(url)
            yield url
        finally:
            _drop_pg_database(name)
    else:
        with tempfile.TemporaryDirectory(prefix="mkt-test-") as folder:
            url = f"sqlite:///{Path(folder) / 'test.sqlite'}"
            _migrate(url)
            yield url


def _migrate(url: str) -> None:
    app = create_app(_config(url))
    with app.app_context():
        db.create_all()
        migrate.upgrade(db.engine)
        db.engine.dispose()


def _config(url: str, **extra) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "MARKETING_SECRET_KEYS": [FERNET_KEY],
        "SQLALCHEMY_DATABASE_URI": url,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        **extra,
    }


def _empty_all_tables() -> None:
    tables = list(reversed(Base.metadata.sorted_tables)) + list(reversed(db.Model.metadata.sorted_tables))
    if db.engine.dialect.name == "postgresql":
        names = ", ".join(f'"{t.name}"' for t in tables)
        db.session.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    else:
        for table in tables:
            db.session.execute(table.delete())
    db.session.commit()


@pytest.fixture
def app_config(database_url) -> dict:
    """Override in a test module to change settings (``app_config["MARKETING_..."] = ...``)."""
    return _config(database_url)


def _fresh_request_globals() -> None:
    """Start every request with an empty ``g``, as in production.

    The ``app`` fixture keeps an app context pushed, and Flask reuses it for test-client
    requests, so without this ``g`` (Flask-Login's user, the plugin's cached workspace, the
    locale) would leak from one request into the next, even across clients.
    """
    g.__dict__.clear()


class EnglishClient(FlaskClient):
    """Test clients ask for English unless a test says otherwise, so assertions can quote the
    source strings; tests of the Chinese UI send ``Accept-Language: zh-CN`` themselves."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.environ_base.setdefault("HTTP_ACCEPT_LANGUAGE", "en")


@pytest.fixture
def app(app_config, tmp_path):
    os.environ.setdefault("CRM_INSTANCE_PATH", str(tmp_path))
    application = create_app(dict(app_config))
    application.test_client_class = EnglishClient
    application.before_request_funcs.setdefault(None, []).insert(0, _fresh_request_globals)
    with application.app_context():
        _empty_all_tables()
        yield application
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def session(app):
    return db.session


def make_user(username: str, role: str, organization: str = "default", password: str | None = None) -> User:
    user = User(username=username, display_name=username.title(), role=role, organization=organization)
    user.set_password(password or username)
    db.session.add(user)
    db.session.commit()
    return user


@pytest.fixture
def users(app) -> dict[str, User]:
    """admin, marketer and sales in the default organization; ``other`` admin elsewhere."""
    return {
        "admin": make_user("admin", "admin"),
        "marketer": make_user("marketer", "marketer"),
        "sales": make_user("sales", "sales"),
        "other": make_user("other", "admin", organization="acme"),
    }


@pytest.fixture
def workspace(app):
    ws = ensure_workspace(db.session, "default")
    db.session.commit()
    return ws


@pytest.fixture
def other_workspace(app):
    ws = ensure_workspace(db.session, "acme")
    db.session.commit()
    return ws


CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')
FORM_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A test client that logs in through the real login form and keeps the CSRF token."""

    def __init__(self, client) -> None:
        self.client = client
        self.csrf = ""

    def login(self, username: str, password: str | None = None):
        page = self.client.get("/crm/login")
        token = FORM_CSRF_RE.search(page.get_data(as_text=True)).group(1)
        response = self.client.post(
            "/crm/login", data={"username": username, "password": password or username, "csrf_token": token}
        )
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        self.refresh_csrf()
        return self

    def refresh_csrf(self) -> str:
        page = self.client.get("/marketing/")
        match = CSRF_RE.search(page.get_data(as_text=True))
        self.csrf = match.group(1) if match else ""
        return self.csrf

    def get(self, url, **kw):
        return self.client.get(url, **kw)

    def post(self, url, **kw):
        return self._send("post", url, **kw)

    def patch(self, url, **kw):
        return self._send("patch", url, **kw)

    def delete(self, url, **kw):
        return self._send("delete", url, **kw)

    def _send(self, method, url, **kw):
        headers = dict(kw.pop("headers", {}) or {})
        headers.setdefault("X-CSRFToken", self.csrf)
        data = kw.get("data")
        if isinstance(data, dict) and "csrf_token" not in data:
            data["csrf_token"] = self.csrf
        return getattr(self.client, method)(url, headers=headers, **kw)


@pytest.fixture
def login(app, users):
    """``login("marketer")`` returns a :class:`Browser` logged in as that user."""

    def _login(username: str) -> Browser:
        return Browser(app.test_client()).login(username)

    return _login


@pytest.fixture
def api_token(app, users):
    """``api_token("admin")`` issues a bearer token for that user in their organization."""

    def _issue(username: str) -> str:
        user = users[username]
        ws = ensure_workspace(db.session, user.organization)
        token = issue_token(db.session, workspace_id=ws.id, user_id=str(user.id), name="test")
        db.session.commit()
        return token

    return _issue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(app):
    """The app served over real HTTP on a free loopback port, in a thread."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
