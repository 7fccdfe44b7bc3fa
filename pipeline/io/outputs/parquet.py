"""``nuclei.parquet``: the nucleus table as GeoParquet 1.1, the slide's primary table.

Every column of :data:`NUCLEI_SCHEMA` but ``polygon``, then ``geometry`` (each outline as a WKB
Polygon, built column-wise with numpy: the outline is stored once) and ``bbox`` (its bounding box,
GeoParquet 1.1's bbox covering), with the ``geo`` metadata that geopandas, GDAL and DuckDB read.
Coordinates are level-0 pixels of the slide (x to the right, y down, origin at the top-left
corner): an image frame, not a place on Earth, so the geometry column has no CRS
(``"crs": null``). Tables written before the outline was stored once also hold it as ``polygon``
(list of float64); :func:`nucleus_row_group` reads either layout as :data:`NUCLEI_SCHEMA`.

Rows come in tile order (the tiles' raster order), one row group per tile, so a region query
with a filter on ``bbox`` reads only the row groups (tiles) whose boxes overlap the region: the
footer's min/max statistics of each ``bbox`` field prune the others.

Encodings, measured on a generated slide and on real 20x and 40x slides
(``benchmarks/output_footprint.py``): zstd; BYTE_STREAM_SPLIT for float columns of arbitrary
values (centroids, eccentricity, haematoxylin, the µm² areas: it groups the bytes of equal
significance, which zstd then compresses well), DELTA_BINARY_PACKED for the consecutive ids,
plain for the rest; ``geometry`` at a higher zstd level; min/max statistics only on ``bbox``
and ``id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.outputs.numbers import list_parts
from pipeline.io.outputs.schema import NUCLEI_SCHEMA

GEOMETRY = "geometry"
BBOX = "bbox"
BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
# GeoParquet 1.1 allows float32 bbox fields provided the box is rounded outward (it still holds
# the geometry); half the bytes of float64, and exact for the tracer's half-pixel vertices.
BBOX_TYPE = pa.struct([(name, pa.float32()) for name in BBOX_FIELDS])
OUTLINE = "polygon"  # the outline column of NUCLEI_SCHEMA, stored as GEOMETRY
GEOPARQUET_SCHEMA = (
    pa.schema([f for f in NUCLEI_SCHEMA if f.name != OUTLINE])
    .append(pa.field(GEOMETRY, pa.binary()))
    .append(pa.field(BBOX, BBOX_TYPE))
)
GEOPARQUET_VERSION = "1.1.0"

_WKB_POLYGON = 3  # OGC Simple Features geometry type code of a Polygon
_WKB_LITTLE_ENDIAN = 1
# A WKB Polygon with one ring: byte order, type, number of rings, number of points, then doubles.
_WKB_HEADER = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4")])
_WKB_EMPTY_BYTES = 9  # byte order, type, 0 rings: POLYGON EMPTY


def geo_metadata() -> dict[str, Any]:
    """The GeoParquet ``geo`` file metadata of ``nuclei.parquet``."""
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": GEOMETRY,
        "columns": {
            GEOMETRY: {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": None,  # level-0 pixels of the slide: an image frame, no CRS
                "edges": "planar",
                "covering": {BBOX: {name: [BBOX, name] for name in BBOX_FIELDS}},
            }
        },
    }


def polygon_wkb(values: np.ndarray, offsets: np.ndarray) -> pa.BinaryArray:
    """Each outline (flat x0, y0, x1, y1, ... between ``offsets``) as a little-endian WKB Polygon
    with one closed ring; an outline of fewer than 3 vertices is POLYGON EMPTY.

    >>> import shapely
    >>> wkb = polygon_wkb(np.array([0.0, 0, 4, 0, 4, 3, 9, 9]), np.array([0, 6, 8]))
    >>> [shapely.from_wkb(b).wkt for b in wkb.to_pylist()]
    ['POLYGON ((0 0, 4 0, 4 3, 0 0))', 'POLYGON EMPTY']
    """
    counts = np.diff(offsets) // 2
    ring = counts >= 3
    points = np.where(ring, counts + 1, 0)
    header = np.zeros(len(counts), dtype=_WKB_HEADER)
    header["order"], header["type"], header["rings"], header["points"] = _WKB_LITTLE_ENDIAN, _WKB_POLYGON, ring, points
    width = np.where(ring, _WKB_HEADER.itemsize, _WKB_EMPTY_BYTES)
    in_header = np.arange(_WKB_HEADER.itemsize)[None, :] < width[:, None]
    headers = _binary(header.view(np.uint8).reshape(-1, _WKB_HEADER.itemsize)[in_header], width)
    # each ring's vertices, then its first vertex again
    ring_counts = counts[ring]
    firsts = (offsets[:-1] // 2)[ring]
    owner = np.repeat(np.arange(len(ring_counts)), ring_counts + 1)
    vertex = np.arange(int(ring_counts.sum()) + len(ring_counts)) - owner  # the k-th vertex of its ring, ...
    vertex += np.repeat(firsts - np.r_[0, np.cumsum(ring_counts)[:-1]], ring_counts + 1)  # ... in the slide's array
    ends = np.cumsum(ring_counts + 1) - 1
    vertex[ends] = firsts
    xy = values.reshape(-1, 2)[vertex].astype("<f8")
    coordinates = _binary(xy.view(np.uint8).ravel(), 16 * points)
    return pc.binary_join_element_wise(headers, coordinates, pa.scalar(b"", pa.binary()))


def _binary(data: np.ndarray, sizes: np.ndarray) -> pa.BinaryArray:
    """``data`` cut into consecutive pieces of ``sizes`` bytes, as a binary array (no copy)."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(sizes), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _outward32(values: np.ndarray, toward: float) -> np.ndarray:
    """``values`` as float32, rounded toward ``toward`` (−inf for minima, +inf for maxima)."""
    rounded = values.astype(np.float32)
    off = rounded > values if toward < 0 else rounded < values
    return np.where(off, np.nextafter(rounded, np.float32(toward)), rounded)


