"""Review ingestion: patch reviews and whole-slide verdicts, validated, then merged into a store.

Two kinds of CSV come back from pathologists, told apart by their header:

* a patch review sheet (the ``review_sheet.csv`` the QC writes): ``WSI-ID, PatchIndex, X, Y,
  ..., Adequate, Comment`` - ``Adequate`` filled with yes/no;
* WSI verdicts: ``WSI-ID, SegmentationUnacceptableOrNot, VisualAssessmentComment``.

A file is taken whole or not at all: every malformed row is reported, naming the file and its
line, and nothing is stored, so a typo never half-applies a sheet. Accepted reviews are merged
into ``qc/reviews/*.csv``: a later answer for the same patch (or slide) replaces the earlier one,
and nothing else in the store is ever dropped - a rebuild, a resampled slide or a slide that
disappears from a partial cohort leaves its recorded reviews in place.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.io.input_files import read_input_file
from pipeline.io.outputs.spreadsheet import unguard_cell, write_csv_atomic
from pipeline.qc._rules import VERDICT_ACCEPTABLE, VERDICT_UNACCEPTABLE, WSI_COMMENT, WSI_ID, WSI_UNACCEPTABLE

PATCH_INDEX = "PatchIndex"
ADEQUATE = "Adequate"
COMMENT = "Comment"
SOURCE = "Source"
REVIEW_SHEET_COLUMNS = (WSI_ID, PATCH_INDEX, "X", "Y", "W", "H", "Image", ADEQUATE, COMMENT)
PATCH_STORE_COLUMNS = (WSI_ID, PATCH_INDEX, "X", "Y", ADEQUATE, COMMENT, SOURCE)
VERDICT_STORE_COLUMNS = (WSI_ID, WSI_UNACCEPTABLE, WSI_COMMENT, SOURCE)
PATCH_STORE = "patch_reviews.csv"
VERDICT_STORE = "wsi_verdicts.csv"

YES_WORDS = frozenset({"yes", "y", "true", "1", "adequate", "acceptable", "ok"})
NO_WORDS = frozenset({"no", "n", "false", "0", "inadequate", "unacceptable", "bad"})
# In SegmentationUnacceptableOrNot, "yes" means *unacceptable*.
UNACCEPTABLE_WORDS = frozenset({"yes", "y", "true", "1", "unacceptable"})
ACCEPTABLE_WORDS = frozenset({"no", "n", "false", "0", "acceptable"})

PatchKey = tuple[str, int, int, int]  # (WSI-ID, PatchIndex, X, Y)
# A review sheet has 15 rows of ~150 bytes per slide (twice that saved as UTF-16): 64 MiB holds
# the patches of some 15,000 slides. A review file is read no further than this.
MAX_REVIEW_BYTES = 64 * 2**20


class ReviewError(ValueError):
    """Malformed review rows; ``problems`` names each (file, line, what is wrong)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("rejected review rows (nothing was recorded):\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class PatchReview:
    wsi_id: str
    index: int
    x: int
    y: int
    adequate: str  # "yes" | "no"
    comment: str
    source: str

    @property
    def key(self) -> PatchKey:
        return (self.wsi_id, self.index, self.x, self.y)


@dataclass(frozen=True)
class WsiVerdict:
    wsi_id: str
    verdict: str  # VERDICT_UNACCEPTABLE | VERDICT_ACCEPTABLE
    comment: str
    source: str


def review_text(path: Path) -> str:
    r"""A review file's text, as spreadsheets save it: UTF-8 (with or without a byte-order mark) or
    UTF-16 (Excel's "Unicode text"; with a byte-order mark, or without one where every other byte
    of the ASCII header is zero). Any other encoding is refused with ValueError naming the file and
    where its first undecodable byte is: guessing a legacy code page would garble the comments.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = Path(d) / "sheet.csv"
    ...     _ = f.write_bytes("WSI-ID\tAdequate\r\n".encode("utf-16"))
    ...     review_text(f)
    'WSI-ID\tAdequate\r\n'
    """
    data = read_input_file(path, MAX_REVIEW_BYTES, "review file")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif len(data) >= 4 and data[1:4:2] == b"\0\0" and data[0:4:2].isascii() and 0 not in data[0:4:2]:
        encoding = "utf-16-le"
    elif len(data) >= 4 and data[0:4:2] == b"\0\0" and data[1:4:2].isascii() and 0 not in data[1:4:2]:
        encoding = "utf-16-be"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1 if encoding == "utf-8-sig" else None
        where = f"line {line}, byte {exc.start}" if line else f"byte {exc.start}"
        raise ValueError(
            f"{path}: not {'UTF-16' if encoding != 'utf-8-sig' else 'UTF-8 or UTF-16'} text ({where}: "
            f"{exc.reason}); save it as 'CSV UTF-8' (or Unicode text) and give it again"
        ) from None


def sheet_delimiter(text: str) -> str:
    r"""The separator of a review file: a comma, or the tab of Excel's "Unicode text", or the
    semicolon of a CSV saved where the comma is the decimal mark; the one that splits the header
    into a WSI-ID column (a comma when none does).

    >>> sheet_delimiter("WSI-ID;PatchIndex;Adequate\n"), sheet_delimiter("WSI-ID,X\n")
    (';', ',')
    """
    first = text.split("\n", 1)[0]
    for delimiter in (",", "\t", ";"):
        header = next(csv.reader([first], delimiter=delimiter), [])
        if WSI_ID in (h.strip() for h in header):
            return delimiter
    return ","


def _int(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _check_patch_row(
    row: dict[str, str],
    where: str,
    line: int,
    known_slides: set[str],
    patches: Mapping[str, Mapping[int, tuple[int, int]]],
    seen: dict[tuple[str, int] | str, tuple[str, int]],
    problems: list[str],
) -> tuple[str, int, int, int, str, str] | None:
    """A valid reviewed patch row as (wsi, index, x, y, yes|no, comment); None otherwise."""
    wsi = row.get(WSI_ID, "")
    answer, comment = row.get(ADEQUATE, "").lower(), row.get(COMMENT, "")
    if not answer:
        if comment:
            problems.append(f"{where} ({wsi}): a comment but no {ADEQUATE} yes/no")
        return None
    if answer not in YES_WORDS | NO_WORDS:
        problems.append(f"{where} ({wsi}): {ADEQUATE} {row[ADEQUATE]!r} is not yes/no")
        return None
    if wsi not in known_slides:
        problems.append(f"{where}: unknown {WSI_ID} {wsi!r}")
        return None
    index = _int(row.get(PATCH_INDEX, ""))
    sampled = patches.get(wsi, {})
    if index is None or index not in sampled:
        problems.append(f"{where} ({wsi}): no sampled patch {PATCH_INDEX} {row.get(PATCH_INDEX)!r}")
        return None
    x, y = sampled[index]
    for axis, expected in (("X", x), ("Y", y)):
        given = row.get(axis, "")
        if given and _int(given) != expected:
            problems.append(
                f"{where} ({wsi} patch {index}): {axis}={given} but the patch was sampled "
                f"at {axis}={expected} (a sheet from another sampling?)"
            )
            return None
    verdict = "yes" if answer in YES_WORDS else "no"
    key = (wsi, index)
    if key in seen and seen[key][0] != verdict:
        problems.append(f"{where} ({wsi} patch {index}): contradicts line {seen[key][1]}")
        return None
    seen[key] = (verdict, line)
    return wsi, index, x, y, verdict, comment


def _check_verdict_row(
    row: dict[str, str],
    where: str,
    line: int,
    known_slides: set[str],
    seen: dict[tuple[str, int] | str, tuple[str, int]],
    problems: list[str],
) -> tuple[str, str, str] | None:
    """A valid WSI verdict row as (wsi, verdict, comment); None otherwise."""
    wsi = row.get(WSI_ID, "")
    answer, comment = row.get(WSI_UNACCEPTABLE, "").lower(), row.get(WSI_COMMENT, "")
    if not answer:
        if comment:
            problems.append(f"{where} ({wsi}): a comment but no {WSI_UNACCEPTABLE}")
        return None
    if answer not in UNACCEPTABLE_WORDS | ACCEPTABLE_WORDS:
        problems.append(
            f"{where} ({wsi}): {WSI_UNACCEPTABLE} {row[WSI_UNACCEPTABLE]!r} is not yes/no (yes = unacceptable)"
        )
        return None
    if wsi not in known_slides:
        problems.append(f"{where}: unknown {WSI_ID} {wsi!r}")
        return None
    verdict = VERDICT_UNACCEPTABLE if answer in UNACCEPTABLE_WORDS else VERDICT_ACCEPTABLE
    if wsi in seen and seen[wsi][0] != verdict:
        problems.append(f"{where} ({wsi}): contradicts line {seen[wsi][1]}")
        return None
    seen[wsi] = (verdict, line)
    return wsi, verdict, comment


def _sheet_kind(path: Path, header: list[str], problems: list[str]) -> str | None:
    """ "patch" for a patch review sheet, "wsi" for WSI verdicts, else None (with the problem)."""
    if WSI_ID not in header:
        problems.append(f"{path}: no {WSI_ID} column (header: {', '.join(header) or 'empty'})")
        return None
    if ADEQUATE in header and PATCH_INDEX in header:
        return "patch"
    if WSI_UNACCEPTABLE in header:
        return "wsi"
    problems.append(
        f"{path}: neither a patch review sheet ({WSI_ID}, {PATCH_INDEX}, {ADEQUATE}) "
        f"nor WSI verdicts ({WSI_ID}, {WSI_UNACCEPTABLE}, {WSI_COMMENT})"
    )
    return None


def _read_sheet_rows(
    path: Path,
    reader: csv.DictReader,
    kind: str,
    known_slides: set[str],
    patches: Mapping[str, Mapping[int, tuple[int, int]]],
    patch_reviews: list[PatchReview],
    verdicts: list[WsiVerdict],
    problems: list[str],
) -> None:
    """Check one sheet's rows, appending each answered one to ``patch_reviews`` or ``verdicts``
    and each bad one's problem to ``problems``."""
    seen: dict[tuple[str, int] | str, tuple[str, int]] = {}
    for row in reader:
        where = f"{path.name} line {reader.line_num}"
        if None in row:
            problems.append(f"{where}: more fields than the header has")
            continue
        clean = {k: unguard_cell(v or "").strip() for k, v in row.items()}
        if kind == "patch":
            review = _check_patch_row(clean, where, reader.line_num, known_slides, patches, seen, problems)
            if review is not None:
                patch_reviews.append(PatchReview(*review, source=path.name))
        else:
            verdict = _check_verdict_row(clean, where, reader.line_num, known_slides, seen, problems)
            if verdict is not None:
                verdicts.append(WsiVerdict(*verdict, source=path.name))


def parse_reviews(
    paths: Iterable[Path],
    patches: Mapping[str, Mapping[int, tuple[int, int]]],
    slides: Iterable[str],
) -> tuple[list[PatchReview], list[WsiVerdict]]:
    """Parse and validate review files against the cohort; raise ``ReviewError`` on any bad row.

    Parameters
    ----------
    paths : review CSVs (patch review sheets and/or WSI verdict sheets).
    patches : slide id → {patch index → (x, y)} of the patches that were sampled.
    slides : ids of the slides in the cohort.

    Rows whose answer is blank are skipped (not reviewed yet); a comment without an answer is
    an error, as are unknown slides or patches, positions that disagree with the sampled patch,
    words that are not yes/no, and one file answering the same patch twice differently.
    """
    known_slides = set(slides)
    problems: list[str] = []
    patch_reviews: list[PatchReview] = []
    verdicts: list[WsiVerdict] = []
    for path in map(Path, paths):
        try:
            text = review_text(path)
        except OSError as exc:
            problems.append(f"{path}: cannot read ({exc})")
            continue
        except ValueError as exc:
            problems.append(str(exc))
            continue
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f, delimiter=sheet_delimiter(text))
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            kind = _sheet_kind(path, header, problems)
            if kind is None:
                continue
            try:
                _read_sheet_rows(path, reader, kind, known_slides, patches, patch_reviews, verdicts, problems)
            except csv.Error as exc:
                problems.append(f"{path}: not a readable CSV ({exc})")
    if problems:
        raise ReviewError(problems)
    return patch_reviews, verdicts


# ---------------------------------------------------------------------------- the store ----


class ReviewStoreError(ValueError):
    """The review store (``qc/reviews/*.csv``) cannot be read: it is left as it is, and nothing
    is built on it (a rewrite would drop the reviews it still holds)."""


def _read_store(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """The rows of one store file with their line numbers; ``ReviewStoreError`` naming the file
    when it is not UTF-8 CSV with the store's columns."""
    if not path.exists():
        return []
    damaged = f"{path}: the review store is damaged"
    advice = "it was left as it is: restore it from a backup, or remove it to start the store afresh"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReviewStoreError(f"{damaged} (not UTF-8 text at byte {exc.start}); {advice}") from None
    except OSError as exc:
        raise ReviewStoreError(f"{path}: the review store cannot be read ({exc})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ReviewStoreError(f"{damaged} (no {', '.join(missing)} column); {advice}")
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise ReviewStoreError(
                    f"{damaged} (line {reader.line_num}: not as many fields as its header); {advice}"
                )
            rows.append((reader.line_num, {k: unguard_cell(v) for k, v in row.items()}))
    except csv.Error as exc:
        raise ReviewStoreError(f"{damaged} ({exc}); {advice}") from None
    return rows


def load_patch_store(reviews_dir: Path) -> dict[PatchKey, PatchReview]:
    """Every patch review recorded so far, keyed by (WSI-ID, PatchIndex, X, Y)."""
    path = reviews_dir / PATCH_STORE
    out: dict[PatchKey, PatchReview] = {}
    for line, row in _read_store(path, PATCH_STORE_COLUMNS):
        numbers = [_int(row[c]) for c in (PATCH_INDEX, "X", "Y")]
        if row[ADEQUATE] not in ("yes", "no") or None in numbers or not row[WSI_ID]:
            raise ReviewStoreError(
                f"{path}: the review store is damaged (line {line}: {row[WSI_ID]!r} patch {row[PATCH_INDEX]!r} at "
                f"{row['X']!r}, {row['Y']!r}, {ADEQUATE} {row[ADEQUATE]!r}); it was left as it is: fix or remove "
                "that line"
            )
        index, x, y = (int(n) for n in numbers if n is not None)
        r = PatchReview(row[WSI_ID], index, x, y, row[ADEQUATE], row[COMMENT], row[SOURCE])
        out[r.key] = r
    return out


def load_verdict_store(reviews_dir: Path) -> dict[str, WsiVerdict]:
    """Every WSI verdict recorded so far, keyed by WSI-ID."""
    path = reviews_dir / VERDICT_STORE
    out: dict[str, WsiVerdict] = {}
    for line, row in _read_store(path, VERDICT_STORE_COLUMNS):
        if row[WSI_UNACCEPTABLE] not in (VERDICT_UNACCEPTABLE, VERDICT_ACCEPTABLE) or not row[WSI_ID]:
            raise ReviewStoreError(
                f"{path}: the review store is damaged (line {line}: {row[WSI_ID]!r}, {WSI_UNACCEPTABLE} "
                f"{row[WSI_UNACCEPTABLE]!r}); it was left as it is: fix or remove that line"
            )
        out[row[WSI_ID]] = WsiVerdict(row[WSI_ID], row[WSI_UNACCEPTABLE], row[WSI_COMMENT], row[SOURCE])
    return out


def record_reviews(reviews_dir: Path, patch_reviews: Sequence[PatchReview], verdicts: Sequence[WsiVerdict]) -> None:
    """Merge new reviews into the store (later answers replace earlier ones for the same key)."""
    reviews_dir.mkdir(parents=True, exist_ok=True)
    if patch_reviews:
        store = load_patch_store(reviews_dir)
        for r in patch_reviews:
            store[r.key] = r
        write_csv_atomic(
            reviews_dir / PATCH_STORE,
            PATCH_STORE_COLUMNS,
            ((r.wsi_id, r.index, r.x, r.y, r.adequate, r.comment, r.source) for _, r in sorted(store.items())),
        )
    if verdicts:
        vstore = load_verdict_store(reviews_dir)
        for v in verdicts:
            vstore[v.wsi_id] = v
        write_csv_atomic(
            reviews_dir / VERDICT_STORE,
            VERDICT_STORE_COLUMNS,
            ((v.wsi_id, v.verdict, v.comment, v.source) for _, v in sorted(vstore.items())),
        )
