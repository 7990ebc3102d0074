"""After the whole wizard, no plaintext secret is in the database, in any log record at DEBUG, or
in any page the browser received.

The wizard runs over real HTTP (the app served on loopback, requests as the browser) against the
SendCloud simulator, which calls back our webhook URL to test it, and the DNS responder.
"""

from __future__ import annotations

import logging
import re
import threading

import pytest
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server

from plugin.demo.models import db
from plugin.extension import get_state
from plugin.models import Base, ProviderAccount
from plugin.sandbox.dns import DnsResponder
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from tests.conftest import free_port

API_USER = "secret_test_user"
API_KEY = "PLAINTEXT-api-key-7f3a9c1e5b"
APP_KEY = "PLAINTEXT-webhook-app-key-2d8e4f"
DOMAIN = "mail.secrets.example"
LOGGERS = ("", "werkzeug", "urllib3", "requests", "sqlalchemy.engine", "plugin")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture
def debug_logs():
    handler = Collect()
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def dns_server():
    with DnsResponder() as responder:
        yield responder


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def simulator(dns_server):
    sim = SendCloudSimulator(
        dns_nameserver=dns_server.nameserver, webhook_app_key=APP_KEY, deliver_delay=0.01
    )
    sim.add_account(API_USER, API_KEY)
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, port, simulator, dns_server):
    app_config.update(
        MARKETING_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        MARKETING_SENDCLOUD_API_BASE=simulator.url,
        MARKETING_DNS_NAMESERVERS=[dns_server.host],
        MARKETING_DNS_PORT=dns_server.port,
        MARKETING_DNS_TIMEOUT=1.0,
    )
    return app_config


@pytest.fixture
def served(app, port):
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


class Admin:
    """requests as a browser: login form, CSRF token from the page, every page kept."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.pages: list[str] = []
        self.csrf = ""

    def get(self, path: str) -> requests.Response:
        response = self.http.get(self.base + path, timeout=10)
        self.pages.append(response.text)
        match = re.search(r'name="csrf-token" content="([^"]+)"', response.text)
        if match:
            self.csrf = match.group(1)
        return response

    def post(self, path: str, data: dict | None = None, **kw) -> requests.Response:
        response = self.http.post(
            self.base + path,
            data={**(data or {}), "csrf_token": self.csrf},
            headers={"X-CSRFToken": self.csrf, **kw.pop("headers", {})},
            timeout=15,
            **kw,
        )
        self.pages.append(response.text)
        assert response.status_code < 400, response.text[:2000]
        return response

    def login(self, username: str) -> None:
        page = self.http.get(self.base + "/crm/login", timeout=10).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        self.http.post(
            self.base + "/crm/login",
            data={"username": username, "password": username, "csrf_token": token},
            timeout=10,
        )
        self.get("/marketing/")


def run_wizard(base: str, simulator, dns_server) -> Admin:
    admin = Admin(base)
    admin.login("admin")
    admin.get("/marketing/setup/domain")
    admin.post("/marketing/setup/domain", {"domain": DOMAIN, "confirm": "1"})
    admin.get("/marketing/setup/credentials")
    admin.post("/marketing/setup/credentials", {"api_user": API_USER, "api_key": "wrong-key"})
    admin.post("/marketing/setup/credentials", {"api_user": API_USER, "api_key": API_KEY})
    admin.get("/marketing/setup/credentials")  # the stored key must not come back
    admin.get("/marketing/setup/dns")
    with db.engine.connect() as connection:
        records = connection.scalar(sa.text("SELECT dns_records FROM marketing_sending_domains"))
    publish(dns_server, records)
    admin.post("/marketing/setup/dns/check", headers={"Accept": "application/json"})
    admin.post("/marketing/setup/dns/continue")
    admin.get("/marketing/setup/api-users")
    admin.post("/marketing/setup/api-users", {"app_key": APP_KEY})
    admin.get("/marketing/setup/api-users")
    admin.post(
        "/marketing/setup/senders",
        {
            "from_address": f"news@{DOMAIN}",
            "from_name": "News",
            "reply_to": "replies@example.com",
            "company_name": "Secrets Ltd.",
            "postal_address": "2 Quiet Street",
        },
    )
    mail = next(m for m in simulator.simulator.mails() if m.recipient == "replies@example.com")
    link = re.search(r'href="([^"]+/confirm-reply-to/[^"]+)"', mail.html).group(1)
    assert requests.post(link, timeout=10).status_code == 200
    admin.post("/marketing/setup/senders/continue")
    done = admin.get("/marketing/setup/done")
    assert 'data-stat="quota">1,000<' in done.text
    return admin


def publish(dns_server, records) -> None:
    import json

    from plugin.providers.sendcloud import DnsRecord

    if isinstance(records, str):
        records = json.loads(records)
    dns_server.publish([DnsRecord(**r) for r in records])


def dump_everything() -> str:
    """Every row of every table (the plugin's and the host's), all columns, as text."""
    chunks = []
    with db.engine.connect() as connection:
        for metadata in (Base.metadata, db.Model.metadata):
            for table in metadata.sorted_tables:
                for row in connection.execute(sa.select(table)):
                    chunks.append(f"{table.name}: " + " | ".join(str(v) for v in row))
    return "\n".join(chunks)


def test_no_plaintext_secret_in_database_logs_or_pages(
    served, session, workspace, users, simulator, dns_server, debug_logs
):
    admin = run_wizard(served, simulator, dns_server)

    session.expire_all()
    account = session.scalar(sa.select(ProviderAccount))
    box = get_state().secrets
    batch_key = box.decrypt(account.batch_api_key_encrypted)
    trigger_key = box.decrypt(account.trigger_api_key_encrypted)
    secrets = {
        "API_KEY": API_KEY,
        "batch key": batch_key,
        "trigger key": trigger_key,
        "webhook app key": APP_KEY,
    }
    assert box.decrypt(account.api_key_encrypted) == API_KEY
    assert box.decrypt(account.webhook_app_key_encrypted) == APP_KEY
    assert len(batch_key) >= 16
    assert len(trigger_key) >= 16

    dump = dump_everything()
    assert "marketing_provider_accounts" in dump
    assert account.api_key_encrypted in dump  # the dump really holds the account row
    logs = "\n".join(debug_logs.lines)
    assert "POST /marketing/setup/credentials" in logs  # werkzeug's request log was captured
    assert "marketing_provider_accounts" in logs  # and SQL statements with their parameters
    pages = "\n".join(admin.pages)
    for label, value in secrets.items():
        assert value not in dump, f"{label} in the database"
        assert value not in logs, f"{label} in the logs"
        assert value not in pages, f"{label} in a page"
