"""Reading a published slide's outputs back: its nucleus table, filtered to a region on the
GeoParquet bbox covering, and the levels of its label pyramid.

The writers are the other modules of this package; these are the readers the Python API
(``pipeline.api``) and other tools build on. Each raises ValueError naming the file and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.io.outputs.maps import LABELS, MAPS_DIR, open_labels
from pipeline.io.outputs.parquet import BBOX, GEOMETRY

# Columns a reader does not get back: the covering (``bbox``, the geometry's bounding box, used to
# filter) and the outline as a list of numbers in tables that still hold it beside ``geometry``.
_NOT_RETURNED = (BBOX, "polygon")


def region(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` in level-0 px, checked: four finite numbers, min ≤ max.

    >>> region([0, 10, 512, 522.5])
    (0.0, 10.0, 512.0, 522.5)
    >>> region((5, 0, 1, 1))
    Traceback (most recent call last):
    ...
    ValueError: bbox (5, 0, 1, 1) must be (xmin, ymin, xmax, ymax) in level-0 px with xmin ≤ xmax and ymin ≤ ymax
    """
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox {bbox!r} must be four numbers (xmin, ymin, xmax, ymax) in level-0 px") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbox {bbox!r} must be four finite numbers (xmin, ymin, xmax, ymax) in level-0 px")
    xmin, ymin, xmax, ymax = values
    if xmin > xmax or ymin > ymax:
        raise ValueError(
            f"bbox {bbox!r} must be (xmin, ymin, xmax, ymax) in level-0 px with xmin ≤ xmax and ymin ≤ ymax"
        )
    return xmin, ymin, xmax, ymax


def read_nucleus_table(path: Path, bbox: Sequence[float] | None = None) -> pa.Table:
    """The nuclei of ``nuclei.parquet`` (every column but the bbox covering), all of them or those
    whose bounding box overlaps ``bbox`` = (xmin, ymin, xmax, ymax) in level-0 px (edges included).

    The filter is on the GeoParquet bbox covering: only the row groups (tiles) whose boxes can
    overlap the region are read. The outline is the ``geometry`` column (WKB Polygon)."""
    schema = pq.read_schema(path)
    if GEOMETRY not in schema.names or BBOX not in schema.names:
        raise ValueError(
            f"{path} has no {GEOMETRY} and {BBOX} columns: it is not a GeoParquet nucleus table "
            "(rerun the slide to rewrite it)"
        )
    columns = [name for name in schema.names if name not in _NOT_RETURNED]
    if bbox is None:
        return pq.read_table(path, columns=columns)
    xmin, ymin, xmax, ymax = region(bbox)
    box = {name: pc.field(BBOX, name) for name in ("xmin", "ymin", "xmax", "ymax")}
    overlaps = (box["xmax"] >= xmin) & (box["xmin"] <= xmax) & (box["ymax"] >= ymin) & (box["ymin"] <= ymax)
    return pads.dataset(path, format="parquet").to_table(columns=columns, filter=overlaps)


def label_levels(slide_folder: Path) -> list[str]:
    """The paths of the label pyramid's levels in ``maps.zarr`` (``["0", "1", ...]``, finest first),
    from its OME-NGFF multiscales metadata."""
    import zarr

    where = slide_folder / MAPS_DIR / LABELS
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(str(where), mode="r").attrs.asdict())
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise ValueError(f"{where} is missing: the slide has no label map") from None
    try:
        return [str(d["path"]) for d in attrs["ome"]["multiscales"][0]["datasets"]]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{where} has no OME-NGFF multiscales metadata") from None


def open_label_level(slide_folder: Path, level: int) -> Any:
    """The label map of a published slide folder at pyramid ``level`` (a read-only Zarr array);
    ValueError naming the levels there are when ``level`` is none of them."""
    levels = label_levels(slide_folder)
    if isinstance(level, bool) or not isinstance(level, int) or str(level) not in levels:
        raise ValueError(
            f"level {level!r} is not a level of the label pyramid: it has levels 0 to {len(levels) - 1} "
            "(0 = the slide's own grid, each next one half as fine)"
        )
    return open_labels(slide_folder, level)
