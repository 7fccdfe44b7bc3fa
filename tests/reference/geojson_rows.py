"""``nuclei.geojson``: a FeatureCollection of detections as QuPath imports them
(File → Import objects), with the measurements QuPath shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa


def nucleus_feature(columns: dict[str, list[Any]], i: int) -> dict[str, Any]:
    """Row ``i`` of a nucleus table as a GeoJSON detection (outline closed, 0.1 px precision)."""
    poly = columns["polygon"][i]
    ring = [[round(poly[k], 1), round(poly[k + 1], 1)] for k in range(0, len(poly), 2)]
    ring.append(ring[0])
    return {
        "type": "Feature",
        "id": int(columns["id"][i]),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": "Nucleus"},
            "measurements": {
                "Area µm^2": round(columns["area_um2"][i], 3),
                "Perimeter px": round(columns["perimeter_px"][i], 2),
                "Eccentricity": round(columns["eccentricity"][i], 4),
                "Haematoxylin OD mean": round(columns["mean_haematoxylin"][i], 4),
            },
        },
    }


class QuPathGeoJsonWriter:
    def __init__(self, folder: Path) -> None:
        self._file = open(folder / "nuclei.geojson", "w")
        self._file.write('{"type": "FeatureCollection", "features": [\n')
        self._n = 0

    def write(self, table: pa.Table, columns: dict[str, list[Any]]) -> None:
        for i in range(table.num_rows):
            feature = json.dumps(nucleus_feature(columns, i), separators=(",", ":"))
            self._file.write(("" if self._n == 0 else ",\n") + feature)
            self._n += 1

    def close(self) -> None:
        self._file.write("\n]}\n")
        self._file.close()
