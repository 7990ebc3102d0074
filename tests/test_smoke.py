"""The extension mounts, refuses a second registration, and serves its pages and API."""

from __future__ import annotations

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from plugin import Marketing
from plugin.errors import ConfigurationError


def test_second_registration_is_refused(app):
    with pytest.raises(RuntimeError, match="already registered"):
        Marketing(app, db=app.extensions["sqlalchemy"])


def test_missing_db_is_a_clear_error():
    host = Flask("host")
    host.config["SECRET_KEY"] = "k"
    with pytest.raises(ConfigurationError, match="Flask-SQLAlchemy"):
        Marketing(host)


def test_settings_are_frozen(app):
    settings = app.extensions["marketing"].settings
    with pytest.raises(AttributeError):
        settings.batch_size = 5
    assert settings.api_prefix == "/marketing/api/v1"


def test_bad_batch_size_fails_at_start_up():
    host = Flask("host")
    host.config.update(SECRET_KEY="k", SQLALCHEMY_DATABASE_URI="sqlite://", MARKETING_BATCH_SIZE=500)
    db = SQLAlchemy(host)
    with pytest.raises(ConfigurationError, match="BATCH_SIZE"):
        Marketing(host, db=db)


def test_pages_need_login(app):
    response = app.test_client().get("/marketing/")
    assert response.status_code == 302
    assert "/crm/login" in response.headers["Location"]


def test_dashboard_counts(login, session, workspace):
    browser = login("marketer")
    page = browser.get("/marketing/").get_data(as_text=True)
    assert 'data-count="contacts">0<' in page


def test_openapi_document_lists_resources(app):
    spec = app.test_client().get("/marketing/api/v1/openapi.json").get_json()
    assert spec["info"]["title"]
    for path in ("/marketing/api/v1/contacts", "/marketing/api/v1/tags", "/marketing/api/v1/views"):
        assert path in spec["paths"]


def test_public_health(app):
    assert app.test_client().get("/m/health").get_json() == {"status": "ok"}


def test_pages_name_the_plugin_icon_and_it_is_served(login, workspace):
    """Browsers ask for /favicon.ico (a 404 in every log) unless the page names an icon."""
    client = login("admin")
    page = client.get("/marketing/").get_data(as_text=True)
    assert 'rel="icon" type="image/svg+xml"' in page
    href = page.split('rel="icon" type="image/svg+xml" href="')[1].split('"')[0]
    icon = client.get(href)
    assert icon.status_code == 200
    assert icon.mimetype == "image/svg+xml"
    assert b"<svg" in icon.data
