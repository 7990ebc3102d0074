"""Template service: save-time checks, CRUD, imports (GBK file, URL through the SSRF guard),
test sends through the SendCloud simulator (trigger API_USER) and an SMTP sink, and the SendCloud
review cycle (submit, pending, approve/reject, refresh, edit resets, mail/sendtemplate)."""

from __future__ import annotations

import datetime as dt
import functools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import campaign_kit as kit
import pytest
from campaign_kit import BATCH_KEY, BATCH_USER, TRIGGER_USER
from flask_babel import force_locale

from plugin import netguard
from plugin.campaigns import rendering
from plugin.campaigns import templates as service
from plugin.channels import provider_factory
from plugin.errors import InvalidInput, InvalidTransition, NotFound, ProviderError
from plugin.extension import get_state
from plugin.models import Campaign, Contact, CustomField, Template
from plugin.providers.base import BatchMessage, Recipient
from plugin.providers.sendcloud import SendCloudProvider
from plugin.sandbox.smtp_sink import SmtpSink

NOW = dt.datetime(2025, 5, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _english(app):
    with force_locale("en"):
        yield


@pytest.fixture
def sim():
    with kit.acme_simulator(seed=3) as simulator:
        yield simulator


@pytest.fixture
def app_config(app_config, sim):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=sim.url, MARKETING_PROVIDER_TIMEOUT=3.0)
    return app_config


@pytest.fixture
def settings(app):
    return get_state().settings


@pytest.fixture
def account(session, workspace):
    return kit.acme_account(session, workspace.id)


def create(session, workspace, settings, **kw) -> Template:
    fields = {"name": "Spring", "subject": "Hi {FULLNAME|there}", "html": "<p>Dear {{name|friend}}</p>"}
    fields.update(kw)
    template = service.create_template(session, workspace.id, settings=settings, **fields)
    session.commit()
    return template


# --------------------------------------------------------------------------- save and CRUD


def test_unknown_variables_are_rejected_when_saving(session, workspace, settings):
    with pytest.raises(service.TemplateInvalid) as caught:
        create(session, workspace, settings, subject="For {{compnay}}", html="<p>{VAR3} {{name}}</p>")
    errors = caught.value.errors
    assert set(errors) == {"subject", "html"}
    assert "compnay" in errors["subject"]
    assert "VAR3" in errors["html"]
    assert "{VAR3}" in errors["html"]  # quoted as written, not as {{VAR3}}
    assert "{{VAR3}}" not in errors["html"]
    session.rollback()
    assert service.count_templates(session, workspace.id) == 0
    session.add(CustomField(workspace_id=workspace.id, key="var3", label="VAR3"))
    session.commit()
    template = create(session, workspace, settings, subject="For {{company}}", html="<p>{VAR3} {{name}}</p>")
    assert template.variables == ["company", "name", "var3"]


def test_required_fields_and_size_limit(session, workspace, settings):
    with pytest.raises(service.TemplateInvalid) as caught:
        create(session, workspace, settings, name="  ", subject="", html="")
    assert set(caught.value.errors) == {"name", "subject", "html"}
    big = "<p>" + "x" * settings.template_max_bytes + "</p>"
    with pytest.raises(service.TemplateInvalid) as caught:
        create(session, workspace, settings, html=big)
    assert "limit" in caught.value.errors["html"]


def test_list_search_sort_and_paging(session, workspace, other_workspace, settings):
    for n in range(7):
        create(session, workspace, settings, name=f"Promo {n}", subject=f"Subject {n}")
    create(session, workspace, settings, name="Newsletter", subject="Monthly news")
    service.create_template(
        session, other_workspace.id, name="Promo other", subject="x", html="<p>x</p>", settings=settings
    )
    session.commit()
    page = service.list_templates(session, workspace.id, q="promo", sort="name", order="asc", per_page=3)
    assert page.total == 7
    assert page.pages == 3
    assert [r.template.name for r in page.items] == ["Promo 0", "Promo 1", "Promo 2"]
    last = service.list_templates(
        session, workspace.id, q="promo", sort="name", order="asc", page=3, per_page=3
    )
    assert [r.template.name for r in last.items] == ["Promo 6"]
    assert service.list_templates(session, workspace.id, q="monthly").items[0].template.name == "Newsletter"
    assert service.count_templates(session, workspace.id) == 8