def polygon_bbox(values: np.ndarray, offsets: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> pa.StructArray:
    """Each outline's bounding box (the centroid's point for an outline of no vertex), as float32
    rounded outward.

    Parameters
    ----------
    values : np.ndarray
        The outlines' vertices, flat and interleaved (x0, y0, x1, y1, ...), in level-0 px.
    offsets : np.ndarray
        Start of each outline in ``values``, and their length last (two values per vertex).
    cx, cy : np.ndarray
        The nuclei's centroids, in level-0 px.

    Returns
    -------
    pa.StructArray
        float32 fields ``BBOX_FIELDS`` (xmin, ymin, xmax, ymax) per outline.
    """
    counts = np.diff(offsets) // 2
    has = counts > 0
    starts = (offsets[:-1] // 2)[has]
    x, y = values[0::2], values[1::2]
    box = [cx.astype(np.float64), cy.astype(np.float64), cx.astype(np.float64), cy.astype(np.float64)]
    if has.any():
        for i, (coords, reduce) in enumerate([(x, np.minimum), (y, np.minimum), (x, np.maximum), (y, np.maximum)]):
            box[i][has] = reduce.reduceat(coords, starts)
    arrays = [_outward32(box[i], -np.inf if i < 2 else np.inf) for i in range(4)]
    return pa.StructArray.from_arrays([pa.array(a, pa.float32()) for a in arrays], names=list(BBOX_FIELDS))


def with_geometry(table: pa.Table) -> pa.Table:
    """A nucleus table (:data:`NUCLEI_SCHEMA`) as it is stored: ``polygon`` as ``geometry``, and ``bbox``."""
    values, offsets = list_parts(table.column(OUTLINE))
    cx = table.column("centroid_x").to_numpy()
    cy = table.column("centroid_y").to_numpy()
    table = table.drop_columns([OUTLINE]).append_column(GEOMETRY, polygon_wkb(values, offsets))
    return table.append_column(BBOX, polygon_bbox(values, offsets, cx, cy))


def wkb_polygons(wkb: pa.Array | pa.ChunkedArray, source: str = "nuclei.parquet") -> pa.ListArray:
    """The outlines of a WKB column as :func:`polygon_wkb` writes it (little-endian Polygons of one
    closed ring, or POLYGON EMPTY) as a ``polygon`` column: flat x0, y0, x1, y1, ... without the
    closing vertex (none for POLYGON EMPTY). Raises ValueError naming ``source`` for other WKB.

    >>> wkb = polygon_wkb(np.array([0.0, 0, 4, 0, 4, 3, 9, 9]), np.array([0, 6, 8]))
    >>> wkb_polygons(wkb).to_pylist()
    [[0.0, 0.0, 4.0, 0.0, 4.0, 3.0], []]
    """
    array = wkb.combine_chunks() if isinstance(wkb, pa.ChunkedArray) else wkb
    n = len(array)
    if array.null_count:
        raise ValueError(f"{source}: {array.null_count} nuclei have no geometry")
    ends = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if n and ends[-1] > 0 else np.zeros(0, np.uint8)
    starts, sizes = ends[:-1], np.diff(ends)
    head = np.zeros(n, dtype=_WKB_HEADER)
    for rows, width in ((sizes == _WKB_EMPTY_BYTES, _WKB_EMPTY_BYTES), (sizes >= _WKB_HEADER.itemsize, None)):
        if rows.any():
            width = width or _WKB_HEADER.itemsize
            raw = np.zeros((int(rows.sum()), _WKB_HEADER.itemsize), dtype=np.uint8)
            raw[:, :width] = data[starts[rows][:, None] + np.arange(width)]
            head[rows] = raw.view(_WKB_HEADER).ravel()
    points = head["points"].astype(np.int64)
    empty = (sizes == _WKB_EMPTY_BYTES) & (head["rings"] == 0)
    ring = (head["rings"] == 1) & (points >= 4) & (sizes == _WKB_HEADER.itemsize + 16 * points)
    well_formed = (head["order"] == _WKB_LITTLE_ENDIAN) & (head["type"] == _WKB_POLYGON) & (empty | ring)
    if not well_formed.all():
        row = int(np.flatnonzero(~well_formed)[0])
        raise ValueError(f"{source}: the geometry of row {row} is not a little-endian WKB Polygon of one ring")
    counts = np.where(ring, points - 1, 0)  # without the closing vertex
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(2 * counts, out=offsets[1:])
    owner = np.repeat(np.arange(n), 2 * counts)
    k = np.arange(int(offsets[-1])) - offsets[:-1][owner]
    at = (starts[owner] + _WKB_HEADER.itemsize + 8 * k)[:, None] + np.arange(8)
    values = data[at].view("<f8").ravel().astype(np.float64)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values, type=pa.float64()))


