"""Contact import from CSV and XLSX files: read, preview, map columns, import with a report.

The flow has two halves on purpose.  :func:`read_table` turns the uploaded bytes into a table or
refuses the whole file (unknown encoding, damaged workbook, too large): nothing has been written at
that point, so a broken file can never leave half an import behind.  :func:`run_import` then
writes the good rows in bulk and reports every bad row with the line a person sees when opening
the file in an editor (the header is line 1), because "950 imported, line 17: missing @" is what
the people who prepared the list can act on.

No Flask here: the demo pages, the CLI and the tests call the same functions.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import io
import json
import re
import unicodedata
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from charset_normalizer import from_bytes
from sqlalchemy import (
    JSON,
    BigInteger,
    Text,
    any_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from .addresses import normalize_email, split_email
from .contacts import custom_fields, ensure_custom_field
from .directory import SqlDirectory
from .errors import ImportFileError, InvalidInput, NotFound
from .i18n import _
from .models import Contact, ContactTag, ImportJob, Tag, utcnow

#: Extensions accepted; ``.txt`` is how Excel names its tab-separated "Unicode text" export.
EXTENSIONS = (".csv", ".txt", ".xlsx")
#: Encodings a user may force, by the value used in forms and on the command line.
ENCODINGS: dict[str, str] = {
    "auto": "Auto-detect",
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with BOM",
    "gb18030": "GBK / GB18030",
    "big5": "Big5",
    "latin-1": "Latin-1",
}
_ALIASES = {
    "utf8": "utf-8",
    "utf_8": "utf-8",
    "utf-8-bom": "utf-8-sig",
    "utf_8_sig": "utf-8-sig",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "cp936": "gb18030",
    "big5hkscs": "big5",
    "latin1": "latin-1",
    "iso-8859-1": "latin-1",
    "iso8859-1": "latin-1",
    "cp1252": "cp1252",
    "windows-1252": "cp1252",
    "utf-16": "utf-16",
}
#: What ``charset_normalizer`` may choose from.  Left unrestricted it labels short GBK files as
#: some Cyrillic or Korean code page, which decodes without error into nonsense.
_DETECTABLE = ["utf_8", "gb18030", "big5", "cp1252"]
_DETECTED_NAMES = {"utf_8": "utf-8", "gb18030": "gb18030", "big5": "big5", "cp1252": "cp1252"}
_DELIMITERS = ",\t;|"
#: Contact columns a file column may fill, with their database length limits.
STANDARD_TARGETS: dict[str, int] = {
    "email": 320,
    "name": 200,
    "company": 200,
    "country": 100,
    "owner_id": 120,
}
IGNORE = "ignore"
CUSTOM_PREFIX = "custom:"
CUSTOM_KEY_RE = re.compile(r"^[a-z0-9_]{1,64}$")
#: Header spellings (compared after folding case, spaces, dashes and underscores).
HEADER_GUESSES: dict[str, tuple[str, ...]] = {
    "email": (
        "email",
        "e-mail",
        "mail",
        "emailaddress",
        "email address",
        "邮箱",
        "电子邮件",
        "电子邮箱",
        "邮件地址",
        "邮箱地址",
        "郵箱",
        "電子郵件",
    ),
    "name": ("name", "full name", "contact", "contact name", "姓名", "联系人", "名字", "聯絡人"),
    "company": ("company", "company name", "organization", "organisation", "公司", "公司名称", "單位"),
    "country": ("country", "country/region", "region", "国家", "国家地区", "国家/地区", "國家"),
    "owner_id": ("owner", "owner id", "sales rep", "负责人", "所有人", "負責人"),
}
PREVIEW_ROWS = 10
MAX_LISTED_ERRORS = 1000
_CHUNK = 1000
_PG_CHUNK = 5000
_ANALYZE_AFTER = 2000
_LOOKUP_CHUNK = 500


@dataclasses.dataclass(frozen=True)
class Table:
    """A parsed file: the header, the data rows and the file line on which each row starts.

    ``encoding`` is ``None`` for workbooks; ``delimiter`` likewise.  Blank rows are skipped but
    still counted in the line numbers, so ``lines`` always points where an editor would.
    """

    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    encoding: str | None
    delimiter: str | None
    kind: str

    @property
    def width(self) -> int:
        return len(self.header)


@dataclasses.dataclass(frozen=True)
class Preview:
    header: list[str]
    rows: list[list[str]]
    mapping: dict[int, str]
    total_rows: int
    encoding: str | None
    delimiter: str | None


# -- reading ----------------------------------------------------------------------------------


def canonical_encoding(name: str | None) -> str:
    """The form value for an encoding name (``GBK`` → ``gb18030``), or :class:`ImportFileError`."""
    key = (name or "auto").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ENCODINGS and key not in _ALIASES.values():
        raise ImportFileError(f"unknown encoding {name!r}; choose one of: {', '.join(ENCODINGS)}")
    return key


def read_table(
    data: bytes,
    filename: str,
    encoding: str = "auto",
    *,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> Table:
    """Parse an uploaded file or refuse it as a whole with a message saying what is wrong.

    ``max_bytes``/``max_rows`` come from the settings (``import_max_bytes``/``import_max_rows``);
    the service does not read configuration itself.
    """
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in EXTENSIONS:
        raise ImportFileError(
            f"{filename or 'the file'}: unsupported file type; upload a .csv, .txt or .xlsx file"
        )
    if not data:
        raise ImportFileError("the file is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImportFileError(
            f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes. Split it into smaller files"
        )
    if suffix == ".xlsx":
        table = _read_xlsx(data, max_rows)
    else:
        text, used = decode(data, encoding)
        table = _read_csv(text, used, max_rows)
    return table


def decode(data: bytes, encoding: str = "auto") -> tuple[str, str]:
    """Decode the whole file strictly; returns ``(text, encoding used)``.

    ``auto`` trusts a byte-order mark first, then strict UTF-8 (it almost never decodes anything
    else by accident), and only then asks ``charset_normalizer`` to choose among the encodings
    Chinese and Western spreadsheets actually export.
    """
    chosen = canonical_encoding(encoding)
    if chosen == "auto":
        return _decode_auto(data)
    codec = "utf-16" if chosen == "utf-16" else chosen
    return _strict(data, codec, chosen), chosen


def _decode_auto(data: bytes) -> tuple[str, str]:
    if data.startswith(codecs.BOM_UTF8):
        return _strict(data, "utf-8-sig", "utf-8-sig"), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _strict(data, "utf-16", "utf-16"), "utf-16"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(data, cp_isolation=_DETECTABLE).best()
    candidates = [_DETECTED_NAMES.get(best.encoding, best.encoding)] if best is not None else []
    candidates += [c for c in ("gb18030", "big5", "cp1252") if c not in candidates]
    # The detector looks at samples; the whole file must decode, so fall back in a fixed order.
    for name in candidates:
        try:
            return data.decode(name), name
        except (UnicodeDecodeError, LookupError):
            continue
    raise ImportFileError(
        "the encoding of the file could not be recognised; choose it (UTF-8, GBK, Big5 or Latin-1)"
    )


def _strict(data: bytes, codec: str, label: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start : exc.start + 4].hex(" ")
        raise ImportFileError(
            f"line {line}: the file is not valid {ENCODINGS.get(label, label)} (bytes {bad}); "
            "choose the encoding it was saved with"
        ) from exc


def _sniff_delimiter(text: str) -> str:
    sample = text[:65536]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rfind("\n")]
    first_line = sample.split("\n", 1)[0]
    try:
        found = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        found = ""
    if found and (found in first_line or not any(d in first_line for d in _DELIMITERS)):
        return found
    # The header line is the best witness: Sniffer can be fooled by commas inside names.
    counts = {d: first_line.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_csv(text: str, encoding: str, max_rows: int | None) -> Table:
    # NUL never means anything in a contact list and PostgreSQL refuses it in text columns.
    text = text.removeprefix("\ufeff").replace("\x00", "")
    if not text.strip():
        raise ImportFileError("the file is empty")
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    numbered: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            numbered.append((line, row))
            _check_rows(len(numbered) - 1, max_rows)
    except csv.Error as exc:
        raise ImportFileError(f"line {start}: {exc}") from exc
    return _table(numbered, encoding, delimiter, "csv")


def _check_rows(data_rows: int, max_rows: int | None) -> None:
    if max_rows is not None and data_rows > max_rows:
        raise ImportFileError(f"the file has more than {max_rows:,} rows; split it into smaller files")


def _table(
    numbered: list[tuple[int, list[str]]], encoding: str | None, delimiter: str | None, kind: str
) -> Table:
    if not numbered:
        raise ImportFileError("the file has no header row")
    header_line, header = numbered[0]
    header = [cell.strip() for cell in header]
    while header and not header[-1]:
        header.pop()
    if not header:
        raise ImportFileError(f"line {header_line}: the header row is empty")
    if any(_looks_like_address(cell) for cell in header):
        raise ImportFileError(
            f"line {header_line} holds addresses, not column names: add a header row "
            "(for example: email,name,company) so columns can be matched"
        )
    width = len(header)
    rows = [(row + [""] * (width - len(row)))[:width] for _, row in numbered[1:]]
    if not rows:
        raise ImportFileError("the file has a header row but no data rows")
    return Table(
        header=header,
        rows=rows,
        lines=[line for line, _ in numbered[1:]],
        encoding=encoding,
        delimiter=delimiter,
        kind=kind,
    )


def _looks_like_address(cell: str) -> bool:
    if "@" not in cell:
        return False
    try:
        normalize_email(cell)
    except InvalidInput:
        return False
    return True


def cell_text(value: Any) -> str:
    """A workbook cell as the text a person sees: ``13800138000`` not ``1.3800138e10``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value).replace("\x00", "")