def test_duplicate_and_delete(session, workspace, settings):
    original = create(session, workspace, settings)
    original.review_state, original.provider_template_name = "approved", "mkt_1_1"
    session.commit()
    copy = service.duplicate_template(session, workspace.id, original.id, user_id="7")
    again = service.duplicate_template(session, workspace.id, original.id, user_id="7")
    session.commit()
    assert (copy.name, again.name) == ("Spring (copy)", "Spring (copy) 2")
    assert (copy.html, copy.subject) == (original.html, original.subject)
    assert (copy.review_state, copy.provider_template_name) == ("not_submitted", None)
    service.delete_template(session, workspace.id, copy.id)
    session.commit()
    with pytest.raises(NotFound):
        service.get_template(session, workspace.id, copy.id)


def test_a_template_used_by_an_unfinished_campaign_is_not_deleted(session, workspace, settings):
    template = create(session, workspace, settings)
    session.add(
        Campaign(
            workspace_id=workspace.id, name="Spring sale", status="scheduled", template_ids=[template.id]
        )
    )
    session.add(
        Campaign(workspace_id=workspace.id, name="Old", status="completed", template_ids=[template.id])
    )
    session.commit()
    with pytest.raises(InvalidTransition, match="Spring sale"):
        service.delete_template(session, workspace.id, template.id)


def test_templates_of_another_workspace_are_not_found(session, workspace, other_workspace, settings):
    template = create(session, workspace, settings)
    with pytest.raises(NotFound):
        service.get_template(session, other_workspace.id, template.id)
    with pytest.raises(NotFound):
        service.duplicate_template(session, other_workspace.id, template.id)


# --------------------------------------------------------------------------- imports


def test_gbk_file_import(session, workspace, settings):
    html = "<html><head><title>春季促销</title></head><body><p>尊敬的{姓名}，您好！</p></body></html>"
    template = service.import_file(
        session, workspace.id, filename="促销.html", data=html.encode("gbk"), settings=settings, user_id="1"
    )
    session.commit()
    assert template.html == html
    assert template.subject == "春季促销"
    assert template.name == "促销"
    assert template.source == "file:促销.html"
    assert template.variables == ["name"]


def test_an_imported_page_declares_the_utf8_it_is_stored_and_sent_in(session, workspace, settings):
    """A GBK page says so in its ``<meta>``; decoded, it is UTF-8 text, and a mail client that
    believed the old declaration would garble the Chinese."""
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=gb2312">'
        '<meta charset="gbk"><title>春季促销</title></head><body><p>您好！charset=gbk 保留</p></body></html>'
    )
    template = service.import_file(
        session, workspace.id, filename="promo.html", data=html.encode("gbk"), settings=settings, user_id="1"
    )
    assert 'content="text/html; charset=utf-8"' in template.html
    assert '<meta charset="utf-8">' in template.html
    assert "gb2312" not in template.html
    assert "<p>您好！charset=gbk 保留</p>" in template.html  # text outside the declarations stays


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ('<meta content="text/html; charset=gbk" http-equiv="content-type">', "charset=utf-8"),
        ("<META CHARSET=GBK>", "CHARSET=utf-8>"),
        ('<meta data-charset="x" charset="gbk">', 'data-charset="x" charset="utf-8"'),
        ('<meta name="description" content="charset=gbk rules">', "charset=gbk rules"),
    ],
)
def test_only_charset_declarations_change(tag, expected):
    assert expected in service.declare_utf8(tag)


def test_text_file_import_and_file_rules(session, workspace, settings):
    template = service.import_file(
        session, workspace.id, filename="note.txt", data=b"Hello {{name}}\n\nBye", settings=settings
    )
    assert (template.html, template.text) == ("", "Hello {{name}}\n\nBye")
    with pytest.raises(InvalidInput, match=r"\.html, \.htm or \.txt") as caught:
        service.import_file(session, workspace.id, filename="x.docx", data=b"PK..", settings=settings)
    assert caught.value.field == "file"
    with pytest.raises(InvalidInput, match="larger than"):
        service.import_file(
            session,
            workspace.id,
            filename="x.htm",
            data=b"a" * (settings.template_max_bytes + 1),
            settings=settings,
        )
    with pytest.raises(InvalidInput, match="BOGUS"):
        service.import_file(
            session, workspace.id, filename="x.html", data=b"<p>{{BOGUS}}</p>", settings=settings
        )


