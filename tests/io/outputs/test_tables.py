"""The column-wise nucleus-table writers against row-by-row definitions: ``nuclei.csv`` against
the paper's format written one row at a time with Python's float formatting (``csv_row``), byte
for byte;
``nuclei.geojson`` (UUID ids, the nucleus id as a measurement) against
``json.dumps`` of :func:`pipeline.io.outputs.geojson.nucleus_feature` for every row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io.outputs.geojson import nucleus_feature
from pipeline.io.outputs.schema import NUCLEI_SCHEMA
from pipeline.io.outputs.tables import write_nucleus_tables

SLIDE = "TCGA-A1-A0SB-01Z-00-DX1"


def random_table(rng: np.random.Generator, n: int, first_id: int, scale: float) -> pa.Table:
    """Nuclei with awkward numbers: halves and exact decimal ties, tiny and negative coordinates,
    resampled (non-dyadic) positions, zero eccentricity, large ids."""
    k = rng.integers(4, 40, size=n)
    offsets = np.r_[0, np.cumsum(2 * k)]
    base = rng.integers(-1, 5000, size=offsets[-1]) + rng.choice([0.0, 0.5, 0.25, 0.75, 0.05, 0.15], size=offsets[-1])
    coords = np.where(rng.random(offsets[-1]) < 0.5, base, base * scale - 0.5)
    area_px = rng.choice([rng.random() * 900, 20.5, 21.5, 0.5, 300.0], size=n) + rng.integers(0, 3, size=n)
    area_um2 = np.where(rng.random(n) < 0.3, np.round(area_px * 0.0625, 3), area_px * 0.0625)
    return pa.table(
        {
            "id": pa.array(np.arange(first_id, first_id + n, dtype=np.uint32)),
            "centroid_x": rng.random(n) * 1000,
            "centroid_y": rng.random(n) * 1000,
            "area_px": area_px,
            "area_um2": area_um2,
            "perimeter_px": np.where(rng.random(n) < 0.3, rng.integers(10, 90, n) + 0.005, rng.random(n) * 120),
            "eccentricity": np.where(rng.random(n) < 0.2, 0.0, rng.random(n)),
            "mean_haematoxylin": np.where(rng.random(n) < 0.2, 0.00005, rng.random(n) * 2),
            "polygon": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(coords)),
        },
        schema=NUCLEI_SCHEMA,
    )


def csv_row(row: dict) -> str:
    """One ``nuclei.csv`` line, the paper's format: ``AreaInPixels,PhysicalSize,Polygon``, the area
    rounded half to even, µm² to 2 decimals, the polygon as ``[x0:y0:x1:y1:...]`` to 0.1 px."""
    polygon = "[" + ":".join(f"{v:.1f}" for v in row["polygon"]) + "]"
    return f"{int(round(row['area_px']))},{row['area_um2']:.2f},{polygon}\n"


def test_csv_row_by_hand() -> None:
    row = {"area_px": 20.5, "area_um2": 1.005, "polygon": [1.0, 2.25, 3.5, 4.05]}
    assert csv_row(row) == "20,1.00,[1.0:2.2:3.5:4.0]\n"  # Python's round and format: ties to even


def write_rows(tables: list[pa.Table], folder: Path) -> None:
    """nuclei.csv and nuclei.geojson row by row from their definitions."""
    rows = [row for table in tables for row in table.to_pylist()]
    csv = "AreaInPixels,PhysicalSize,Polygon\n" + "".join(csv_row(row) for row in rows)
    (folder / "nuclei.csv").write_text(csv, newline="")
    features = [json.dumps(nucleus_feature(row, SLIDE), separators=(",", ":")) for row in rows]
    text = '{"type": "FeatureCollection", "features": [\n' + ",\n".join(features) + "\n]}\n"
    (folder / "nuclei.geojson").write_bytes(text.encode())


@pytest.mark.parametrize("scale", [1.0, 1.996])
def test_csv_and_geojson_bytes_unchanged(tmp_path: Path, scale: float) -> None:
    rng = np.random.default_rng(int(scale * 10))
    tables = [random_table(rng, n, 1 + 1000 * i, scale) for i, n in enumerate([300, 0, 1, 57, 2])]
    tables.append(tables[0].slice(100, 50))  # a table that is a slice (list offsets not from 0)
    (tmp_path / "rows").mkdir()
    (tmp_path / "columns").mkdir()
    write_rows(tables, tmp_path / "rows")
    n = write_nucleus_tables(iter(tables), tmp_path / "columns", SLIDE, ["parquet", "csv", "geojson"])
    assert n == sum(t.num_rows for t in tables)
    for name in ("nuclei.csv", "nuclei.geojson"):
        old, new = (tmp_path / "rows" / name).read_bytes(), (tmp_path / "columns" / name).read_bytes()
        assert len(old) > 1000
        assert new == old, name


def test_empty_outputs_unchanged(tmp_path: Path) -> None:
    (tmp_path / "rows").mkdir()
    (tmp_path / "columns").mkdir()
    write_rows([], tmp_path / "rows")
    write_nucleus_tables(iter([]), tmp_path / "columns", SLIDE, ["csv", "geojson"])
    for name in ("nuclei.csv", "nuclei.geojson"):
        assert (tmp_path / "columns" / name).read_bytes() == (tmp_path / "rows" / name).read_bytes()


def test_non_finite_values_written_as_json_writes_them(tmp_path: Path) -> None:
    table = random_table(np.random.default_rng(3), 5, 1, 1.0)
    ecc = table.column("eccentricity").to_numpy().copy()
    ecc[2] = np.nan
    table = table.set_column(6, "eccentricity", pa.array(ecc))
    (tmp_path / "rows").mkdir()
    (tmp_path / "columns").mkdir()
    write_rows([table], tmp_path / "rows")
    write_nucleus_tables(iter([table]), tmp_path / "columns", SLIDE, ["geojson"])
    new = (tmp_path / "columns" / "nuclei.geojson").read_bytes()
    assert b"NaN" in new and new == (tmp_path / "rows" / "nuclei.geojson").read_bytes()


def test_centroid_geojson_is_the_definition_row_by_row(tmp_path: Path) -> None:
    tables = [random_table(np.random.default_rng(9), n, 1 + 1000 * i, 1.996) for i, n in enumerate([120, 1, 33])]
    write_nucleus_tables(iter(tables), tmp_path, SLIDE, ["geojson-centroids"])
    rows = [row for t in tables for row in t.to_pylist()]
    features = [json.dumps(nucleus_feature(row, SLIDE, centroids=True), separators=(",", ":")) for row in rows]
    expected = '{"type": "FeatureCollection", "features": [\n' + ",\n".join(features) + "\n]}\n"
    assert (tmp_path / "nuclei_centroids.geojson").read_text() == expected


def test_spreadsheet_tables_guard_text_not_numbers(tmp_path: Path) -> None:
    """A text cell that a spreadsheet would run as a formula gets a quote in front; numbers, negative
    ones included, are written as numbers; every text reads back as it was given."""
    import csv

    import pandas as pd

    from pipeline.io.outputs.spreadsheet import unguard_cell, write_csv_atomic, write_frame_atomic

    texts = ["=1+1", "+1", "-0.5", "@A1", "\t=1", "'=1", "''", "'x", "'", "x=1", "", "-"]
    frame = pd.DataFrame({"Text": texts, "Value": [-0.5 * i for i in range(len(texts))]})
    write_frame_atomic(tmp_path / "frame.csv", frame)
    write_csv_atomic(tmp_path / "rows.csv", ["Text", "Value"], frame.itertuples(index=False))
    for name in ("frame.csv", "rows.csv"):
        with open(tmp_path / name, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        assert [r[1] for r in rows] == [str(-0.5 * i) for i in range(len(texts))], name
        assert [r[0] for r in rows][:6] == ["'=1+1", "'+1", "'-0.5", "'@A1", "'\t=1", "''=1"], name
        assert [unguard_cell(r[0]) for r in rows] == texts, name
    # pandas formats everything else as before
    frame.to_csv(tmp_path / "plain.csv", index=False)
    plain = (tmp_path / "plain.csv").read_text().splitlines()
    guarded = (tmp_path / "frame.csv").read_text().splitlines()
    changed = [i for i, (a, b) in enumerate(zip(plain, guarded, strict=True)) if a != b]
    assert changed == [1, 2, 3, 4, 5, 6, 7, 12]  # the rows of the texts guarded, "''" and "-" included
