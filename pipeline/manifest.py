"""The manifest: which slides to segment.

CSV with a header. ``slide_path`` is required; ``slide_id`` (default: file stem) and
``cancer_type`` (default ``UNKNOWN``) are optional; ``mpp`` overrides the slide's own
microns-per-pixel. The paper's column names ``WSI-ID`` and ``CancerType`` are accepted.
Relative paths resolve against the manifest's folder. A malformed manifest is rejected
before any work starts, naming every bad row.
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pipeline.io.input_files import InputFileError, read_input_file

ALIASES = {
    "slide_path": "slide_path",
    "path": "slide_path",
    "slide_id": "slide_id",
    "wsi-id": "slide_id",
    "wsi_id": "slide_id",
    "cancer_type": "cancer_type",
    "cancertype": "cancer_type",
    "mpp": "mpp",
}
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A slide id names folders (``slides/<id>/``, ``slides/.<id>.<token>.partial/``); file systems
# allow 255 bytes per name, and the working names add up to 22 characters to the id.
MAX_ID_LENGTH = 200
# A row is a path, an id, a type and an mpp (100-250 bytes): 64 MiB holds some 300,000 slides,
# and is read whole without strain. A manifest is read no further than this.
MAX_MANIFEST_BYTES = 64 * 2**20


class ManifestError(ValueError):
    """The manifest cannot be used; the message lists every problem with its row number."""


@dataclass(frozen=True)
class SlideEntry:
    slide_id: str
    slide_path: Path
    cancer_type: str = "UNKNOWN"
    mpp: float | None = None


def read_manifest(path: str | Path) -> list[SlideEntry]:
    """Parse and validate a manifest; raises ManifestError naming each bad row (row 2 = first data row)."""
    path = Path(path)
    with io.StringIO(_manifest_text(path), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ManifestError(f"{path}: empty manifest (expected a header with slide_path)") from None
        columns = [ALIASES.get(h.strip().lower(), h.strip()) for h in header]
        repeated = _repeated_columns(header, columns)
        if repeated:
            raise ManifestError(f"{path}: {repeated}")
        if "slide_path" not in columns:
            if len(header) == 1 and "\t" in header[0]:
                raise ManifestError(
                    f"{path}: row 1: the header is separated by tabs; a manifest is comma-separated CSV: "
                    "save it as CSV (comma delimited)"
                )
            raise ManifestError(f"{path}: header {header} has no slide_path column")
        rows = list(reader)
    records: list[tuple[str, dict[str, str]]] = []
    problems: list[str] = []
    for number, values in enumerate(rows, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(columns):
            tabs = " (separated by tabs? a manifest is comma-separated)" if any("\t" in v for v in values) else ""
            problems.append(f"row {number}: {len(values)} fields, header has {len(columns)}{tabs}")
            continue
        records.append((f"row {number}", {c: v.strip() for c, v in zip(columns, values, strict=True)}))
    entries = _entries(records, path.parent, problems)
    if problems:
        problems.sort(key=lambda p: int(p.split(":")[0].removeprefix("row ")))  # in row order
        raise ManifestError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    if not entries:
        raise ManifestError(f"{path}: no slides listed")
    return entries


def entries_from_paths(paths: list[str | Path]) -> list[SlideEntry]:
    """Slides given as a list of paths (each: id = its file or folder name's stem, cancer type
    UNKNOWN), checked as manifest rows are; raises ManifestError naming each bad one (path 1 =
    the first)."""
    records = [(f"path {i}", {"slide_path": str(p).strip()}) for i, p in enumerate(paths, start=1)]
    problems: list[str] = []
    entries = _entries(records, Path.cwd(), problems)
    if problems:
        raise ManifestError(f"{len(problems)} bad slide path(s):\n  " + "\n  ".join(problems))
    if not entries:
        raise ManifestError("no slide paths given")
    return entries


def _entries(records: list[tuple[str, dict[str, str]]], base: Path, problems: list[str]) -> list[SlideEntry]:
    """The slides of manifest records (where, column → value), relative paths resolved against
    ``base``; each bad record appends its problem to ``problems`` and is left out."""
    entries: list[SlideEntry] = []
    seen: dict[str, str] = {}
    for where, rec in records:
        raw_path = rec.get("slide_path", "")
        if not raw_path:
            problems.append(f"{where}: empty slide_path")
            continue
        slide_path = Path(raw_path).expanduser()
        if not slide_path.is_absolute():
            slide_path = _absolute(base / slide_path)
        slide_id = rec.get("slide_id") or slide_path.stem
        if not SAFE_ID.match(slide_id):
            problems.append(
                f"{where}: slide_id {slide_id!r} must be letters, digits, '.', '_' or '-' (it names a folder)"
            )
            continue
        if len(slide_id) > MAX_ID_LENGTH:
            problems.append(
                f"{where}: slide_id {slide_id[:40]!r}… is {len(slide_id)} characters, at most "
                f"{MAX_ID_LENGTH} (it names a folder); give the row a shorter slide_id"
            )
            continue
        if slide_id in seen:
            problems.append(f"{where}: slide_id {slide_id!r} repeats {seen[slide_id]}")
            continue
        seen[slide_id] = where
        mpp: float | None = None
        if rec.get("mpp"):
            try:
                mpp = float(rec["mpp"])
                if not 0.01 < mpp < 100:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: mpp {rec['mpp']!r} is not a positive number of microns per pixel")
                continue
        cancer_type = unicodedata.normalize("NFC", rec.get("cancer_type") or "UNKNOWN")
        controls = bidi_controls(cancer_type)
        if controls:
            problems.append(
                f"{where}: cancer_type {cancer_type!r} holds {', '.join(controls)} (a bidirectional control "
                "character: the text shows in another order than it is written); remove it"
            )
            continue
        entries.append(SlideEntry(slide_id, slide_path, cancer_type, mpp))
    return entries


def bidi_controls(text: str) -> list[str]:
    """The bidirectional formatting characters in ``text`` (Unicode category Cf, bidi classes LRE,
    RLE, LRO, RLO, PDF, LRI, RLI, FSI, PDI and the marks LRM, RLM, ALM), as ``U+XXXX``: they make a
    text show in another order than it is, so two names that differ look alike.

    >>> bidi_controls("\u202eDAUL"), bidi_controls("LUAD")
    (['U+202E'], [])
    """
    return [
        f"U+{ord(c):04X}" for c in text if c in _BIDI_MARKS or unicodedata.bidirectional(c) in _BIDI_CONTROL_CLASSES
    ]


_BIDI_CONTROL_CLASSES = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})
_BIDI_MARKS = frozenset({"\u200e", "\u200f", "\u061c"})  # LRM, RLM, ALM


def _manifest_text(path: Path) -> str:
    """The manifest's text (UTF-8, with or without a byte-order mark); ManifestError naming the
    file, and the row of the first byte that is not UTF-8, otherwise."""
    try:
        data = read_input_file(path, MAX_MANIFEST_BYTES, "manifest")
    except InputFileError as exc:
        raise ManifestError(str(exc)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{path}: row {row} is not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x}); the manifest "
            "is read as UTF-8: save it as 'CSV UTF-8' (or convert it, e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _repeated_columns(header: list[str], columns: list[str]) -> str | None:
    """Which header cells name the same column (itself twice, or through an alias), in words;
    None when every column appears once. Which of two values to use would be a guess.

    >>> _repeated_columns(["slide_path", "WSI-ID", "slide_id"], ["slide_path", "slide_id", "slide_id"])
    "the header names slide_id more than once ('WSI-ID', 'slide_id'): keep one"
    """
    cells: dict[str, list[str]] = {}
    for cell, column in zip(header, columns, strict=True):
        cells.setdefault(column, []).append(cell.strip())
    repeats = [(column, names) for column, names in cells.items() if len(names) > 1]
    if not repeats:
        return None
    return "; ".join(
        f"the header names {column} more than once ({', '.join(repr(n) for n in names)}): keep one"
        for column, names in repeats
    )


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised; symlinks resolved where they can be (a symlink loop,
    an unreadable folder or a name the locale cannot encode is left for reading the slide to
    report, so that slide fails alone)."""
    try:
        return path.resolve()
    # RuntimeError: a symlink loop (Python < 3.13); UnicodeEncodeError: a name the locale's file
    # name encoding cannot hold (reading the slide says so)
    except (OSError, RuntimeError, UnicodeEncodeError):
        return Path(os.path.abspath(path))
