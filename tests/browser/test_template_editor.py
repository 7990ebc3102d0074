"""A marketer writes a template with variables: the sandboxed preview follows every keystroke,
an unknown variable is flagged beside the field, "preview as" a contact personalizes it, scripts
in the template never run, and the saved template is what was typed."""

from __future__ import annotations

import re

from plugin.models import Contact, Template

from .conftest import log_in


def test_create_template_with_live_preview(page, users, workspace, session):
    session.add(
        Contact(
            workspace_id=workspace.id,
            email="lilei@example.cn",
            email_domain="example.cn",
            email_local="lilei",
            name="李雷",
            company="Acme 贸易",
            custom={},
        )
    )
    session.commit()
    log_in(page, "marketer")
    page.goto("/marketing/templates")
    page.click("#create-first-template")
    page.wait_for_url("**/marketing/templates/new")

    frame = page.frame_locator("#preview-frame")
    page.fill("#tpl-name", "春季促销")
    page.fill("#tpl-subject", "你好 {FULLNAME|朋友}")
    page.fill(
        "#tpl-html",
        "<style>p.lead{color:#c00}</style>"
        "<p class='lead'>Dear {{name|friend}} from {{company|your company}}</p>"
        "<script>document.body.innerHTML = 'HACKED'</script>",
    )
    frame.locator("p.lead").wait_for()
    page.wait_for_function("document.querySelector('#preview-subject').textContent === '你好 朋友'")
    assert frame.locator("p.lead").inner_text() == "Dear friend from your company"
    assert "color: #c00" in (frame.locator("p.lead").get_attribute("style") or "")  # CSS inlined
    assert "HACKED" not in frame.locator("body").inner_text()  # the sandbox runs no script
    assert "Unsubscribe" in frame.locator("body").inner_text()  # footer added for a missing link

    page.click("#tpl-html")
    page.keyboard.press("End")
    page.keyboard.type(" {{oops}}")
    page.wait_for_selector("#tpl-html-unknown:not([hidden])")
    assert "oops" in page.inner_text("#tpl-html-unknown")
    page.fill("#tpl-html", page.input_value("#tpl-html").replace(" {{oops}}", ""))
    page.wait_for_selector("#tpl-html-unknown", state="hidden")

    page.fill("#preview-contact-search", "lilei@")
    page.click("[data-contact-id]")
    page.wait_for_function("document.querySelector('#preview-subject').textContent === '你好 李雷'")
    frame.locator("p.lead", has_text="李雷").wait_for()
    assert frame.locator("p.lead").inner_text() == "Dear 李雷 from Acme 贸易"
    assert float(page.get_attribute("#size-info", "data-bytes") or 0) > 0
    assert page.is_hidden("#size-warning")

    page.click("#save-template")
    page.wait_for_url(re.compile(r"/marketing/templates/\d+$"))
    session.expire_all()
    template = session.query(Template).one()
    assert template.name == "春季促销"
    assert template.subject == "你好 {FULLNAME|朋友}"
    assert "{{company|your company}}" in template.html
    assert sorted(template.variables) == ["company", "name"]
    assert page.url.endswith(f"/marketing/templates/{template.id}")
    frame.locator("p.lead").wait_for()
    assert frame.locator("p.lead").inner_text() == "Dear friend from your company"
