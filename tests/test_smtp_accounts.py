"""SMTP accounts: the admin pages, secrets at rest and on screen, DKIM upload, test connection
against a real aiosmtpd server with STARTTLS and AUTH, and a send through a stored account."""

from __future__ import annotations

import base64
import io
import logging
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from plugin import smtp_accounts as service
from plugin.channels import build_provider
from plugin.extension import get_state
from plugin.models import ProviderAccount
from plugin.providers.base import BatchMessage, Recipient
from plugin.schemas.smtp_accounts import SmtpAccountIn
from tests import smtp_tls
from tests.smtp_tls import PASSWORD, USER

#: Fixtures shared with the trigger-mail tests.
certs = smtp_tls.certs
tls_sink = smtp_tls.tls_sink

PAGES = ("/marketing/smtp", "/marketing/smtp/new")


def _rsa_pem(bits: int = 2048, password: bytes | None = None) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _form(port: int = 587, **overrides) -> dict:
    values = {
        "name": "Exmail sales",
        "host": "127.0.0.1",
        "port": str(port),
        "security": "starttls",
        "username": USER,
        "password": PASSWORD,
        "from_address": USER,
        "daily_limit": "300",
        "send_rate": "",
        "dkim_selector": "",
    }
    values.update(overrides)
    return values


def _account(session) -> ProviderAccount:
    return session.scalars(select(ProviderAccount).where(ProviderAccount.kind == "smtp")).one()


def _body(response) -> str:
    return response.get_data(as_text=True)


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize("role", ["sales", "marketer"])
def test_only_admins_reach_the_smtp_pages(login, session, workspace, role):
    admin = login("admin")
    assert admin.post("/marketing/smtp/new", data=_form()).status_code == 302
    account_id = _account(session).id
    browser = login(role)
    for url in (*PAGES, f"/marketing/smtp/{account_id}"):
        assert browser.get(url).status_code == 403, url
    for url in (
        f"/marketing/smtp/{account_id}/test",
        f"/marketing/smtp/{account_id}/delete",
        "/marketing/smtp/new",
    ):
        assert browser.post(url, data=_form()).status_code == 403, url
    assert _account(session).name == "Exmail sales"  # nothing changed


def test_form_post_without_csrf_is_refused(login, session, workspace):
    admin = login("admin")
    response = admin.client.post("/marketing/smtp/new", data=_form())
    assert response.status_code == 400
    assert session.scalars(select(ProviderAccount)).all() == []


def test_empty_list_says_what_to_do(login, workspace):
    page = _body(login("admin").get("/marketing/smtp"))
    assert 'id="smtp-empty"' in page
    assert "Add your first SMTP account" in page


def test_other_workspace_cannot_see_or_change_an_account(login, session, workspace):
    login("admin").post("/marketing/smtp/new", data=_form())
    account_id = _account(session).id
    other = login("other")
    assert other.get(f"/marketing/smtp/{account_id}").status_code == 404
    assert other.post(f"/marketing/smtp/{account_id}/delete").status_code == 404
    assert other.post(f"/marketing/smtp/{account_id}", data=_form(name="stolen")).status_code == 404
    assert "Exmail sales" not in _body(other.get("/marketing/smtp"))
    session.expire_all()
    assert _account(session).name == "Exmail sales"


# --------------------------------------------------------------------------- secrets


