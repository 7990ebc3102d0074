"""The foundation's end-to-end path: a marketer logs in, imports a CSV, builds a view with the
click editor, and sees the right live count, then the same count on the saved view."""

from __future__ import annotations

import re

from .conftest import log_in


def _csv(tmp_path):
    lines = ["邮箱,姓名,公司,国家"]
    for i in range(14):
        lines.append(f"buyer{i}@qq.com,买家{i},QQ 贸易,China")
    for i in range(8):
        lines.append(f"anna{i}@example.de,Anna {i},Example GmbH,Germany")
    lines += ["not-an-address,坏行,,", "buyer1@qq.com,重复,,", ",空,,"]
    path = tmp_path / "contacts.csv"
    path.write_bytes("\n".join(lines).encode("gb18030"))
    return path


def test_import_then_view_count(page, users, workspace, tmp_path):
    log_in(page, "marketer")

    page.goto("/crm/import")
    page.set_input_files("#import-file", str(_csv(tmp_path)))
    page.click("#import-upload")
    page.wait_for_selector("#import-run")
    assert page.locator("select.map-select[data-column='0']").input_value() == "email"
    page.fill("#import-tag-new", "展会 Expo")
    page.click("#import-run")
    page.wait_for_selector("#report-imported")
    assert re.sub(r"\D", "", page.inner_text("#report-imported")) == "22"
    assert re.sub(r"\D", "", page.inner_text("#report-errors")) == "3"

    page.goto("/crm/views/new")
    page.fill("#view-name", "QQ 邮箱")
    page.click("#add-rule")
    rule = page.locator(".rule").first
    rule.locator("select.rule-field").select_option("email_domain")
    rule.locator("select.rule-op").select_option("in")
    rule.locator("input.rule-value").fill("qq.com, 163.com")
    page.wait_for_function("document.querySelector('#live-count').dataset.count === '14'")
    rule.locator("select.rule-op").select_option("ne")
    rule.locator("input.rule-value").fill("qq.com")
    page.wait_for_function("document.querySelector('#live-count').dataset.count === '8'")
    rule.locator("select.rule-op").select_option("in")
    rule.locator("input.rule-value").fill("qq.com, 163.com")
    page.wait_for_function("document.querySelector('#live-count').dataset.count === '14'")
    page.click("#save-view")
    page.wait_for_url("**/crm/views**")
    row = page.locator("tr", has_text="QQ 邮箱")
    assert "14" in row.inner_text()
