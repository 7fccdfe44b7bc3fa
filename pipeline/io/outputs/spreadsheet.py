"""CSV files a person opens in a spreadsheet: every text cell that a spreadsheet would run as a
formula is written as text.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)`` in a cancer type or a review comment
becomes a link, or worse). As OWASP's CSV-injection guidance says, such a cell gets a single
quote in front of it (``'=HYPERLINK(...)``), which every spreadsheet shows as text. Only text is
guarded: a number the pipeline writes (``-0.5`` in a numeric column) stays a number. A text cell
that already starts with a quote followed by one of those characters, or by another quote, gets
one more quote, so that :func:`unguard_cell` gives back every text exactly as it was given.

Every CSV the pipeline writes goes through :func:`write_csv_atomic` or :func:`write_frame_atomic`,
and every CSV of its own that it reads back (review sheets, the review store) through
:func:`unguard_cell`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io.outputs.publish import atomic_path

# OWASP, "CSV Injection": the characters a spreadsheet reads as the start of a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"


def guard_cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet does not run: a text starting like a formula gets a
    quote in front of it; anything else (numbers included) is returned as it is.

    >>> guard_cell('=HYPERLINK("http://x.example/")'), guard_cell("-0.5"), guard_cell(-0.5), guard_cell("LUAD")
    ('\\'=HYPERLINK("http://x.example/")', "'-0.5", -0.5, 'LUAD')
    """
    if isinstance(value, str) and (value.startswith(FORMULA_STARTS) or _starts_guarded(value)):
        return TEXT_MARK + value
    return value


def unguard_cell(text: str) -> str:
    """The text that :func:`guard_cell` was given (a cell read back from a file the pipeline wrote).

    >>> unguard_cell("'=1+1"), unguard_cell("''=1+1"), unguard_cell("'quoted'"), unguard_cell("-0.5")
    ('=1+1', "'=1+1", "'quoted'", '-0.5')
    """
    return text[1:] if _starts_guarded(text) else text


def _frame_cell(value: Any) -> Any:
    value = guard_cell(value)
    return value.replace("\r\n", "\n").replace("\r", "\n") if isinstance(value, str) else value


def _starts_guarded(text: str) -> bool:
    return len(text) > 1 and text[0] == TEXT_MARK and (text[1] in FORMULA_STARTS or text[1] == TEXT_MARK)


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A UTF-8 CSV of ``columns`` and ``rows``, each text cell guarded; it appears under its name
    only when complete."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([guard_cell(c) for c in columns])
        w.writerows([guard_cell(v) for v in row] for row in rows)


def write_frame_atomic(path: Path, frame: pd.DataFrame) -> None:
    """A table as CSV (pandas' own formatting, no index), each text cell guarded; it appears under
    its name only when complete. A carriage return inside a text cell is written as a line feed:
    pandas quotes a cell that holds a line feed, but not one that holds only a carriage return,
    which a spreadsheet would then read as the end of the row."""
    guarded = frame.copy()
    for name in guarded.columns:
        column = guarded[name]
        if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
            guarded[name] = column.map(_frame_cell, na_action="ignore")
    guarded.columns = [guard_cell(c) for c in guarded.columns]
    with atomic_path(path) as tmp:
        guarded.to_csv(tmp, index=False)