@pytest.fixture
def web():
    pages: dict[str, tuple[str, bytes]] = {}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path not in pages:
                self.send_error(404)
                return
            content_type, body = pages[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1], pages, seen
    server.shutdown()
    server.server_close()


def test_url_import_through_the_guard(session, workspace, settings, web):
    port, pages, _seen = web
    html = (
        '<html><head><title>News</title></head><body><img src="/logo.png">'
        '<a href="a.html">A</a></body></html>'
    )
    pages["/mail/n.html"] = ("text/html; charset=gb2312", html.encode("gbk"))
    fetch = functools.partial(netguard.fetch, allow=["127.0.0.1/32"], resolver=lambda host, p: ["127.0.0.1"])
    template = service.import_url(
        session,
        workspace.id,
        url=f"http://news.example.com:{port}/mail/n.html",
        settings=settings,
        fetch=fetch,
    )
    assert template.subject == "News"
    assert f'src="http://news.example.com:{port}/logo.png"' in template.html
    assert f'href="http://news.example.com:{port}/mail/a.html"' in template.html
    assert template.source == f"url:http://news.example.com:{port}/mail/n.html"


def test_url_import_refuses_private_addresses_by_default(session, workspace, settings, web):
    port, pages, seen = web
    pages["/x.html"] = ("text/html", b"<p>internal</p>")
    with pytest.raises(netguard.UnsafeUrl) as caught:
        service.import_url(session, workspace.id, url=f"http://127.0.0.1:{port}/x.html", settings=settings)
    assert caught.value.field == "url"
    assert seen == []
    assert service.count_templates(session, workspace.id) == 0


# --------------------------------------------------------------------------- preview


def test_preview_as_a_contact(session, workspace, settings, account):
    contact = Contact(
        workspace_id=workspace.id,
        email="li@example.cn",
        email_domain="example.cn",
        email_local="li",
        name="李雷",
    )
    session.add(contact)
    session.commit()
    record = service.find_contact(session, get_state().directory, workspace.id, contact.id)
    draft = service.Draft("Hi {FULLNAME}", "<p>{{name|friend}} {{nope}}</p>" + "x" * (110 * 1024))
    result = service.preview(
        session,
        workspace.id,
        draft,
        contact=record,
        sender=service.default_sender(session, workspace.id),
        now=NOW,
    )
    assert result.subject == "Hi 李雷"
    assert "<p>李雷 </p>" in result.html  # an unknown name renders empty here; saving refuses it
    assert result.unknown == {"html": ["nope"]}
    assert result.large
    assert "Acme Ltd · 1 Road, Shanghai" in result.html
    assert [c.email for c in service.search_contacts(session, workspace.id, "LI@")] == ["li@example.cn"]


# --------------------------------------------------------------------------- test send


def factory(app):
    state = get_state()
    return provider_factory(app.extensions, secrets=state.secrets, settings=state.settings)


def test_test_send_through_the_sendcloud_trigger_user(app, session, workspace, settings, account, sim):
    template = create(session, workspace, settings)
    results = service.send_test(
        session,
        workspace.id,
        template.id,
        addresses="me@example.com; Boss@Example.com, me@example.com",
        settings=settings,
        provider_factory=factory(app),
        directory=get_state().directory,
    )
    assert [r.status for r in results] == ["accepted", "accepted"]
    mails = sorted(sim.mails(), key=lambda m: m.recipient)
    assert [m.recipient for m in mails] == ["boss@example.com", "me@example.com"]
    for mail in mails:
        assert mail.api_user == TRIGGER_USER
        assert mail.subject == "[Test] Hi there"
        assert "<p>Dear friend</p>" in mail.html
        assert "/m/u/" in mail.html  # the unsubscribe placeholder was filled
        assert "%" not in mail.subject
        assert mail.from_address == "news@mail.example.com"
    requests = sim.requests("mail/send")
    assert len(requests) == 1


