"""Writers for a run's outputs (DESIGN §5) and the atomic publication of a slide's folder.

A slide is written under ``slides/.<slide_id>.<token>.partial/`` and renamed to
``slides/<slide_id>/`` only when every file is complete, so no half-written output is ever
visible under its final name; readers and reruns ignore names that start with a dot.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STATS_FILE = "stats.json"
PARTIAL_SUFFIX = ".partial"

NUCLEI_SCHEMA = pa.schema(
    [
        ("id", pa.uint32()),
        ("centroid_x", pa.float64()),
        ("centroid_y", pa.float64()),
        ("area_px", pa.float64()),
        ("area_um2", pa.float64()),
        ("perimeter_px", pa.float64()),
        ("eccentricity", pa.float64()),
        ("mean_haematoxylin", pa.float64()),
        ("polygon", pa.list_(pa.float64())),
    ]
)


# ------------------------------------------------------------------ atomic files ----

def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename; ``durable`` also
    flushes it to disk first (scratch files that a crash discards anyway skip that)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ------------------------------------------------------------- slide folders ----

def slides_dir(out_dir: Path) -> Path:
    return out_dir / "slides"


def final_slide_dir(out_dir: Path, slide_id: str) -> Path:
    return slides_dir(out_dir) / slide_id


def new_partial_dir(out_dir: Path, slide_id: str) -> Path:
    """A fresh, uniquely named working folder for one attempt at a slide."""
    path = slides_dir(out_dir) / f".{slide_id}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
    path.mkdir(parents=True)
    return path


def remove_stale_partials(out_dir: Path, slide_id: str) -> int:
    """Delete working folders left by an interrupted attempt at ``slide_id``."""
    removed = 0
    root = slides_dir(out_dir)
    if not root.exists():
        return 0
    for p in root.glob(f".{slide_id}.*{PARTIAL_SUFFIX}"):
        shutil.rmtree(p, ignore_errors=True)
        removed += 1
    return removed


def read_published_stats(out_dir: Path, slide_id: str) -> dict[str, Any] | None:
    """The stats.json of a published slide folder, or None when there is none."""
    path = final_slide_dir(out_dir, slide_id) / STATS_FILE
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def publish_slide(partial: Path, final: Path) -> None:
    """Make a complete slide folder visible under its final name (one rename).

    An existing final folder (an earlier failure being retried) is moved aside first and
    deleted after the new one is in place.
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(final, old)
    os.replace(partial, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_failure(out_dir: Path, slide_id: str, stats: dict[str, Any]) -> None:
    """Publish a folder holding only the failed slide's stats.json (status + reason)."""
    partial = new_partial_dir(out_dir, slide_id)
    atomic_write_json(partial / STATS_FILE, stats)
    publish_slide(partial, final_slide_dir(out_dir, slide_id))
    remove_stale_partials(out_dir, slide_id)


# ------------------------------------------------------------- nucleus tables ----

def polygon_text(flat: Iterable[float]) -> str:
    """The paper's polygon format: [x0:y0:x1:y1:...]."""
    return "[" + ":".join(f"{v:.1f}" for v in flat) + "]"


def write_nucleus_tables(tables: Iterator[pa.Table], folder: Path, geojson: bool = True) -> int:
    """Stream per-tile nucleus tables into nuclei.parquet, nuclei.csv (the paper's format)
    and nuclei.geojson (QuPath detections). Returns the number of nuclei written."""
    n = 0
    parquet = pq.ParquetWriter(folder / "nuclei.parquet", NUCLEI_SCHEMA, compression="zstd")
    csv = open(folder / "nuclei.csv", "w", newline="")
    csv.write("AreaInPixels,PhysicalSize,Polygon\n")
    gj = open(folder / "nuclei.geojson", "w") if geojson else None
    if gj is not None:
        gj.write('{"type": "FeatureCollection", "features": [\n')
    try:
        for table in tables:
            if table.num_rows == 0:
                continue
            parquet.write_table(table.cast(NUCLEI_SCHEMA))
            cols = table.to_pydict()
            for i in range(table.num_rows):
                poly = cols["polygon"][i]
                csv.write(f'{int(round(cols["area_px"][i]))},{cols["area_um2"][i]:.2f},{polygon_text(poly)}\n')
                if gj is not None:
                    ring = [[round(poly[k], 1), round(poly[k + 1], 1)] for k in range(0, len(poly), 2)]
                    ring.append(ring[0])
                    feature = {
                        "type": "Feature",
                        "id": int(cols["id"][i]),
                        "geometry": {"type": "Polygon", "coordinates": [ring]},
                        "properties": {
                            "objectType": "detection",
                            "classification": {"name": "Nucleus"},
                            "measurements": {
                                "Area µm^2": round(cols["area_um2"][i], 3),
                                "Perimeter px": round(cols["perimeter_px"][i], 2),
                                "Eccentricity": round(cols["eccentricity"][i], 4),
                                "Haematoxylin OD mean": round(cols["mean_haematoxylin"][i], 4),
                            },
                        },
                    }
                    gj.write(("" if n == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
                n += 1
    finally:
        parquet.close()
        csv.close()
        if gj is not None:
            gj.write("\n]}\n")
            gj.close()
    return n


# ------------------------------------------------------------------- label maps ----

def create_maps(folder: Path, width: int, height: int, chunk: int, probabilities: bool) -> None:
    """maps.zarr with ``labels`` (uint32, level-0 grid, chunks = tile core) and optionally
    ``probabilities`` (uint8, 2×H×W: centre, material)."""
    import zarr

    root = zarr.open_group(str(folder / "maps.zarr"), mode="w")
    root.create_array("labels", shape=(height, width), chunks=(chunk, chunk), dtype="uint32", fill_value=0)
    if probabilities:
        root.create_array(
            "probabilities", shape=(2, height, width), chunks=(2, chunk, chunk), dtype="uint8", fill_value=0
        )
    root.attrs["coordinates"] = "level-0 pixels of the slide"


def open_maps(folder: Path) -> Any:
    import zarr

    return zarr.open_group(str(folder / "maps.zarr"), mode="r+")