def nucleus_row_group(file: pq.ParquetFile, i: int, source: str = "nuclei.parquet") -> pa.Table:
    """Row group ``i`` of a nucleus table as :data:`NUCLEI_SCHEMA`, in either layout: the outline as
    ``geometry`` only, or (tables written before) as ``polygon`` as well."""
    names = file.schema_arrow.names
    if OUTLINE in names:
        return file.read_row_group(i, columns=NUCLEI_SCHEMA.names)
    if GEOMETRY not in names:
        raise ValueError(f"{source} has neither a {GEOMETRY} nor a {OUTLINE} column")
    columns = [name for name in NUCLEI_SCHEMA.names if name != OUTLINE]
    table = file.read_row_group(i, columns=[*columns, GEOMETRY])
    polygons = wkb_polygons(table.column(GEOMETRY), source)
    return table.drop_columns([GEOMETRY]).append_column(OUTLINE, polygons).select(NUCLEI_SCHEMA.names)


# Column encodings (see the module docstring): the leaf columns by their Parquet paths; the others
# (the areas in px and the perimeters: few-valued at the model's resolution, not on a resampled
# slide) plain, without a dictionary, which on real 20x and 40x slides stores them smaller.
_SPLIT_FLOATS = ["centroid_x", "centroid_y", "area_um2", "eccentricity", "mean_haematoxylin"]
_ENCODINGS = {
    "id": "DELTA_BINARY_PACKED",
    **{name: "BYTE_STREAM_SPLIT" for name in _SPLIT_FLOATS + [f"{BBOX}.{f}" for f in BBOX_FIELDS]},
}
# zstd level: 3 writes the shipped model's 4096² generated slide's table 3.5 % smaller than
# pyarrow's default (1) for ~15 % more write time; 6 gains 3 % more at 3× the time
# (benchmarks/RESULTS-outputs.md).
PARQUET_ZSTD_LEVEL = 3
# The outlines, most of the table's bytes: on CMU-1-Small-Region (20x) 6 stores them in 10 % less
# than 3 for ~6 µs more per nucleus; 9 no smaller at 3× that; 19 another 12 % at ~300 µs per nucleus.
GEOMETRY_ZSTD_LEVEL = 6
# Min/max statistics where readers prune on them: the bbox covering (region queries) and the ids.
# On every column they took 4 % of CMU-1-Small-Region's table (a row group per tile of ~150 nuclei).
_STATISTICS = ["id", *(f"{BBOX}.{f}" for f in BBOX_FIELDS)]


class ParquetWriter:
    def __init__(self, folder: Path, slide_id: str = "") -> None:  # the table holds no slide id
        schema = GEOPARQUET_SCHEMA.with_metadata({b"geo": json.dumps(geo_metadata()).encode()})
        self._writer = pq.ParquetWriter(
            folder / "nuclei.parquet",
            schema,
            compression="zstd",
            compression_level={
                name: GEOMETRY_ZSTD_LEVEL if name == GEOMETRY else PARQUET_ZSTD_LEVEL for name in schema.names
            },
            use_dictionary=False,
            column_encoding=_ENCODINGS,
            write_statistics=_STATISTICS,
        )

    def write(self, table: pa.Table) -> None:
        """One tile's nuclei: one row group."""
        self._writer.write_table(with_geometry(table), row_group_size=max(table.num_rows, 1))

    def close(self) -> None:
        self._writer.close()
