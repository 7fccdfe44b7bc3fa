"""``python -m pipeline.export {csv,geojson,geojson-centroids} DIR [--slides ID ...]``: write a
published slide's ``nuclei.csv`` (the paper's format), ``nuclei.geojson`` (QuPath detections) or
``nuclei_centroids.geojson`` (the same detections as points) from its ``nuclei.parquet``, for the
slides someone wants to open elsewhere.

The files are those a run writes with ``--write-csv`` / ``--write-geojson`` (same bytes), built
tile by tile (one Parquet row group at a time) by the same column-wise writers, and each appears
under its final name only when complete. The export holds the output folder's lock, as a run does.
Exit status: 0 every slide written, 1 some slides could not be (each named, with the reason), 2
unusable arguments (no such folder, a slide id the folder does not hold, the folder in use).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cli._console import safe_console
from pipeline.io.outputs.lock import OutputInUse, lock_output
from pipeline.io.outputs.parquet import nucleus_row_group
from pipeline.io.outputs.publish import atomic_file_from, slides_dir
from pipeline.io.outputs.stats import STATS_FILE
from pipeline.io.outputs.status import SlideStatus
from pipeline.io.outputs.tables import NUCLEUS_TABLE_FORMATS, PRIMARY, TABLE_FILES, write_nucleus_tables


def tile_tables(parquet: Path) -> Iterator[pa.Table]:
    """The nucleus table of a published slide, one row group (one tile) at a time, in either
    layout (the outline as ``geometry`` only, or also as ``polygon``: tables written before)."""
    file = pq.ParquetFile(parquet)
    for i in range(file.num_row_groups):
        yield nucleus_row_group(file, i, str(parquet))


def export_slide(slide_dir: Path, fmt: str) -> int:
    """Write ``fmt``'s file into a published slide folder from its nuclei.parquet. Returns the
    number of nuclei; raises ValueError saying why a slide cannot be exported."""
    try:
        stats = json.loads((slide_dir / STATS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"its {STATS_FILE} cannot be read ({exc})") from None
    if stats.get("status") != SlideStatus.OK:
        raise ValueError(f"it did not finish ({stats.get('status')}: {stats.get('error')})")
    parquet = slide_dir / TABLE_FILES["parquet"]
    if not parquet.is_file():
        raise ValueError(f"{parquet} is missing")
    slide_id = str(stats.get("slide_id") or slide_dir.name)
    with atomic_file_from(slide_dir / TABLE_FILES[fmt]) as scratch:
        return write_nucleus_tables(tile_tables(parquet), scratch, slide_id, [fmt])


def main(argv: Sequence[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.export",
        description="Write nuclei.csv or nuclei.geojson of published slides from their nuclei.parquet.",
    )
    parser.add_argument(
        "format",
        choices=[f for f in NUCLEUS_TABLE_FORMATS if f != PRIMARY],
        help="csv: the paper's table; geojson: QuPath detections; geojson-centroids: the same, each a point "
        "(nuclei_centroids.geojson, lighter for slides of a million nuclei)",
    )
    parser.add_argument("dir", type=Path, help="the run's output folder (holds slides/<slide_id>/)")
    parser.add_argument("--slides", nargs="+", metavar="ID", help="slide ids (default: every finished slide)")
    args = parser.parse_args(argv)
    root = slides_dir(args.dir)
    if not root.is_dir():
        print(f"error: {args.dir} has no slides/ folder: not a run's output folder", file=sys.stderr)
        return 2
    published = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    ids = args.slides or published
    unknown = [i for i in ids if i not in published]
    if unknown:
        print(f"error: {root} holds no slide {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        lock = lock_output(args.dir)
    except (OutputInUse, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with lock:
        for slide_id in ids:
            try:
                n = export_slide(root / slide_id, args.format)
            except (ValueError, OSError) as exc:
                failed += 1
                print(f"{slide_id}: not written: {exc}", file=sys.stderr)
                continue
            print(f"{slide_id}: {TABLE_FILES[args.format]} ({n} nuclei)", file=sys.stderr)
    return 1 if failed else 0
