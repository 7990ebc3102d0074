"""Streamed CSV downloads that Excel opens correctly.

Why a BOM: Excel on Windows (the tool our Chinese users open exports with) reads a CSV without
one in the system's ANSI code page, turning every Chinese name into mojibake; with ``EF BB BF``
it reads UTF-8.  Why streamed: an export of a million recipients must not be built in memory.
Why the quote mark: a cell starting with ``=``, ``+``, ``-`` or ``@`` (an address or a name
typed by anyone) would run as a formula in a spreadsheet (CSV injection).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Rows written per yielded chunk: big enough for few writes, small enough to stream.
_ROWS_PER_CHUNK = 500


def safe_cell(value: Any) -> Any:
    """``value`` with a leading quote mark when a spreadsheet would take it for a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def stream_csv(rows: Iterable[Iterable[Any]]) -> Iterator[bytes]:
    """UTF-8 bytes of ``rows`` as CSV (``\\r\\n`` line ends), the BOM first."""
    yield codecs.BOM_UTF8
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    pending = 0
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
        pending += 1
        if pending >= _ROWS_PER_CHUNK:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")