def test_test_send_limits_and_errors(app, session, workspace, settings, account):
    template = create(session, workspace, settings)
    kwargs = {"settings": settings, "provider_factory": factory(app), "directory": get_state().directory}
    with pytest.raises(InvalidInput, match="at most 5") as caught:
        service.send_test(
            session, workspace.id, template.id, addresses=",".join(f"a{n}@x.com" for n in range(6)), **kwargs
        )
    assert caught.value.field == "addresses"
    with pytest.raises(InvalidInput, match="not a valid"):
        service.send_test(session, workspace.id, template.id, addresses="nobody", **kwargs)
    with pytest.raises(InvalidInput, match="at least one"):
        service.send_test(session, workspace.id, template.id, addresses=" , ", **kwargs)


def test_test_send_through_an_smtp_account(app, session, workspace, settings):
    sink = SmtpSink().start()
    try:
        smtp = kit.smtp_account(
            session,
            workspace.id,
            host=sink.host,
            port=sink.port,
            from_address="me@corp.example.com",
            rate=None,
        )
        template = create(session, workspace, settings, html="<p>Hi {{name|you}}</p>")
        results = service.send_test(
            session,
            workspace.id,
            template.id,
            addresses="qa@example.com",
            account_id=smtp.id,
            settings=settings,
            provider_factory=factory(app),
            directory=get_state().directory,
        )
        assert [r.status for r in results] == ["accepted"]
        [message] = sink.messages()
        assert message.envelope_to == ("qa@example.com",)
        assert message.subject == "[Test] Hi there"
        assert "<p>Hi you</p>" in (message.html or "")
        assert "Hi you" in (message.text or "")
    finally:
        sink.stop()


# --------------------------------------------------------------------------- review


@pytest.fixture
def clients(app):
    state = get_state()
    return service.client_factory(state.settings, state.secrets)


def test_review_cycle_with_the_simulator(session, workspace, settings, account, sim, clients):
    template = create(session, workspace, settings)
    service.submit_for_review(session, workspace.id, template.id, clients=clients)
    session.commit()
    name = f"mkt_{workspace.id}_{template.id}"
    assert (template.review_state, template.provider_template_name) == ("pending", name)
    remote = sim.template(BATCH_USER, name)
    assert remote["templateStat"] == 0
    assert remote["templateType"] == 1
    assert "%unsubscribe_url%" in remote["html"]
    assert "%name_h_f1%" in remote["html"]  # the compiled content, with our placeholders
    with pytest.raises(InvalidTransition):
        service.update_template(
            session,
            workspace.id,
            template.id,
            name="Spring",
            subject="New",
            html="<p>x</p>",
            text=None,
            settings=settings,
        )
    with pytest.raises(InvalidTransition):
        service.submit_for_review(session, workspace.id, template.id, clients=clients)

    sim.review_template(BATCH_USER, name, approve=False, note="链接过多")
    service.refresh_review(session, workspace.id, template.id, clients=clients)
    assert (template.review_state, template.review_note) == ("rejected", "链接过多")

    service.submit_for_review(session, workspace.id, template.id, clients=clients)
    assert template.review_state == "pending"
    sim.review_template(BATCH_USER, name, approve=True)
    assert service.refresh_reviews(session, workspace.id, clients=clients) == 1
    assert (template.review_state, template.review_note) == ("approved", None)

    service.update_template(
        session,
        workspace.id,
        template.id,
        name="Spring",
        subject="Hi again",
        html=template.html,
        text=None,
        settings=settings,
    )
    assert template.review_state == "not_submitted"
    assert "submit it again" in template.review_note


def test_withdraw_and_remote_deletion(session, workspace, settings, account, sim, clients):
    template = create(session, workspace, settings)
    service.submit_for_review(session, workspace.id, template.id, clients=clients)
    service.withdraw_review(session, workspace.id, template.id, clients=clients)
    assert template.review_state == "not_submitted"
    service.update_template(
        session,
        workspace.id,
        template.id,
        name="Renamed",
        subject="Hi",
        html="<p>x</p>",
        text=None,
        settings=settings,
    )
    service.submit_for_review(session, workspace.id, template.id, clients=clients)
    assert sim.template(BATCH_USER, template.provider_template_name)["name"] == "Renamed"
    clients(account).template_delete(template.provider_template_name)
    service.refresh_review(session, workspace.id, template.id, clients=clients)
    assert (template.review_state, template.provider_template_name) == ("not_submitted", None)