def test_password_is_encrypted_masked_and_never_rendered_or_logged(login, session, workspace, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "Auth-Code-9f3kX2"
    admin = login("admin")
    response = admin.post("/marketing/smtp/new", data=_form(password=secret))
    assert response.status_code == 302
    account = _account(session)
    assert account.smtp_password_encrypted
    assert secret not in account.smtp_password_encrypted
    assert get_state().secrets.decrypt(account.smtp_password_encrypted) == secret
    assert account.daily_limit == 300
    assert account.send_rate is None  # the deployment default applies

    for url in ("/marketing/smtp", f"/marketing/smtp/{account.id}"):
        page = admin.get(url)
        html = _body(page)
        assert secret not in html
        assert secret[:-4] not in html
        assert "••••" + secret[-4:] in html
        assert page.headers["Cache-Control"] == "no-store"
    # The password input is always empty.
    form_html = _body(admin.get(f"/marketing/smtp/{account.id}"))
    assert re.search(r'name="password" value=""', form_html)
    # An error page does not echo it either.
    error = admin.post("/marketing/smtp/new", data=_form(name="second", password="Other-Secret-77", port="0"))
    assert error.status_code == 422
    assert "Other-Secret-77" not in _body(error)
    assert secret not in caplog.text
    assert "Other-Secret-77" not in caplog.text
    assert secret not in repr(account)


def test_editing_without_a_password_keeps_the_stored_one(login, session, workspace):
    admin = login("admin")
    admin.post("/marketing/smtp/new", data=_form(password="First-Secret-1"))
    account = _account(session)
    response = admin.post(
        f"/marketing/smtp/{account.id}", data=_form(password="", name="Renamed", send_rate="2.5")
    )
    assert response.status_code == 302
    session.expire_all()
    account = _account(session)
    assert account.name == "Renamed"
    assert account.send_rate == 2.5
    assert get_state().secrets.decrypt(account.smtp_password_encrypted) == "First-Secret-1"
    admin.post(f"/marketing/smtp/{account.id}", data=_form(password="Second-Secret-2"))
    session.expire_all()
    assert get_state().secrets.decrypt(_account(session).smtp_password_encrypted) == "Second-Secret-2"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"port": "70000"}, "port"),
        ({"port": "abc"}, "port"),
        ({"host": "smtp://mail.example.com"}, "host"),
        ({"from_address": "not-an-address"}, "from_address"),
        ({"password": ""}, "password"),
        ({"security": "tls13"}, "security"),
        ({"security": "none"}, "security"),
        ({"daily_limit": "0"}, "daily_limit"),
        ({"send_rate": "-1"}, "send_rate"),
        ({"dkim_selector": "bad selector!"}, "dkim_selector"),
        ({"dkim_selector": "s1"}, "dkim_private_key"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_input_is_shown_beside_its_field(login, session, workspace, overrides, field):
    response = login("admin").post("/marketing/smtp/new", data=_form(**overrides))
    assert response.status_code == 422
    html = _body(response)
    assert f'data-error="{field}"' in html, html[html.find("error") : html.find("error") + 300]
    assert session.scalars(select(ProviderAccount)).all() == []


def test_duplicate_name_is_refused(login, session, workspace):
    admin = login("admin")
    admin.post("/marketing/smtp/new", data=_form())
    response = admin.post("/marketing/smtp/new", data=_form(name="EXMAIL SALES"))
    assert response.status_code == 422
    assert 'data-error="name"' in _body(response)


# --------------------------------------------------------------------------- DKIM


def test_dkim_key_upload_is_validated_encrypted_and_only_its_dns_record_shown(
    login, session, workspace, caplog
):
    caplog.set_level(logging.DEBUG)
    admin = login("admin")
    pem = _rsa_pem()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    data = _form(dkim_selector="mkt2024")
    data["dkim_key_file"] = (io.BytesIO(pem), "dkim.pem")
    response = admin.post("/marketing/smtp/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 302, _body(response)[:2000]
    account = _account(session)
    assert account.dkim_selector == "mkt2024"
    assert body[:40] not in account.dkim_private_key_encrypted
    assert get_state().secrets.decrypt(account.dkim_private_key_encrypted).strip() == pem.decode().strip()

    page = _body(admin.get(f"/marketing/smtp/{account.id}"))
    assert body[:40] not in page
    assert body[-40:] not in page
    assert "mkt2024._domainkey.example.com" in page
    public = serialization.load_pem_private_key(pem, None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}" in page
    assert body[:40] not in caplog.text

    # Removing DKIM erases the key.
    admin.post(
        f"/marketing/smtp/{account.id}", data=_form(password="", remove_dkim="1", dkim_selector="mkt2024")
    )
    session.expire_all()
    account = _account(session)
    assert account.dkim_selector is None
    assert account.dkim_private_key_encrypted is None


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
        (_rsa_pem(password=b"pass-phrase"), "passphrase"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "RSA key",
        ),
    ],
    ids=["garbage", "encrypted", "ec"],
)
def test_unusable_dkim_keys_are_refused_with_a_reason(login, session, workspace, key, message):
    data = _form(dkim_selector="s1")
    data["dkim_key_file"] = (io.BytesIO(key), "key.pem")
    response = login("admin").post("/marketing/smtp/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 422
    html = _body(response)
    assert 'data-error="dkim_private_key"' in html
    assert message in html
    assert session.scalars(select(ProviderAccount)).all() == []


# --------------------------------------------------------------------------- test connection + sending


def _create(admin, session, port: int, **overrides) -> ProviderAccount:
    response = admin.post("/marketing/smtp/new", data=_form(port=port, **overrides))
    assert response.status_code == 302, _body(response)[:1000]
    return _account(session)


def test_test_connection_passes_against_starttls_with_auth(login, session, workspace, tls_sink):
    sink = tls_sink()
    admin = login("admin")
    account = _create(admin, session, sink.port)
    response = admin.post(f"/marketing/smtp/{account.id}/test")
    assert response.status_code == 302
    page = _body(admin.get(response.headers["Location"]))
    assert "Connection test passed" in page
    assert "logged in" in page
    assert len(sink) == 0  # a test sends nothing


def test_test_connection_reports_a_wrong_password_readably(login, session, workspace, tls_sink, caplog):
    caplog.set_level(logging.DEBUG)
    sink = tls_sink()
    admin = login("admin")
    account = _create(admin, session, sink.port, password="Wrong-Password-1")
    response = admin.post(f"/marketing/smtp/{account.id}/test", follow_redirects=True)
    page = _body(response)
    assert "Connection test failed" in page
    assert "refused the user name or password" in page
    assert "Wrong-Password-1" not in page
    assert "Wrong-Password-1" not in caplog.text


def test_save_and_test_in_one_click_reports_a_refused_port(login, session, workspace):
    from tests.conftest import free_port

    admin = login("admin")
    data = _form(port=free_port(), then="test")
    response = admin.post("/marketing/smtp/new", data=data, follow_redirects=True)
    page = _body(response)
    assert "saved" in page
    assert "Connection test failed" in page
    assert "refused the connection" in page


def test_a_stored_account_sends_with_its_rate_and_dkim_key(login, session, workspace, tls_sink):
    sink = tls_sink()
    admin = login("admin")
    pem = _rsa_pem()
    data = _form(port=sink.port, dkim_selector="s1", send_rate="20")
    data["dkim_key_file"] = (io.BytesIO(pem), "dkim.pem")
    assert admin.post("/marketing/smtp/new", data=data, content_type="multipart/form-data").status_code == 302
    account = _account(session)
    state = get_state()
    provider = build_provider(account, "batch", secrets=state.secrets, settings=state.settings)
    try:
        assert provider.settings.rate_per_second == 20
        results = provider.send_batch(
            BatchMessage(
                from_address=USER,
                subject="Hello %name%",
                html="<p>Hi %name%</p>",
                recipients=[Recipient("a@example.org", {"name": "Ann"})],
                idempotency_key="k",
            )
        )
    finally:
        provider.close()
    assert [r.status for r in results] == ["accepted"]
    [message] = sink.messages()
    assert message.subject == "Hello Ann"
    signature = message.header("DKIM-Signature")
    assert signature
    assert "s=s1" in signature
    assert "d=example.com" in signature


def test_delete_asks_first_and_erases_the_account(login, session, workspace):
    admin = login("admin")
    account = _create(admin, session, 587)
    page = _body(admin.get(f"/marketing/smtp/{account.id}"))
    assert "data-confirm=" in page
    response = admin.post(f"/marketing/smtp/{account.id}/delete")
    assert response.status_code == 302
    assert session.scalars(select(ProviderAccount)).all() == []
    assert admin.get(f"/marketing/smtp/{account.id}").status_code == 404


def test_an_account_used_by_a_running_campaign_cannot_be_deleted(login, session, workspace):
    from plugin.models import Campaign

    admin = login("admin")
    account = _create(admin, session, 587)
    session.add(Campaign(workspace_id=workspace.id, name="Spring", status="running", account_id=account.id))
    session.commit()
    response = admin.post(f"/marketing/smtp/{account.id}/delete", follow_redirects=True)
    assert "campaign(s) that are scheduled, running or paused" in _body(response)
    assert session.scalars(select(ProviderAccount)).all() != []


def test_schema_reads_empty_optional_inputs_as_not_given():
    data = SmtpAccountIn().load(
        _form(password="", username="", send_rate="", dkim_selector="", csrf_token="x")
    )
    assert "password" not in data or data["password"] is None
    assert data["send_rate"] is None
    assert data["daily_limit"] == 300


def test_service_masks_short_secrets_entirely():
    assert service.mask_last4("abcd1234") == "••••"
    assert service.mask_last4("abcdefgh1234") == "••••1234"
    assert service.mask_last4(None) == ""
