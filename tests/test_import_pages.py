"""Import pages of the demo CRM: upload → preview and mapping → report, roles, isolation."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_importing import gbk_list, xlsx_bytes

from plugin.models import Contact, ContactTag, ImportJob, Tag

TOKEN_URL = re.compile(r"/crm/import/([0-9a-f]{32})")


def upload(browser, data: bytes, filename: str = "list.csv", encoding: str = "auto"):
    return browser.post(
        "/crm/import",
        data={"file": (io.BytesIO(data), filename), "encoding": encoding},
        content_type="multipart/form-data",
    )


def preview_url(response) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    location = response.headers["Location"]
    assert TOKEN_URL.search(location)
    return location.split("?")[0]


def selected(page: str, column: int) -> str:
    select_html = re.search(
        rf'<select name="map_{column}" class="map-select" data-column="{column}".*?</select>', page, re.S
    ).group(0)
    return re.search(r'<option value="([^"]*)" selected>', select_html).group(1)


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def test_sales_cannot_import(login, session, workspace):
    sales = login("sales")
    assert sales.get("/crm/import").status_code == 403
    assert upload(sales, b"email\na@example.com\n").status_code == 403
    assert sales.get("/crm/import/" + "a" * 32).status_code == 403
    assert sales.get("/crm/import/jobs/1").status_code == 403
    assert sales.get("/crm/import/jobs/1/errors.csv").status_code == 403
    assert count(session, Contact) == 0


def test_import_needs_login(app):
    response = app.test_client().get("/crm/import")
    assert response.status_code == 302
    assert "/crm/login" in response.headers["Location"]


def test_full_flow_with_a_gbk_file(app, login, session, workspace):
    browser = login("marketer")
    page = browser.get("/crm/import").get_data(as_text=True)
    for marker in (
        'id="import-file"',
        'id="import-encoding"',
        'id="import-upload"',
        "agreed to receive mail",
    ):
        assert marker in page
    assert "No imports yet" in page

    data, expected = gbk_list()
    url = preview_url(upload(browser, data, "展会名单.csv"))
    token = TOKEN_URL.search(url).group(1)
    stored = Path(app.instance_path) / "imports" / f"{token}.bin"
    assert stored.read_bytes() == data  # kept under a random name, never the user's file name

    page = browser.get(url).get_data(as_text=True)
    assert "GBK / GB18030" in page
    assert "张伟0000" in page
    assert "1,000" in page  # rows in the file
    assert (selected(page, 0), selected(page, 1), selected(page, 2)) == ("email", "name", "company")
    assert 'id="import-tag-new"' in page
    assert 'id="import-run"' in page

    response = browser.post(
        url,
        data={
            "encoding": "auto",
            "map_0": "email",
            "map_1": "name",
            "map_2": "ignore",
            "tag_new": "展会 2024",
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    job = session.scalar(select(ImportJob))
    assert response.headers["Location"].endswith(f"/crm/import/jobs/{job.id}")
    assert not stored.exists()

    report = browser.get(f"/crm/import/jobs/{job.id}").get_data(as_text=True)
    assert re.search(r'id="report-imported">950<', report)
    assert re.search(r'id="report-errors">50<', report)
    assert re.search(r'id="report-total">1000<', report)
    first_bad = min(expected)
    assert f"<td>{first_bad}</td>" in report
    tag = session.scalar(select(Tag).where(Tag.name == "展会 2024"))
    assert f"/crm/contacts?tag_id={tag.id}" in report
    assert count(session, ContactTag, ContactTag.tag_id == tag.id) == 950
    assert session.scalar(select(Contact.company).where(Contact.email == "user0000@example.com")) is None

    csv_response = browser.get(f"/crm/import/jobs/{job.id}/errors.csv")
    assert csv_response.status_code == 200
    assert csv_response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in csv_response.headers["Content-Disposition"]
    body = csv_response.get_data()
    assert body.startswith(b"\xef\xbb\xbf")
    lines = body.decode("utf-8-sig").splitlines()
    assert lines[0] == "line,email,reason"
    assert len(lines) == 51
    assert "duplicate of line" in body.decode("utf-8-sig")

    # The same file again adds nothing, and the upload page lists both imports.
    url = preview_url(upload(browser, data, "展会名单.csv"))
    response = browser.post(url, data={"map_0": "email", "map_1": "name", "map_2": "company"})
    again = session.scalars(select(ImportJob).order_by(ImportJob.id.desc())).first()
    assert (again.imported, again.duplicates) == (0, 950)
    assert count(session, Contact) == 950
    listing = browser.get("/crm/import").get_data(as_text=True)
    assert listing.count("展会名单.csv") == 2
    assert f"/crm/import/jobs/{again.id}" in listing


def test_preview_can_decode_again_with_another_encoding(login, session, workspace):
    browser = login("marketer")
    text = "邮箱,姓名\nwang@example.com,王小明\n"
    url = preview_url(upload(browser, text.encode("gbk"), "a.csv", encoding="latin-1"))
    garbled = browser.get(url + "?encoding=latin-1").get_data(as_text=True)
    assert "王小明" not in garbled
    assert "Latin-1" in garbled
    fixed = browser.get(url + "?encoding=gb18030").get_data(as_text=True)
    assert "王小明" in fixed
    assert selected(fixed, 0) == "email"

    broken = browser.get(url + "?encoding=utf-8")
    assert broken.status_code == 400
    assert "not valid UTF-8" in broken.get_data(as_text=True)
    assert 'id="import-encoding-error"' in broken.get_data(as_text=True)


def test_preview_errors_are_shown_beside_the_fields_and_nothing_is_written(login, session, workspace):
    browser = login("marketer")
    url = preview_url(upload(browser, b"email,name\na@example.com,A\n"))

    response = browser.post(url, data={"map_0": "ignore", "map_1": "name"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="import-mapping-error"' in page
    assert "map one column to Email" in page
    assert selected(page, 0) == "ignore"  # the user's choice is kept

    response = browser.post(url, data={"map_0": "email", "map_1": "email"})
    assert "both mapped to email" in response.get_data(as_text=True)

    response = browser.post(url, data={"map_0": "email", "map_1": "name", "tag_new": "x" * 101})
    assert response.status_code == 400
    assert 'id="import-tag-error"' in response.get_data(as_text=True)

    tag = Tag(workspace_id=workspace.id, name="Existing")
    session.add(tag)
    session.commit()
    response = browser.post(url, data={"map_0": "email", "tag_id": str(tag.id), "tag_new": "New"})
    assert "not both" in response.get_data(as_text=True)
    assert count(session, Contact) == 0
    assert count(session, ImportJob) == 0

    response = browser.post(url, data={"map_0": "email", "map_1": "custom:full_name", "tag_id": str(tag.id)})
    assert response.status_code == 302
    contact = session.scalar(select(Contact))
    assert contact.custom == {"full_name": "A"}
    assert count(session, ContactTag, ContactTag.tag_id == tag.id) == 1


@pytest.mark.parametrize(
    ("data", "filename", "message"),
    [
        (b"email\na@example.com\n", "list.pdf", "unsupported file type"),
        (b"", "list.csv", "the file is empty"),
        (b"PK\x03\x04 not really a workbook", "list.xlsx", "Excel workbook"),
        (b"email,name\n", "list.csv", "no data rows"),
    ],
)
def test_upload_refuses_unreadable_files(login, session, workspace, data, filename, message):
    response = upload(login("marketer"), data, filename)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="import-file-error"' in page
    assert message in page


def test_truncated_workbook_is_refused(login, session, workspace):
    data = xlsx_bytes([["email"], *[[f"u{i}@example.com"] for i in range(100)]])
    response = upload(login("admin"), data[:-200], "list.xlsx")
    assert response.status_code == 400
    assert "Excel workbook" in response.get_data(as_text=True)
    assert count(session, Contact) == 0


def test_xlsx_upload_and_import(login, session, workspace):
    browser = login("admin")
    data = xlsx_bytes([["Email", "Name", "手机"], ["x@example.com", "X", 13800138000], ["bad", "Y", None]])
    url = preview_url(upload(browser, data, "book.xlsx"))
    page = browser.get(url).get_data(as_text=True)
    assert "Excel workbook" in page
    assert "13800138000" in page
    response = browser.post(url, data={"map_0": "email", "map_1": "name", "map_2": "custom:col_3"})
    assert response.status_code == 302
    report = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert re.search(r'id="report-imported">1<', report)
    assert re.search(r'id="report-errors">1<', report)
    assert "<td>3</td>" in report
    assert session.scalar(select(Contact.custom)) == {"col_3": "13800138000"}


def test_uploads_and_reports_stay_in_their_workspace(login, session, workspace, other_workspace):
    marketer = login("marketer")
    url = preview_url(upload(marketer, b"email\nshared@example.com\n"))
    other = login("other")  # admin of org acme
    assert other.get(url).status_code == 404
    assert other.post(url, data={"map_0": "email"}).status_code == 404
    admin = login("admin")  # same org, but not the uploader
    assert admin.get(url).status_code == 404

    response = marketer.post(url, data={"map_0": "email"})
    job_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert other.get(f"/crm/import/jobs/{job_id}").status_code == 404
    assert other.get(f"/crm/import/jobs/{job_id}/errors.csv").status_code == 404
    assert "shared@example.com" not in other.get("/crm/import").get_data(as_text=True)

    # acme imports the same address: a new contact of its own, default's contact untouched.
    url = preview_url(upload(other, b"email,name\nshared@example.com,Acme\n"))
    response = other.post(url, data={"map_0": "email", "map_1": "name"})
    assert response.status_code == 302
    assert count(session, Contact, Contact.workspace_id == other_workspace.id) == 1
    assert session.scalar(select(Contact.name).where(Contact.workspace_id == workspace.id)) is None


def test_bad_tokens_are_not_found(login, workspace):
    browser = login("marketer")
    assert browser.get("/crm/import/../../etc/passwd").status_code == 404
    assert browser.get("/crm/import/" + "0" * 32).status_code == 404
    assert browser.get("/crm/import/not-a-token").status_code == 404
    assert browser.get("/crm/import/jobs/999").status_code == 404