def test_review_needs_a_sendcloud_account(session, workspace, settings, clients):
    template = create(session, workspace, settings)
    with pytest.raises(InvalidInput, match="Bind a SendCloud account"):
        service.submit_for_review(session, workspace.id, template.id, clients=clients)


def test_approved_template_is_sent_through_sendtemplate(session, workspace, settings, account, sim, clients):
    template = create(session, workspace, settings)
    sim.template_auto_review = "approve"
    service.submit_for_review(session, workspace.id, template.id, clients=clients)
    assert template.review_state == "approved"
    content = service.compile_for(template, service.default_sender(session, workspace.id))
    values = rendering.recipient_values(
        content, None, email="a@x.com", unsubscribe_url="https://u/1", now=NOW
    )
    provider = SendCloudProvider(BATCH_USER, BATCH_KEY, base_url=sim.url)
    try:
        results = provider.send_batch(
            BatchMessage(
                from_address="news@mail.example.com",
                subject=content.subject,
                html=content.html,
                text=content.text,
                recipients=[Recipient("a@x.com", values)],
                idempotency_key="k1",
                template_name=template.provider_template_name,
            )
        )
    finally:
        provider.close()
    assert results[0].status == "accepted"
    [mail] = sim.mails()
    assert mail.template == template.provider_template_name
    assert "<p>Dear friend</p>" in mail.html
    assert "https://u/1" in mail.html
    assert mail.subject == "Hi there"
    [request] = sim.requests("mail/sendtemplate")
    assert request.param("html") is None


def test_sendtemplate_refuses_unapproved_templates(sim):
    sim.add_template(BATCH_USER, "draft_one", subject="s", html="<p>x</p>", template_stat=-2)
    provider = SendCloudProvider(BATCH_USER, BATCH_KEY, base_url=sim.url)
    try:
        with pytest.raises(ProviderError) as caught:
            provider.send_batch(
                BatchMessage(
                    from_address="news@mail.example.com",
                    subject="s",
                    html="",
                    recipients=[Recipient("a@x.com")],
                    idempotency_key="k2",
                    template_name="draft_one",
                )
            )
    finally:
        provider.close()
    assert caught.value.status_code == 40824


def test_simulator_template_rules_over_http(sim):
    from plugin.providers.sendcloud import SendCloudClient

    client = SendCloudClient(BATCH_USER, BATCH_KEY, base_url=sim.url)
    try:
        info = client.template_add("t_1", name="One", subject="s", html="<p>x</p>", submit=False)
        assert info.state == "not_submitted"
        with pytest.raises(ProviderError) as caught:
            client.template_add("t_1", name="Again", subject="s", html="<p>x</p>")
        assert caught.value.status_code == 40220
        with pytest.raises(ProviderError) as caught:
            client.template_submit("t_1", cancel=True)
        assert caught.value.status_code == 40229
        client.template_submit("t_1")
        assert client.template_get("t_1").state == "pending"
        for call, code in (
            (lambda: client.template_submit("t_1"), 40226),
            (lambda: client.template_update("t_1", name="x", subject="s", html="<p>y</p>"), 40223),
            (lambda: client.template_get("missing"), 40216),
            (lambda: client.template_add("bad name!", name="x", subject="s", html="<p>x</p>"), 40202),
        ):
            with pytest.raises(ProviderError) as caught:
                call()
            assert caught.value.status_code == code
        sim.review_template(BATCH_USER, "t_1", approve=True)
        with pytest.raises(ProviderError) as caught:
            client.template_submit("t_1")
        assert caught.value.status_code == 40227
        assert [t.invoke_name for t in client.template_list(template_type="batch")] == ["t_1"]
        assert client.template_list(template_type="trigger") == []
    finally:
        client.close()
