"""Demo CRM pages: contact import (upload → preview and mapping → report).

The uploaded bytes wait in the instance folder under a random name between the upload and the
import (never under the user's file name), with a small JSON note saying who uploaded them, so
one user can never open another's upload.  The views only parse form input and call
``plugin.importing``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import importing
from ..access import current_workspace, require
from ..contacts import list_tags
from ..errors import ImportFileError, InvalidInput, NotFound, PermissionDenied
from ..extension import get_state
from ..i18n import _
from ..models import Tag
from ..schemas.common import MAX_ID
from .models import User
from .views import bp

TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
#: Uploads not imported within a day are removed at the next upload.
UPLOAD_TTL_SECONDS = 24 * 3600
ERRORS_PER_PAGE = 100


def _encoding_choices() -> list[tuple[str, str]]:
    return [
        ("auto", _("Auto-detect")),
        ("utf-8", _("UTF-8")),
        ("utf-8-sig", _("UTF-8 with BOM")),
        ("gb18030", _("GBK / GB18030 (Simplified Chinese)")),
        ("big5", _("Big5 (Traditional Chinese)")),
        ("latin-1", _("Latin-1 (Western European)")),
    ]


def _encoding_label(name: str | None) -> str:
    labels = dict(_encoding_choices()) | {"cp1252": _("Windows-1252 (Western European)"), "utf-16": "UTF-16"}
    return labels.get(name or "", name or "")


def _target_choices(header: list[str], keys: dict[int, str], index: int) -> list[tuple[str, str]]:
    label = header[index] or _("column %(n)s", n=index + 1)
    return [
        ("ignore", _("Ignore")),
        ("email", _("Email")),
        ("name", _("Name")),
        ("company", _("Company")),
        ("country", _("Country")),
        ("owner_id", _("Owner")),
        (importing.CUSTOM_PREFIX + keys[index], _("Custom field: %(label)s", label=label)),
    ]


def _workspace_id() -> int:
    """Role check and workspace of every import page: admins and marketers only."""
    state = get_state()
    try:
        require("contacts.import", state.role_loader)
    except PermissionDenied:
        abort(403)
    return current_workspace(state.session, state.workspace_key).id


# -- upload storage ---------------------------------------------------------------------------


def _upload_dir() -> Path:
    folder = Path(current_app.instance_path) / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _store_upload(data: bytes, filename: str, workspace_id: int) -> str:
    folder = _upload_dir()
    _remove_stale(folder)
    token = secrets.token_hex(16)
    (folder / f"{token}.bin").write_bytes(data)
    meta = {"filename": filename, "workspace_id": workspace_id, "user_id": str(current_user.get_id())}
    (folder / f"{token}.json").write_text(json.dumps(meta))
    return token


def _remove_stale(folder: Path) -> None:
    limit = time.time() - UPLOAD_TTL_SECONDS
    for path in folder.glob("*.*"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
        except OSError:
            continue


def _load_upload(token: str, workspace_id: int) -> tuple[bytes, dict[str, Any]]:
    if not TOKEN_RE.match(token):
        abort(404)
    folder = _upload_dir()
    try:
        meta = json.loads((folder / f"{token}.json").read_text())
        data = (folder / f"{token}.bin").read_bytes()
    except (OSError, ValueError):
        abort(404)
    if meta.get("workspace_id") != workspace_id or meta.get("user_id") != str(current_user.get_id()):
        abort(404)
    return data, meta


def _discard_upload(token: str) -> None:
    for suffix in (".bin", ".json"):
        (_upload_dir() / f"{token}{suffix}").unlink(missing_ok=True)


# -- pages ------------------------------------------------------------------------------------


@bp.route("/import", methods=["GET", "POST"])
@login_required
def import_upload():
    workspace_id = _workspace_id()
    state = get_state()
    settings = state.settings
    errors: dict[str, str] = {}
    encoding = request.form.get("encoding", "auto")
    if request.method == "POST":
        if encoding not in dict(_encoding_choices()):
            errors["encoding"] = _("Choose one of the listed encodings.")
            encoding = "auto"
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            errors["file"] = _("Choose a .csv, .txt or .xlsx file.")
        elif not errors:
            data = upload.stream.read(settings.import_max_bytes + 1)
            try:
                importing.read_table(
                    data,
                    upload.filename,
                    encoding,
                    max_bytes=settings.import_max_bytes,
                    max_rows=settings.import_max_rows,
                )
            except ImportFileError as exc:
                errors["file"] = str(exc)
            else:
                token = _store_upload(data, upload.filename, workspace_id)
                return redirect(url_for("crm.import_preview", token=token, encoding=encoding))
    jobs = importing.recent_jobs(state.session, workspace_id)
    return render_template(
        "demo/import_upload.html",
        errors=errors,
        encoding=encoding,
        encodings=_encoding_choices(),
        jobs=jobs,
        totals={job.id: importing.errors_total(job) for job in jobs},
        users=_user_names({job.user_id for job in jobs}),
        max_bytes=settings.import_max_bytes,
        max_rows=settings.import_max_rows,
    ), (400 if errors else 200)


@bp.route("/import/<token>", methods=["GET", "POST"])
@login_required
def import_preview(token: str):
    workspace_id = _workspace_id()
    state = get_state()
    settings = state.settings
    data, meta = _load_upload(token, workspace_id)
    encoding = request.values.get("encoding", "auto")
    errors: dict[str, str] = {}
    if encoding not in dict(_encoding_choices()):
        errors["encoding"] = _("Choose one of the listed encodings.")
        encoding = "auto"
    table = None
    try:
        table = importing.read_table(
            data,
            meta["filename"],
            encoding,
            max_bytes=settings.import_max_bytes,
            max_rows=settings.import_max_rows,
        )
    except ImportFileError as exc:
        errors["encoding"] = str(exc)

    existing = importing.existing_custom_fields(state.session, workspace_id)
    tags = list_tags(state.session, workspace_id)
    form: dict[str, Any] = {"tag_id": "", "tag_new": "", "update_existing": False}
    mapping: dict[int, str] = {}
    if table is not None:
        mapping = importing.suggest_mapping(table.header, existing)
    if table is not None and request.method == "POST":
        mapping = {i: request.form.get(f"map_{i}", importing.IGNORE) for i in range(table.width)}
        form = {
            "tag_id": request.form.get("tag_id", ""),
            "tag_new": request.form.get("tag_new", "").strip(),
            "update_existing": request.form.get("update_existing") == "on",
        }
        tag_name = _chosen_tag(state.session, workspace_id, form, errors)
        if not errors:
            try:
                job = importing.run_import(
                    state.session,
                    workspace_id,
                    table,
                    mapping,
                    tag_name=tag_name,
                    user_id=str(current_user.get_id()),
                    filename=meta["filename"],
                    update_existing=form["update_existing"],
                )
                state.session.commit()
            except InvalidInput as exc:
                state.session.rollback()
                errors[exc.field or "mapping"] = str(exc)
            except Exception:
                state.session.rollback()
                raise
            else:
                _discard_upload(token)
                flash(_("Import finished: %(n)s contacts added.", n=job.imported), "success")
                return redirect(url_for("crm.import_report", job_id=job.id))

    keys = importing.custom_keys(table.header, existing) if table is not None else {}
    return render_template(
        "demo/import_preview.html",
        token=token,
        filename=meta["filename"],
        table=table,
        rows=table.rows[: importing.PREVIEW_ROWS] if table is not None else [],
        mapping=mapping,
        choices={i: _target_choices(table.header, keys, i) for i in range(table.width)} if table else {},
        encoding=encoding,
        encodings=_encoding_choices(),
        detected=_encoding_label(table.encoding) if table is not None else "",
        delimiter={",": _("comma"), "\t": _("tab"), ";": _("semicolon"), "|": _("vertical bar")}.get(
            table.delimiter or "", ""
        )
        if table is not None
        else "",
        tags=tags,
        form=form,
        errors=errors,
    ), (400 if errors else 200)


def _chosen_tag(session, workspace_id: int, form: dict[str, Any], errors: dict[str, str]) -> str | None:
    """The tag to apply: an existing one picked in the list, or a new name; never both."""
    if form["tag_id"] and form["tag_new"]:
        errors["tag"] = _("Pick an existing tag or type a new name, not both.")
        return None
    if form["tag_new"]:
        try:
            return importing.clean_tag_name(form["tag_new"])
        except InvalidInput as exc:
            errors["tag"] = str(exc)
            return None
    if form["tag_id"]:
        name = None
        if str(form["tag_id"]).isdigit():
            name = session.scalar(
                select(Tag.name).where(Tag.id == int(form["tag_id"]), Tag.workspace_id == workspace_id)
            )
        if name is None:
            errors["tag"] = _("That tag does not exist any more; pick another.")
        return name
    return None


@bp.get(f"/import/jobs/<int(min=1,max={MAX_ID}):job_id>")
@login_required
def import_report(job_id: int):
    workspace_id = _workspace_id()
    state = get_state()
    try:
        job = importing.get_job(state.session, workspace_id, job_id)
    except NotFound:
        abort(404)
    listed = job.errors or []
    pages = max(1, -(-len(listed) // ERRORS_PER_PAGE))
    page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
    tag = state.session.get(Tag, job.tag_id) if job.tag_id else None
    return render_template(
        "demo/import_report.html",
        job=job,
        errors_total=importing.errors_total(job),
        listed=listed[(page - 1) * ERRORS_PER_PAGE : page * ERRORS_PER_PAGE],
        listed_count=len(listed),
        page=page,
        pages=pages,
        tag=tag if tag is not None and tag.workspace_id == workspace_id else None,
        user_name=_user_names({job.user_id}).get(job.user_id, ""),
        encoding=_encoding_label(job.encoding) if job.encoding else "Excel (.xlsx)",
    )


@bp.get(f"/import/jobs/<int(min=1,max={MAX_ID}):job_id>/errors.csv")
@login_required
def import_errors_csv(job_id: int):
    workspace_id = _workspace_id()
    try:
        job = importing.get_job(get_state().session, workspace_id, job_id)
    except NotFound:
        abort(404)
    return Response(
        importing.errors_csv(job),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="import-{job.id}-errors.csv"',
            "Content-Type": "text/csv; charset=utf-8",
        },
    )


def _user_names(user_ids: set[str | None]) -> dict[str | None, str]:
    ids = [int(u) for u in user_ids if u and u.isdigit()]
    if not ids:
        return {}
    rows = get_state().session.execute(select(User.id, User.display_name).where(User.id.in_(ids)))
    return {str(i): name for i, name in rows}


__all__ = ["bp"]