def _read_xlsx(data: bytes, max_rows: int | None) -> Table:
    from openpyxl import load_workbook  # heavy import, only for workbooks

    numbered: list[tuple[int, list[str]]] = []
    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # zipfile, XML and openpyxl errors all mean the same to a user
        raise ImportFileError(f"the file is not a readable Excel workbook (.xlsx): {_reason(exc)}") from exc
    try:
        if not workbook.worksheets:
            raise ImportFileError("the workbook has no sheet")
        sheet = workbook.worksheets[0]
        for line, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            row = [cell_text(v) for v in values]
            while row and not row[-1].strip():
                row.pop()
            if not row:
                continue
            numbered.append((line, row))
            _check_rows(len(numbered) - 1, max_rows)
    except ImportFileError:
        raise
    except Exception as exc:  # a truncated member surfaces only while reading rows
        raise ImportFileError(f"the workbook is damaged: {_reason(exc)}") from exc
    finally:
        workbook.close()
    return _table(numbered, None, None, "xlsx")


def _reason(exc: Exception) -> str:
    if isinstance(exc, zipfile.BadZipFile):
        return "it is not a complete .xlsx (zip) file"
    return str(exc) or type(exc).__name__


# -- mapping ----------------------------------------------------------------------------------


def _fold(text: str) -> str:
    return re.sub(r"[\s_\-:：]+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


_GUESS_INDEX = {_fold(spelling): target for target, names in HEADER_GUESSES.items() for spelling in names}


def slugify(label: str, index: int) -> str:
    """A custom-field key from a header: ASCII ``[a-z0-9_]`` or ``col_<n>`` (n counts from 1).

    Non-ASCII headers are not transliterated (a guess would be wrong as often as right); their
    text stays as the field's label.
    """
    ascii_text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")[:64].strip("_")
    if not slug or len(slug) < len(label.strip()) / 2:
        return f"col_{index + 1}"
    return slug


def custom_keys(header: Sequence[str], existing: Mapping[str, str] | None = None) -> dict[int, str]:
    """The custom-field key each column would fill, distinct across columns.

    A column whose label matches an existing field (label or key) reuses that field's key, so a
    second import of the same kind of file fills the same field.  ``existing`` maps custom-field
    labels (and keys) to keys, see :func:`existing_custom_fields`.
    """
    labels = {_fold(k): v for k, v in (existing or {}).items()}
    keys: dict[int, str] = {}
    used: set[str] = set()
    for index, label in enumerate(header):
        key = labels.get(_fold(label)) if label.strip() else None
        key = key or slugify(label, index)
        base, n = key, 2
        while key in used:
            key = f"{base[:60]}_{n}"
            n += 1
        keys[index] = key
        used.add(key)
    return keys


def suggest_mapping(header: Sequence[str], existing: Mapping[str, str] | None = None) -> dict[int, str]:
    """Guess a target per column from its header, English or Chinese.

    Each standard field goes to the first column that looks like it.  Other named columns become
    custom fields (keeping data is the safer default; the preview lets the user switch a column
    to Ignore); columns without a name are ignored.
    """
    mapping: dict[int, str] = {}
    taken: set[str] = set()
    for index, label in enumerate(header):
        target = _GUESS_INDEX.get(_fold(label)) if label else None
        if target and target not in taken:
            mapping[index] = target
            taken.add(target)
    keys = custom_keys(header, existing)
    for index, label in enumerate(header):
        if index not in mapping:
            mapping[index] = CUSTOM_PREFIX + keys[index] if label.strip() else IGNORE
    return mapping


def existing_custom_fields(session: Session, workspace_id: int) -> dict[str, str]:
    """Label → key and key → key of the workspace's custom fields, for :func:`suggest_mapping`."""
    found: dict[str, str] = {}
    for field in custom_fields(session, workspace_id):
        found.setdefault(field.label, field.key)
        found.setdefault(field.key, field.key)
    return found


def preview(table: Table, existing: Mapping[str, str] | None = None, rows: int = PREVIEW_ROWS) -> Preview:
    return Preview(
        header=list(table.header),
        rows=[list(r) for r in table.rows[:rows]],
        mapping=suggest_mapping(table.header, existing),
        total_rows=len(table.rows),
        encoding=table.encoding,
        delimiter=table.delimiter,
    )


def validate_mapping(table: Table, mapping: Mapping[int, str]) -> dict[int, str]:
    """Check a column → target mapping; errors are :class:`InvalidInput` on field ``mapping``."""
    clean: dict[int, str] = {}
    seen: dict[str, int] = {}
    for raw_index, raw_target in mapping.items():
        index = int(raw_index)
        target = (raw_target or IGNORE).strip()
        if not 0 <= index < table.width:
            raise InvalidInput(f"column {index + 1} does not exist in the file", field="mapping")
        if target == IGNORE:
            continue
        if target.startswith(CUSTOM_PREFIX):
            key = target[len(CUSTOM_PREFIX) :]
            if not CUSTOM_KEY_RE.match(key):
                raise InvalidInput(
                    f"column {index + 1}: custom field key {key!r} must be 1-64 of a-z, 0-9 and _",
                    field="mapping",
                )
        elif target not in STANDARD_TARGETS:
            raise InvalidInput(
                _("column %(column)s: unknown target %(target)s", column=index + 1, target=repr(target)),
                field="mapping",
            )
        if target in seen:
            raise InvalidInput(
                _(
                    "columns %(first)s and %(second)s are both mapped to %(target)s",
                    first=seen[target] + 1,
                    second=index + 1,
                    target=target,
                ),
                field="mapping",
            )
        seen[target] = index
        clean[index] = target
    if "email" not in seen:
        raise InvalidInput(_("map one column to Email: every contact needs an address"), field="mapping")
    return clean


def mapping_from_names(table: Table, pairs: Mapping[str, str]) -> dict[int, str]:
    """``{"email": "邮箱", "custom:industry": "3"}`` (target → header text or column number)."""
    by_header = {h: i for i, h in reversed(list(enumerate(table.header)))}
    by_folded = {_fold(h): i for i, h in reversed(list(enumerate(table.header)))}
    mapping: dict[int, str] = {}
    for target, column in pairs.items():
        index = by_header.get(column, by_folded.get(_fold(column)))
        if index is None and column.isdigit() and 1 <= int(column) <= table.width:
            index = int(column) - 1
        if index is None:
            raise InvalidInput(
                _(
                    "no column named %(column)s; the file has: %(columns)s",
                    column=repr(column),
                    columns=", ".join(table.header),
                ),
                field="mapping",
            )
        mapping[index] = target
    return mapping


# -- importing --------------------------------------------------------------------------------


def clean_tag_name(name: str | None) -> str | None:
    """Collapse whitespace; ``None`` for no tag; :class:`InvalidInput` on field ``tag``."""
    clean = " ".join((name or "").split())
    if not clean:
        return None
    if len(clean) > 100:
        raise InvalidInput(_("the tag name is longer than 100 characters"), field="tag")
    return clean


@dataclasses.dataclass
class _Row:
    line: int
    email: str
    fields: dict[str, str]
    custom: dict[str, str]


#: An unquoted ASCII local part (RFC 5322 dot-atom): the shape of nearly every address in a list.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


class EmailNormalizer:
    """:func:`plugin.addresses.normalize_email` with the domain check done once per domain.

    Full validation costs tens of microseconds per address, nearly all of it in the domain's
    IDNA checks, while a list holds few distinct domains.  For a plain ASCII local part the
    result is exactly ``local.lower() + "@" + normalized domain``; anything unusual (quoted or
    non-ASCII local parts, a domain that fails) goes through ``normalize_email`` itself, so the
    answers and error messages stay the same.
    """

    def __init__(self) -> None:
        self._domains: dict[str, str | None] = {}

    def __call__(self, raw: str) -> str:
        candidate = (raw or "").strip().strip("<>").strip()
        local, at, domain = candidate.rpartition("@")
        if at and len(local) <= 64 and len(candidate) <= 254 and _DOT_ATOM.match(local):
            if domain not in self._domains:
                try:
                    self._domains[domain] = normalize_email("x@" + domain)[2:]
                except InvalidInput:
                    self._domains[domain] = None
            normalized = self._domains[domain]
            if normalized is not None:
                return f"{local.lower()}@{normalized}"
        return normalize_email(raw)


def _parse_rows(table: Table, mapping: dict[int, str], errors: list[dict[str, Any]]) -> Iterator[_Row]:
    normalize = EmailNormalizer()
    email_col = next(i for i, t in mapping.items() if t == "email")
    others = [(i, t) for i, t in mapping.items() if t != "email"]
    first_line: dict[str, int] = {}
    for line, row in zip(table.lines, table.rows, strict=True):
        raw = row[email_col].strip()
        try:
            email = normalize(raw)
        except InvalidInput as exc:
            errors.append({"line": line, "email": raw, "reason": str(exc)})
            continue
        if email in first_line:
            errors.append({"line": line, "email": raw, "reason": f"duplicate of line {first_line[email]}"})
            continue
        fields: dict[str, str] = {}
        custom: dict[str, str] = {}
        problem = None
        for index, target in others:
            value = row[index].strip()
            if not value:
                continue
            if target.startswith(CUSTOM_PREFIX):
                custom[target[len(CUSTOM_PREFIX) :]] = value
            elif len(value) > STANDARD_TARGETS[target]:
                problem = f"{target} is longer than {STANDARD_TARGETS[target]} characters"
                break
            else:
                fields[target] = value
        if problem:
            errors.append({"line": line, "email": raw, "reason": problem})
            continue
        first_line[email] = line
        yield _Row(line=line, email=email, fields=fields, custom=custom)


def _existing(session: Session, workspace_id: int, emails: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Contacts of the workspace with these addresses, looked up in chunks (never per row).

    PostgreSQL gets one array parameter per chunk (``email = ANY(:emails)``), the others an
    ``IN`` list of a size every SQLite accepts.
    """
    table = Contact.__table__
    postgres = session.get_bind().dialect.name == "postgresql"
    size = _PG_CHUNK if postgres else _LOOKUP_CHUNK
    columns = [table.c[c] for c in ("id", "email", "name", "company", "country", "owner_id", "custom")]
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(emails), size):
        part = list(emails[start : start + size])
        if postgres:
            condition = table.c.email == any_(bindparam("emails", part, type_=ARRAY(Text)))
        else:
            condition = table.c.email.in_(part)
        rows = session.execute(select(*columns).where(table.c.workspace_id == workspace_id, condition))
        for row in rows.mappings():
            found[row["email"]] = dict(row)
    return found


def _insert_new(session: Session, workspace_id: int, rows: Sequence[_Row]) -> list[int]:
    """Insert new contacts in chunks and return their ids (RETURNING, no second lookup)."""
    now = utcnow()
    values = []
    for row in rows:
        local, domain = split_email(row.email)
        values.append(
            {
                "email": row.email,
                "email_local": local,
                "email_domain": domain,
                "name": row.fields.get("name"),
                "company": row.fields.get("company"),
                "country": row.fields.get("country"),
                "owner_id": row.fields.get("owner_id"),
                "custom": row.custom,
            }
        )
    postgres = session.get_bind().dialect.name == "postgresql"
    insert_chunk = _insert_chunk_postgres if postgres else _insert_chunk_generic
    size = _PG_CHUNK if postgres else _CHUNK
    ids: list[int] = []
    for start in range(0, len(values), size):
        ids += insert_chunk(session, workspace_id, now, values[start : start + size])
    if postgres and len(ids) >= _ANALYZE_AFTER:
        # The planner's statistics still describe the table before this import; with them it
        # scans the whole workspace for each chunked lookup that follows (tagging, the next
        # import).  ANALYZE inside the transaction sees our rows and is cheap (a sample).
        session.execute(text(f"ANALYZE {Contact.__table__.name}"))
    return ids


def _insert_chunk_generic(
    session: Session, workspace_id: int, now: dt.datetime, values: list[dict[str, Any]]
) -> list[int]:
    table = Contact.__table__
    params = [{**v, "workspace_id": workspace_id, "created_at": now, "updated_at": now} for v in values]
    return list(session.execute(insert(table).returning(table.c.id), params).scalars())


def _insert_chunk_postgres(
    session: Session, workspace_id: int, now: dt.datetime, values: list[dict[str, Any]]
) -> list[int]:
    """One ``INSERT ... SELECT FROM unnest(arrays)`` per chunk.

    A multi-row VALUES statement carries eleven placeholders per row, and parsing them costs
    the driver more than the server needs to insert the rows; arrays carry one per column.
    """
    table = Contact.__table__
    text_columns = ("email", "email_local", "email_domain", "name", "company", "country", "owner_id")
    arrays = [bindparam(f"a_{c}", [v[c] for v in values], type_=ARRAY(Text)) for c in text_columns]
    customs = bindparam("a_custom", [json.dumps(v["custom"]) for v in values], type_=ARRAY(Text))
    source = func.unnest(*arrays, customs).table_valued(*text_columns, "custom").render_derived()
    columns = [*text_columns, "custom", "workspace_id", "created_at", "updated_at"]
    select_rows = select(
        *(source.c[c] for c in text_columns),
        cast(source.c.custom, JSON),
        literal(workspace_id, type_=table.c.workspace_id.type),
        literal(now, type_=table.c.created_at.type),
        literal(now, type_=table.c.updated_at.type),
    )
    statement = insert(table).from_select(columns, select_rows).returning(table.c.id)
    return list(session.execute(statement).scalars())


def _update_existing(session: Session, rows: Sequence[tuple[_Row, dict[str, Any]]]) -> int:
    """Fill in what the file has and keep what it leaves empty; returns rows really changed."""
    table = Contact.__table__
    changes = []
    for row, current in rows:
        merged_custom = {**(current["custom"] or {}), **row.custom}
        new = {key: row.fields.get(key) or current[key] for key in ("name", "company", "country", "owner_id")}
        if all(new[k] == current[k] for k in new) and merged_custom == (current["custom"] or {}):
            continue
        changes.append(
            {"b_id": current["id"], **{f"b_{k}": v for k, v in new.items()}, "b_custom": merged_custom}
        )
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            name=bindparam("b_name"),
            company=bindparam("b_company"),
            country=bindparam("b_country"),
            owner_id=bindparam("b_owner_id"),
            custom=bindparam("b_custom", type_=JSON),
            updated_at=utcnow(),
        )
    )
    for start in range(0, len(changes), _CHUNK):
        session.execute(statement, changes[start : start + _CHUNK])
    return len(changes)


def _tag_contacts(
    session: Session, workspace_id: int, name: str, new_ids: Sequence[int], matched_ids: Sequence[int]
) -> int:
    """Tag new and matched contacts; returns the tag's id (the tag is created if missing).

    ``SqlDirectory.add_tags`` creates the tag, as the bulk tag action does; the taggings are
    written here because every id is known to be in the workspace already (inserted or found
    with a workspace filter), which saves re-checking 100,000 ids in chunks.
    """
    tag_id = session.scalar(select(Tag.id).where(Tag.workspace_id == workspace_id, Tag.name == name))
    if tag_id is None:
        SqlDirectory().add_tags(session, workspace_id, [], [name])
        tag_id = session.scalar(select(Tag.id).where(Tag.workspace_id == workspace_id, Tag.name == name))
    tagged = set(session.scalars(select(ContactTag.contact_id).where(ContactTag.tag_id == tag_id)))
    ids = list(new_ids) + [i for i in matched_ids if i not in tagged]
    if session.get_bind().dialect.name == "postgresql":
        for start in range(0, len(ids), _PG_CHUNK):
            pairs = select(
                func.unnest(bindparam("ids", ids[start : start + _PG_CHUNK], type_=ARRAY(BigInteger))),
                literal(tag_id),
            )
            session.execute(insert(ContactTag).from_select(["contact_id", "tag_id"], pairs))
    else:
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            session.execute(insert(ContactTag), [{"contact_id": i, "tag_id": tag_id} for i in part])
    return tag_id


def run_import(
    session: Session,
    workspace_id: int,
    table: Table,
    mapping: Mapping[int, str],
    *,
    tag_name: str | None = None,
    user_id: str | None,
    filename: str,
    update_existing: bool = False,
) -> ImportJob:
    """Import the rows of ``table`` and return the :class:`ImportJob` with its report.

    Every row ends up in exactly one bucket: imported, updated, duplicate (already a contact; not
    inserted again, so the same file imported twice adds nothing) or error (bad address, repeated
    in the file, value too long).  Bad rows never stop the good ones.  Everything, the report
    included, is written in the caller's transaction: the caller commits, or rolls back on an
    exception, so an import is never half-written.
    """
    clean = validate_mapping(table, mapping)
    tag = clean_tag_name(tag_name)
    for index, target in clean.items():
        if target.startswith(CUSTOM_PREFIX):
            ensure_custom_field(
                session, workspace_id, target[len(CUSTOM_PREFIX) :], table.header[index][:100]
            )

    errors: list[dict[str, Any]] = []
    good = list(_parse_rows(table, clean, errors))
    existing = _existing(session, workspace_id, [row.email for row in good])
    new_rows = [row for row in good if row.email not in existing]
    matched = [(row, existing[row.email]) for row in good if row.email in existing]

    new_ids = _insert_new(session, workspace_id, new_rows)
    updated = _update_existing(session, matched) if update_existing else 0

    tag_id = None
    if tag:
        tag_id = _tag_contacts(session, workspace_id, tag, new_ids, [c["id"] for _, c in matched])

    job = ImportJob(
        workspace_id=workspace_id,
        user_id=user_id,
        filename=(filename or "import")[:255],
        encoding=table.encoding,
        status="done",
        total_rows=len(table.rows),
        imported=len(new_ids),
        updated=updated,
        duplicates=len(matched) - updated,
        errors=errors[:MAX_LISTED_ERRORS],
        tag_id=tag_id,
    )
    session.add(job)
    session.flush()
    return job


def errors_total(job: ImportJob) -> int:
    """Exact number of rows in error: every row is imported, updated, a duplicate or an error.

    Only the first :data:`MAX_LISTED_ERRORS` are kept in ``job.errors``.
    """
    return max(0, job.total_rows - job.imported - job.updated - job.duplicates)


def recent_jobs(session: Session, workspace_id: int, limit: int = 20) -> list[ImportJob]:
    return list(
        session.scalars(
            select(ImportJob)
            .where(ImportJob.workspace_id == workspace_id)
            .order_by(ImportJob.created_at.desc(), ImportJob.id.desc())
            .limit(limit)
        )
    )


def get_job(session: Session, workspace_id: int, job_id: int) -> ImportJob:
    job = session.scalar(
        select(ImportJob).where(ImportJob.id == job_id, ImportJob.workspace_id == workspace_id)
    )
    if job is None:
        raise NotFound(f"import {job_id}")
    return job


def errors_csv(job: ImportJob) -> bytes:
    """The listed errors as CSV, UTF-8 with BOM so Excel opens Chinese text correctly.

    Cells that a spreadsheet would run as formulas (``=``, ``+``, ``-``, ``@``) get a leading
    apostrophe: an address column is attacker-controlled text.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["line", "email", "reason"])
    for entry in job.errors or []:
        writer.writerow(
            [entry.get("line", ""), _safe_cell(entry.get("email")), _safe_cell(entry.get("reason"))]
        )
    return codecs.BOM_UTF8 + out.getvalue().encode("utf-8")


def _safe_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
