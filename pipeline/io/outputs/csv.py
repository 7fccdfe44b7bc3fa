"""``nuclei.csv``: the paper's format, ``AreaInPixels,PhysicalSize,Polygon`` with the polygon as
``[x0:y0:x1:y1:...]`` in level-0 px (one decimal), the area in µm² with two.

A tile's rows are built as whole columns of text (``numbers``) and written in one piece."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.outputs.numbers import concatenated, fixed, integers, joined, list_parts


def polygon_text(flat: Iterable[float]) -> str:
    """The paper's polygon format, for one polygon.

    >>> polygon_text([1.0, 2.25, 3.5, 4.0])
    '[1.0:2.2:3.5:4.0]'
    """
    return "[" + ":".join(f"{v:.1f}" for v in flat) + "]"


def csv_rows(table: pa.Table) -> bytes:
    """The CSV lines of a nucleus table."""
    values, offsets = list_parts(table.column("polygon"))
    polygons = joined(fixed(values, 1), offsets, ":")
    area_px = integers(table.column("area_px").to_numpy())
    area_um2 = fixed(table.column("area_um2").to_numpy(), 2)
    return concatenated(pc.binary_join_element_wise(area_px, ",", area_um2, ",[", polygons, "]\n", ""))


class PaperCsvWriter:
    def __init__(self, folder: Path, slide_id: str = "") -> None:
        self._file = open(folder / "nuclei.csv", "wb")
        self._file.write(b"AreaInPixels,PhysicalSize,Polygon\n")

    def write(self, table: pa.Table) -> None:
        self._file.write(csv_rows(table))

    def close(self) -> None:
        self._file.close()
