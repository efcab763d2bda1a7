"""Operations as a CSV file a French spreadsheet opens as it is: pure formatting, no I/O.

- UTF-8 with a byte order mark (Excel reads UTF-8 only then), `;` between cells (the `,` is the French
  decimal separator), CRLF line ends, cells quoted only when they hold `;`, `"` or a line break.
- Dates as DD/MM/YYYY: what French spreadsheets take for a date (an ISO date stays text in Excel FR).
- Amounts with a decimal comma and no thousands separator (`-42,50`): a number for the spreadsheet.
- Text cells that begin with `=`, `+`, `-`, `@` (or a tab or a carriage return) would be run as a
  formula: they get a leading apostrophe (OWASP "CSV injection"). The amount column is a number the
  export wrote itself, never guarded.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote

from shared.contract.payloads import Operation

BOM = "\ufeff"
HEADER = (
    "Date",
    "Libellé",
    "Mémo",
    "Montant",
    "Devise",
    "Catégorie",
    "Tiers",
    "Statut",
    "Source",
    "Rapprochée",
)
STATUS = {"pending": "à venir", "booked": "comptabilisée"}
SOURCE = {"bank": "banque", "manual": "manuelle"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def guarded(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def french_amount(amount: str) -> str:
    """`"-42.50"` → `"-42,50"` (the amount is a decimal string the API wrote: digits, a sign, a point)."""
    return amount.replace(".", ",")


def french_date(date: dt.date) -> str:
    return date.strftime("%d/%m/%Y")


def row_of(op: Operation) -> list[str]:
    return [
        french_date(op.date),
        guarded(op.label),
        guarded(op.memo),
        french_amount(op.amount),
        guarded(op.currency),
        guarded(op.category or ""),
        guarded(op.payee.name if op.payee else ""),
        STATUS.get(op.status, op.status),
        SOURCE.get(op.source, op.source),
        "oui" if op.reconciled else "non",
    ]


def lines(rows: Iterable[Iterable[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerows(rows)
    return out.getvalue()


def head() -> bytes:
    """The start of the file: the byte order mark and the header row."""
    return (BOM + lines([HEADER])).encode()


def body(operations: Iterable[Operation]) -> bytes:
    return lines(row_of(op) for op in operations).encode()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def filename_of(account_name: str, today: dt.date) -> str:
    """`operations-<account name in ASCII letters, digits, `-`, `_`, `.`>-<date>.csv`."""
    ascii_name = unicodedata.normalize("NFKD", account_name).encode("ascii", "ignore").decode()
    slug = _UNSAFE.sub("-", ascii_name).strip("-.")[:60].strip("-.") or "compte"
    return f"operations-{slug}-{today.isoformat()}.csv"


def content_disposition(filename: str) -> str:
    """An attachment header with the name both plain (ASCII, safe characters only: see `filename_of`)
    and RFC 6266/5987-encoded."""
    plain = _UNSAFE.sub("-", filename) or "operations.csv"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
