"""Schema-driven fuzzing of the JSON API with schemathesis 4 (positive and negative cases).

The OpenAPI document is read once from an app without a database (the document does not depend
on data); each operation's test then sends its generated requests, with a bearer token, to the
test's own ``app`` fixture (SQLite or PostgreSQL), which holds a few contacts, a tag and a view
so that ids 1..3 hit real records.  Asserted for every response: never a 5xx; the body matches
the documented schema (status code, content type, response schema, headers, auth enforced);
4xx bodies are JSON with ``code`` (and ``errors`` on 422).

Not asserted: schemathesis' ``positive_data_acceptance``.  A schema-valid body can still break
rules the schema cannot express (an address email-validator refuses, a duplicate name, a rules
tree naming an unknown field), and those rightly answer 422 naming the field.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from plugin import contacts as service
from plugin.demo.app import create_app

SPEC_APP = create_app(
    {
        "TESTING": True,
        "SECRET_KEY": "spec-only",
        "MARKETING_SECRET_KEYS": [Fernet.generate_key().decode()],
        "SQLALCHEMY_DATABASE_URI": "sqlite://",
    }
)
schema = schemathesis.openapi.from_wsgi("/marketing/api/v1/openapi.json", SPEC_APP)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=25,
    allow_x00=True,  # NUL bytes must be refused by the schemas, not by PostgreSQL
    with_security_parameters=False,  # the test sends a real token instead
)

load_all_checks()
EXCLUDED = [CHECKS.get_one("positive_data_acceptance")]


@pytest.fixture
def bearer(app, session, workspace, users, api_token) -> str:
    service.create_tag(session, workspace.id, "Fuzz")
    for n in range(3):
        service.create_contact(session, workspace.id, {"email": f"fuzz{n}@example.com", "tags": ["Fuzz"]})
    service.create_view(
        session,
        workspace.id,
        name="Fuzz view",
        rules={"match": "all", "rules": [{"field": "email", "op": "contains", "value": "fuzz"}]},
    )
    session.commit()
    return api_token("admin")


def assert_error_body(response) -> None:
    """A 4xx from the API is JSON saying which code and, for 422, which fields."""
    status = response.status_code
    if not 400 <= status < 500 or response.request.method == "HEAD":
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), response.text[:300]
    body = json.loads(response.content)
    assert body["code"] == status, body
    if status == 422:
        assert isinstance(body.get("errors"), dict), body
        assert body["errors"], body


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_survives_fuzzing(case, app, bearer):
    headers = {"Authorization": f"Bearer {bearer}"}
    response = case.call(app=app, headers=headers)
    assert response.status_code < 500, response.text[:500]
    assert_error_body(response)
    case.validate_response(response, headers=headers, transport_kwargs={"app": app}, excluded_checks=EXCLUDED)


def test_the_document_declares_bearer_auth_and_errors(app):
    spec = app.test_client().get("/marketing/api/v1/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert {"bearer": []} in spec["security"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            for code in ("401", "403", "404", "default"):
                assert code in responses, (method, path, code)
    error = spec["components"]["schemas"]["Error"]["properties"]
    assert {"code", "status", "message", "errors"} <= set(error)
