"""``nuclei.geojson``: a FeatureCollection of detections as QuPath imports them
(File → Import objects), with the measurements QuPath shows.

Each feature is the compact JSON of one nucleus (outline closed, coordinates to 0.1 px,
measurements rounded), built for a tile's nuclei at once as columns of text (``numbers``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.outputs.numbers import concatenated, joined, list_parts, shortest

# Measurement name → (column, decimals), in the order they are written.
MEASUREMENTS = {
    "Area µm^2": ("area_um2", 3),
    "Perimeter px": ("perimeter_px", 2),
    "Eccentricity": ("eccentricity", 4),
    "Haematoxylin OD mean": ("mean_haematoxylin", 4),
}


def nucleus_feature(row: dict[str, Any]) -> dict[str, Any]:
    """One nucleus (a row as a dict) as a GeoJSON detection: the definition the column-wise
    :func:`features` reproduces, and what a table with a value JSON writes unquoted (NaN) uses."""
    poly = row["polygon"]
    ring = [[round(poly[k], 1), round(poly[k + 1], 1)] for k in range(0, len(poly), 2)]
    ring.append(ring[0])
    return {
        "type": "Feature",
        "id": int(row["id"]),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": "Nucleus"},
            "measurements": {name: round(row[column], digits) for name, (column, digits) in MEASUREMENTS.items()},
        },
    }


def _key(name: str) -> str:
    return json.dumps(name) + ":"


def features(table: pa.Table) -> pa.Array:
    """One compact JSON Feature per nucleus (as ``json.dumps(..., separators=(",", ":"))``)."""
    values, offsets = list_parts(table.column("polygon"))
    measured = [table.column(column).to_numpy() for column, _ in MEASUREMENTS.values()]
    if (np.diff(offsets) < 2).any() or not all(np.isfinite(m).all() for m in measured) or not np.isfinite(values).all():
        rows = table.to_pylist()  # rare: no outline or a non-finite value; row by row, as json writes it
        return pa.array([json.dumps(nucleus_feature(row), separators=(",", ":")) for row in rows], pa.string())
    text = shortest(values, 1)
    vertices = pc.binary_join_element_wise(
        "[", pc.take(text, np.arange(0, len(values), 2)), ",", pc.take(text, np.arange(1, len(values), 2)), "]", ""
    )
    starts, counts = offsets[:-1] // 2, np.diff(offsets) // 2
    rings = np.repeat(np.arange(len(counts)), counts + 1)
    closed = np.arange(int(counts.sum()) + len(counts)) - rings  # each ring, then its first vertex again
    ends = np.cumsum(counts + 1) - 1
    closed[ends] = starts
    ring = joined(pc.take(vertices, closed), np.r_[0, ends + 1], ",")
    parts: list[pa.Array | str] = [
        '{"type":"Feature","id":',
        pc.cast(table.column("id").combine_chunks(), pa.string()),
        ',"geometry":{"type":"Polygon","coordinates":[[',
        ring,
        ']]},"properties":{"objectType":"detection","classification":{"name":"Nucleus"},"measurements":{',
    ]
    for i, (name, (_, digits)) in enumerate(MEASUREMENTS.items()):
        parts += [("," if i else "") + _key(name), shortest(measured[i], digits)]
    parts.append("}}}")
    return pc.binary_join_element_wise(*parts, "")


class QuPathGeoJsonWriter:
    def __init__(self, folder: Path) -> None:
        self._file = open(folder / "nuclei.geojson", "wb")
        self._file.write(b'{"type": "FeatureCollection", "features": [\n')
        self._n = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        text = features(table)
        self._file.write((b"" if self._n == 0 else b",\n") + concatenated(text[:1]))
        if table.num_rows > 1:
            self._file.write(concatenated(pc.binary_join_element_wise(",\n", text[1:], "")))
        self._n += table.num_rows

    def close(self) -> None:
        self._file.write(b"\n]}\n")
        self._file.close()
