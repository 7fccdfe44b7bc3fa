"""``nuclei.csv``: the paper's format, ``AreaInPixels,PhysicalSize,Polygon`` with the polygon as
``[x0:y0:x1:y1:...]`` in level-0 px."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa


def polygon_text(flat: Iterable[float]) -> str:
    """The paper's polygon format.

    >>> polygon_text([1.0, 2.25, 3.5, 4.0])
    '[1.0:2.2:3.5:4.0]'
    """
    return "[" + ":".join(f"{v:.1f}" for v in flat) + "]"


class PaperCsvWriter:
    def __init__(self, folder: Path) -> None:
        self._file = open(folder / "nuclei.csv", "w", newline="")
        self._file.write("AreaInPixels,PhysicalSize,Polygon\n")

    def write(self, table: pa.Table, columns: dict[str, list[Any]]) -> None:
        area_px, area_um2, polygons = columns["area_px"], columns["area_um2"], columns["polygon"]
        for i in range(table.num_rows):
            self._file.write(f"{int(round(area_px[i]))},{area_um2[i]:.2f},{polygon_text(polygons[i])}\n")

    def close(self) -> None:
        self._file.close()
