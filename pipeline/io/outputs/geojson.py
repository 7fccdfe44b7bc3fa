"""``nuclei.geojson``: a FeatureCollection of detections as QuPath imports them
(File → Import objects), with the measurements QuPath shows.

Each feature is the compact JSON of one nucleus (outline closed, coordinates to 0.1 px,
measurements rounded), built for a tile's nuclei at once as columns of text (``numbers``), in
QuPath's object format (v0.4 on): ``id`` a UUID, ``properties`` with ``objectType``,
``classification`` and ``measurements`` (name → number). The UUID is stable: uuid5 of the slide id
and the nucleus id (:func:`nucleus_uuids`), so the same nucleus keeps its QuPath id across
exports; the nucleus id (``nuclei.parquet``'s ``id``, the label in ``maps.zarr``) is the
measurement ``Nucleus id``."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.outputs.numbers import concatenated, joined, list_parts, shortest

# The namespace of the nucleus UUIDs: uuid5(NUCLEUS_UUID_NAMESPACE, "<slide_id>/<nucleus id>").
# Drawn once at random for this project; changing it changes every exported id.
NUCLEUS_UUID_NAMESPACE = uuid.UUID("e5d9dbf0-c221-47fa-9f5d-f96bcff365f9")
NUCLEUS_ID_MEASUREMENT = "Nucleus id"
# Measurement name → (column, decimals), in the order they are written after the nucleus id.
MEASUREMENTS = {
    "Area µm^2": ("area_um2", 3),
    "Perimeter px": ("perimeter_px", 2),
    "Eccentricity": ("eccentricity", 4),
    "Haematoxylin OD mean": ("mean_haematoxylin", 4),
}


def nucleus_uuid(slide_id: str, nucleus_id: int) -> uuid.UUID:
    """The QuPath id of a nucleus: the same slide id and nucleus id give the same UUID.

    >>> str(nucleus_uuid("S1", 7)) == str(nucleus_uuid("S1", 7)) != str(nucleus_uuid("S2", 7))
    True
    """
    return uuid.uuid5(NUCLEUS_UUID_NAMESPACE, f"{slide_id}/{nucleus_id}")


def nucleus_uuids(slide_id: str, ids: np.ndarray) -> pa.Array:
    """:func:`nucleus_uuid` of every id, as text: the SHA-1 of each name (hashlib, one C call per
    nucleus), then the version and variant bits and the hex text for all of them at once.

    >>> ids = np.array([1, 2, 4294967295], dtype=np.uint32)
    >>> nucleus_uuids("TCGA-XX", ids).to_pylist() == [str(nucleus_uuid("TCGA-XX", int(i))) for i in ids]
    True
    """
    prefix = NUCLEUS_UUID_NAMESPACE.bytes + f"{slide_id}/".encode()
    digests = b"".join([hashlib.sha1(prefix + b"%d" % i, usedforsecurity=False).digest()[:16] for i in ids.tolist()])
    raw = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5 (RFC 4122 §4.3)
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = np.stack([raw >> 4, raw & 0x0F], axis=2).reshape(-1, 32)
    text = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_COLUMNS] = hexdigits[nibbles]
    offsets = np.arange(len(raw) + 1, dtype=np.int32) * 36
    return pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets), pa.py_buffer(text))


_UUID_HEX_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])  # 8-4-4-4-12


def nucleus_feature(row: dict[str, Any], slide_id: str, centroids: bool = False) -> dict[str, Any]:
    """One nucleus (a row as a dict) as a GeoJSON detection, its outline or (``centroids``) its
    centroid: the definition the column-wise :func:`features` reproduces, and what a table with a
    value JSON writes unquoted (NaN) uses."""
    if centroids:
        point = [round(row["centroid_x"], 1), round(row["centroid_y"], 1)]
        geometry: dict[str, Any] = {"type": "Point", "coordinates": point}
    else:
        poly = row["polygon"]
        ring = [[round(poly[k], 1), round(poly[k + 1], 1)] for k in range(0, len(poly), 2)]
        ring.append(ring[0])
        geometry = {"type": "Polygon", "coordinates": [ring]}
    measurements: dict[str, Any] = {NUCLEUS_ID_MEASUREMENT: int(row["id"])}
    measurements.update({name: round(row[column], digits) for name, (column, digits) in MEASUREMENTS.items()})
    return {
        "type": "Feature",
        "id": str(nucleus_uuid(slide_id, int(row["id"]))),
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "classification": {"name": "Nucleus"},
            "measurements": measurements,
        },
    }


def _key(name: str) -> str:
    return json.dumps(name) + ":"


def features(table: pa.Table, slide_id: str, centroids: bool = False) -> pa.Array:
    """One compact JSON Feature per nucleus (as ``json.dumps(..., separators=(",", ":"))``)."""
    values, offsets = list_parts(table.column("polygon"))
    if centroids:  # the centroid as the only vertex
        values = np.stack([table.column("centroid_x").to_numpy(), table.column("centroid_y").to_numpy()], 1).ravel()
        offsets = np.arange(table.num_rows + 1) * 2
    measured = [table.column(column).to_numpy() for column, _ in MEASUREMENTS.values()]
    outline_missing = not centroids and (np.diff(offsets) < 2).any()
    if outline_missing or not all(np.isfinite(m).all() for m in measured) or not np.isfinite(values).all():
        rows = table.to_pylist()  # rare: no outline or a non-finite value; row by row, as json writes it
        dumped = [json.dumps(nucleus_feature(row, slide_id, centroids), separators=(",", ":")) for row in rows]
        return pa.array(dumped, pa.string())
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
    ids = table.column("id").combine_chunks()
    geometry: list[pa.Array | str] = (
        ['","geometry":{"type":"Point","coordinates":', vertices, "}"]
        if centroids
        else ['","geometry":{"type":"Polygon","coordinates":[[', ring, "]]}"]
    )
    parts: list[pa.Array | str] = [
        '{"type":"Feature","id":"',
        nucleus_uuids(slide_id, ids.to_numpy()),
        *geometry,
        ',"properties":{"objectType":"detection","classification":{"name":"Nucleus"},"measurements":{',
        _key(NUCLEUS_ID_MEASUREMENT),
        pc.cast(ids, pa.string()),
    ]
    for i, (name, (_, digits)) in enumerate(MEASUREMENTS.items()):
        parts += ["," + _key(name), shortest(measured[i], digits)]
    parts.append("}}}")
    return pc.binary_join_element_wise(*parts, "")


class QuPathGeoJsonWriter:
    FILE = "nuclei.geojson"
    CENTROIDS = False

    def __init__(self, folder: Path, slide_id: str) -> None:
        self._slide_id = slide_id
        self._file = open(folder / self.FILE, "wb")
        self._file.write(b'{"type": "FeatureCollection", "features": [\n')
        self._n = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        text = features(table, self._slide_id, self.CENTROIDS)
        self._file.write((b"" if self._n == 0 else b",\n") + concatenated(text[:1]))
        if table.num_rows > 1:
            self._file.write(concatenated(pc.binary_join_element_wise(",\n", text[1:], "")))
        self._n += table.num_rows

    def close(self) -> None:
        self._file.write(b"\n]}\n")
        self._file.close()


class QuPathCentroidsWriter(QuPathGeoJsonWriter):
    """``nuclei_centroids.geojson``: the same detections, each a Point at its centroid (a third of
    the outlines' bytes, for slides of a million nuclei)."""

    FILE = "nuclei_centroids.geojson"
    CENTROIDS = True
