"""The nucleus tables as other tools read them: nuclei.parquet as GeoParquet 1.1 read by
geopandas and queried by region with a pyarrow filter on its bbox covering; nuclei.geojson in
QuPath's object format; ``python -m pipeline.export`` writing both later from nuclei.parquet."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.cli.export import main as export_main
from pipeline.io.outputs.geojson import NUCLEUS_ID_MEASUREMENT, NUCLEUS_UUID_NAMESPACE
from pipeline.io.outputs.numbers import list_parts
from pipeline.io.outputs.parquet import (
    GEOPARQUET_SCHEMA,
    geo_metadata,
    nucleus_row_group,
    polygon_bbox,
    polygon_wkb,
    wkb_polygons,
)
from pipeline.io.outputs.schema import NUCLEI_SCHEMA
from pipeline.io.outputs.tables import write_nucleus_tables
from pipeline.qc._patches import Patch, read_polygons
from tests.io.outputs.test_tables import random_table

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")

SLIDE = "TCGA-A1-A0SB-01Z-00-DX1.3FE1B2A9-4E2B-4A4B-9E7C-4A0D3C1E2F00"  # a TCGA id: more than one SHA-1 block
TILE = 256  # level-0 px per tile core in these tables


def tile_tables(rng: np.random.Generator, grid: int = 4, per_tile: int = 40, scale: float = 1.0) -> list[pa.Table]:
    """Tiles in raster order, each with nuclei (irregular polygons of 6-20 vertices, radius 4-12
    px) whose centroids lie in its core, as the segmentation writes them."""
    tables, first = [], 1
    for row in range(grid):
        for col in range(grid):
            cx = (col + rng.random(per_tile)) * TILE
            cy = (row + rng.random(per_tile)) * TILE
            k = rng.integers(6, 21, size=per_tile)
            polys = []
            for x, y, n in zip(cx, cy, k, strict=True):
                angle = np.sort(rng.random(n)) * 2 * np.pi
                radius = rng.uniform(4, 12) * rng.uniform(0.8, 1.2, n)
                xy = np.stack([x + radius * np.cos(angle), y + radius * np.sin(angle)], axis=1)
                polys.append((np.round(xy * 2) / 2 * scale).ravel())  # half-pixel vertices, as traced
            offsets = np.r_[0, np.cumsum([len(p) for p in polys])]
            area = rng.uniform(50, 400, per_tile)
            tables.append(
                pa.table(
                    {
                        "id": pa.array(np.arange(first, first + per_tile, dtype=np.uint32)),
                        "centroid_x": cx * scale,
                        "centroid_y": cy * scale,
                        "area_px": area,
                        "area_um2": area * 0.0625,
                        "perimeter_px": rng.uniform(20, 80, per_tile),
                        "eccentricity": rng.random(per_tile),
                        "mean_haematoxylin": rng.random(per_tile),
                        "polygon": pa.ListArray.from_arrays(
                            pa.array(offsets, pa.int32()), pa.array(np.concatenate(polys))
                        ),
                    },
                    schema=NUCLEI_SCHEMA,
                )
            )
            first += per_tile
    return tables


def outlines(table: pa.Table) -> list[Any]:
    """The shapely Polygon of every row's ``polygon`` column (closed by shapely)."""
    return [shapely.Polygon(np.asarray(p).reshape(-1, 2)) for p in table.column("polygon").to_pylist()]


@pytest.mark.parametrize("scale", [1.0, 1.996])  # 40x slides; a 20x slide's coordinates (not half-pixels)
def test_geoparquet_reads_in_geopandas_with_its_columns_kept(tmp_path: Path, scale: float) -> None:
    tables = tile_tables(np.random.default_rng(1), scale=scale)
    tables.append(random_table(np.random.default_rng(2), 30, 10_000, scale))  # awkward numbers
    write_nucleus_tables(iter(tables), tmp_path, SLIDE, ["parquet"])
    path = tmp_path / "nuclei.parquet"

    gdf = gpd.read_parquet(path)
    written = pa.concat_tables(tables)
    assert list(gdf.columns) == GEOPARQUET_SCHEMA.names[:-1]  # the outline stored once; geopandas hides bbox
    assert "polygon" not in GEOPARQUET_SCHEMA.names
    assert gdf.geometry.name == "geometry" and gdf.crs is None  # level-0 pixels: no CRS
    assert set(gdf.geom_type) == {"Polygon"}
    expected = outlines(written)
    assert all(shapely.equals_exact(a, b, tolerance=0) for a, b in zip(gdf.geometry, expected, strict=True))
    np.testing.assert_array_equal(gdf["id"].to_numpy(), written.column("id").to_numpy())

    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["crs"] is None and column["geometry_types"] == ["Polygon"]
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    # each box holds its outline, within one float32 step
    bounds = shapely.bounds(np.array(expected))
    box = pq.read_table(path, columns=["bbox"]).column("bbox").combine_chunks()
    for i, name in enumerate(("xmin", "ymin", "xmax", "ymax")):
        value = box.field(name).to_numpy().astype(np.float64)
        inside = value <= bounds[:, i] if i < 2 else value >= bounds[:, i]
        assert inside.all(), name
        assert np.all(np.abs(value - bounds[:, i]) <= np.abs(np.spacing(np.float32(bounds[:, i]))) * 2)


def test_outline_of_fewer_than_three_vertices_is_an_empty_polygon(tmp_path: Path) -> None:
    table = random_table(np.random.default_rng(3), 3, 1, 1.0)
    short = pa.ListArray.from_arrays(pa.array([0, 8, 12, 12], pa.int32()), pa.array(np.arange(12.0)))
    table = table.set_column(8, "polygon", short)
    write_nucleus_tables(iter([table]), tmp_path, SLIDE, ["parquet"])
    gdf = gpd.read_parquet(tmp_path / "nuclei.parquet")
    assert [g.is_empty for g in gdf.geometry] == [False, True, True]
    assert gdf.geometry.iloc[0].equals(shapely.Polygon([(0, 1), (2, 3), (4, 5), (6, 7)]))


def region_filter(x: float, y: float, w: float, h: float) -> pc.Expression:
    b = [pc.field("bbox", n) for n in ("xmin", "ymin", "xmax", "ymax")]
    return (b[2] >= x) & (b[0] < x + w) & (b[3] >= y) & (b[1] < y + h)


def test_bbox_query_reads_only_the_overlapping_tiles(tmp_path: Path) -> None:
    tables = tile_tables(np.random.default_rng(4))
    write_nucleus_tables(iter(tables), tmp_path, SLIDE, ["parquet"])
    path = tmp_path / "nuclei.parquet"
    assert pq.ParquetFile(path).num_row_groups == len(tables)  # one row group per tile, in tile order
    written = pa.concat_tables(tables)
    bounds = shapely.bounds(np.array(outlines(written)))
    ids = written.column("id").to_numpy()
    dataset = pads.dataset(path, format="parquet")
    for x, y, w, h in [(300, 300, 100, 100), (250, 10, 20, 500), (0, 0, 1024, 1024), (5000, 5000, 10, 10)]:
        expr = region_filter(x, y, w, h)
        found = dataset.to_table(filter=expr, columns=["id"]).column("id").to_numpy()
        truth = ids[(bounds[:, 2] >= x) & (bounds[:, 0] < x + w) & (bounds[:, 3] >= y) & (bounds[:, 1] < y + h)]
        assert set(found) == set(truth) and len(found) == len(truth)
        if len(truth):  # geopandas reads the same region through the bbox covering
            region = gpd.read_parquet(path, bbox=(x, y, x + w, y + h), columns=["id", "geometry"])
            assert set(region["id"]) >= set(truth)
        # row groups whose bbox statistics cannot match are skipped without being read
        groups = [g for f in dataset.get_fragments() for g in f.split_by_row_group(filter=expr)]
        reach = 12 * 1.2 + 1  # largest nucleus radius here: a box reaches this far out of its tile
        tiles_touched = {
            (r, c)
            for r in range(4)
            for c in range(4)
            if c * TILE - reach < x + w
            and (c + 1) * TILE + reach > x
            and r * TILE - reach < y + h
            and (r + 1) * TILE + reach > y
        }
        assert len(groups) <= len(tiles_touched) < len(tables) or (x, w) == (0, 1024)


def test_qc_patches_draw_every_nucleus_that_reaches_into_them(tmp_path: Path) -> None:
    tables = tile_tables(np.random.default_rng(5))
    write_nucleus_tables(iter(tables), tmp_path, SLIDE, ["parquet"])
    written = pa.concat_tables(tables)
    bounds = shapely.bounds(np.array(outlines(written)))
    patches = [Patch(0, 100, 100, 64, 64), Patch(1, 500, 20, 64, 64), Patch(2, 960, 960, 64, 64)]
    drawn = read_polygons(tmp_path / "nuclei.parquet", patches, reach_px=96.0)
    for p, polys in zip(patches, drawn, strict=True):
        touch = (bounds[:, 2] >= p.x) & (bounds[:, 0] < p.x + p.w) & (bounds[:, 3] >= p.y) & (bounds[:, 1] < p.y + p.h)
        assert len(polys) == touch.sum() > 0
        assert sorted(map(len, polys)) == sorted(
            len(q) // 2 for q, t in zip(written.column("polygon").to_pylist(), touch, strict=True) if t
        )
    # a table written before the bbox column: centroids widened by the reach
    pq.write_table(written, tmp_path / "old.parquet")
    old = read_polygons(tmp_path / "old.parquet", patches, reach_px=96.0)
    assert all(len(o) >= len(n) for o, n in zip(old, drawn, strict=True))
    # a table written with the outline twice (polygon and geometry): the same outlines
    write_previous_layout(tables, tmp_path / "twice.parquet")
    twice = read_polygons(tmp_path / "twice.parquet", patches, reach_px=96.0)
    for a, b in zip(twice, drawn, strict=True):
        assert len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def write_previous_layout(tables: list[pa.Table], path: Path) -> None:
    """nuclei.parquet as the previous version wrote it: every column of the tables (``polygon``
    included), then ``geometry`` and ``bbox``, one row group per tile."""
    writer = None
    for table in tables:
        values, offsets = list_parts(table.column("polygon"))
        cx, cy = table.column("centroid_x").to_numpy(), table.column("centroid_y").to_numpy()
        full = table.append_column("geometry", polygon_wkb(values, offsets))
        full = full.append_column("bbox", polygon_bbox(values, offsets, cx, cy))
        schema = full.schema.with_metadata({b"geo": json.dumps(geo_metadata()).encode()})
        writer = writer or pq.ParquetWriter(path, schema, compression="zstd")
        writer.write_table(full, row_group_size=max(table.num_rows, 1))
    assert writer is not None
    writer.close()


def test_wkb_outlines_read_back_as_written(tmp_path: Path) -> None:
    """The outline column read back from ``geometry`` equals the one written, value for value,
    for awkward numbers and for outlines too short to be a polygon (read back empty)."""
    table = random_table(np.random.default_rng(8), 40, 1, 1.996)
    values, offsets = list_parts(table.column("polygon"))
    assert wkb_polygons(polygon_wkb(values, offsets)).equals(table.column("polygon").combine_chunks())
    short = pa.ListArray.from_arrays(pa.array([0, 8, 12, 12, 14], pa.int32()), pa.array(np.arange(14.0)))
    wkb = polygon_wkb(np.arange(14.0), np.array([0, 8, 12, 12, 14]))
    assert wkb_polygons(wkb).to_pylist() == [short.to_pylist()[0], [], [], []]
    assert wkb_polygons(wkb.slice(1)).to_pylist() == [[], [], []]
    with pytest.raises(ValueError, match="x.parquet: the geometry of row 1 is not"):
        wkb_polygons(pa.array([wkb[0].as_py(), b"\x01\x01\x00\x00\x00" + bytes(16)], pa.binary()), "x.parquet")


def test_tables_of_either_layout_read_as_the_nucleus_schema(tmp_path: Path) -> None:
    tables = tile_tables(np.random.default_rng(9), grid=2)
    write_nucleus_tables(iter(tables), tmp_path, SLIDE, ["parquet"])
    write_previous_layout(tables, tmp_path / "previous.parquet")
    for name in ("nuclei.parquet", "previous.parquet"):
        file = pq.ParquetFile(tmp_path / name)
        assert file.num_row_groups == len(tables)
        for i, table in enumerate(tables):
            assert nucleus_row_group(file, i).equals(table), (name, i)
    assert pq.ParquetFile(tmp_path / "nuclei.parquet").metadata.num_columns < file.metadata.num_columns


def check_qupath_feature(feature: dict[str, Any]) -> None:
    """A GeoJSON Feature as QuPath (v0.4 on) reads and writes objects: ``id`` a UUID string;
    ``geometry`` a GeoJSON geometry; ``properties.objectType`` one of QuPath's object types;
    ``classification`` an object with a ``name`` (and optionally an RGB ``color``);
    ``measurements`` an object of name → number."""
    assert feature["type"] == "Feature"
    assert str(uuid.UUID(feature["id"])) == feature["id"]
    geometry = feature["geometry"]
    assert geometry["type"] in ("Polygon", "Point")
    for ring in geometry["coordinates"] if geometry["type"] == "Polygon" else [[geometry["coordinates"]] * 4]:
        assert len(ring) >= 4 and ring[0] == ring[-1]
        assert all(len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in ring)
    props = feature["properties"]
    assert props["objectType"] in {"annotation", "detection", "cell", "tile", "tmaCore"}
    classification = props["classification"]
    assert isinstance(classification["name"], str) and set(classification) <= {"name", "names", "color"}
    measurements = props["measurements"]
    assert isinstance(measurements, dict) and measurements
    assert all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in measurements.items())


def test_geojson_follows_qupaths_object_format_with_stable_uuids(tmp_path: Path) -> None:
    tables = tile_tables(np.random.default_rng(6), grid=2)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        write_nucleus_tables(iter(tables), tmp_path / run, SLIDE, ["geojson"])
    data = json.loads((tmp_path / "a" / "nuclei.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    written = pa.concat_tables(tables)
    assert len(features) == written.num_rows
    for f in features:
        check_qupath_feature(f)
    ids = [f["properties"]["measurements"][NUCLEUS_ID_MEASUREMENT] for f in features]
    assert ids == written.column("id").to_pylist()
    uuids = [f["id"] for f in features]
    assert uuids == [str(uuid.uuid5(NUCLEUS_UUID_NAMESPACE, f"{SLIDE}/{i}")) for i in ids]
    assert len(set(uuids)) == len(uuids) and all(uuid.UUID(u).version == 5 for u in uuids)
    again = json.loads((tmp_path / "b" / "nuclei.geojson").read_text())["features"]
    assert [f["id"] for f in again] == uuids  # stable: the same nucleus keeps its id
    (tmp_path / "c").mkdir()
    write_nucleus_tables(iter(tables), tmp_path / "c", "another-slide", ["geojson"])
    other = json.loads((tmp_path / "c" / "nuclei.geojson").read_text())["features"]
    assert not set(f["id"] for f in other) & set(uuids)  # unique across slides

    # the lighter variant: the same detections, each a point at its centroid
    write_nucleus_tables(iter(tables), tmp_path / "a", SLIDE, ["geojson-centroids"])
    points = json.loads((tmp_path / "a" / "nuclei_centroids.geojson").read_text())["features"]
    for f in points:
        check_qupath_feature(f)
    assert [f["id"] for f in points] == uuids
    xy = np.array([f["geometry"]["coordinates"] for f in points])
    np.testing.assert_allclose(xy[:, 0], written.column("centroid_x").to_numpy(), atol=0.05)
    np.testing.assert_allclose(xy[:, 1], written.column("centroid_y").to_numpy(), atol=0.05)
    assert [f["properties"] for f in points] == [f["properties"] for f in features]
    size = (tmp_path / "a" / "nuclei_centroids.geojson").stat().st_size
    assert size < 0.7 * (tmp_path / "a" / "nuclei.geojson").stat().st_size  # outlines of 6-20 vertices here


def published_slide(out: Path, slide_id: str, tables: list[pa.Table], status: str = "ok") -> Path:
    folder = out / "slides" / slide_id
    folder.mkdir(parents=True)
    if status == "ok":
        write_nucleus_tables(iter(tables), folder, slide_id, ["parquet"])
    (folder / "stats.json").write_text(json.dumps({"slide_id": slide_id, "status": status, "error": "unreadable"}))
    return folder


def test_export_writes_what_a_run_writes_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tables = tile_tables(np.random.default_rng(7), grid=3)
    out = tmp_path / "out"
    folder = published_slide(out, SLIDE, tables)
    published_slide(out, "S2", tables[:2])
    (tmp_path / "run").mkdir()
    write_nucleus_tables(iter(tables), tmp_path / "run", SLIDE, ["csv", "geojson"])  # what a run writes

    assert export_main(["geojson", str(out), "--slides", SLIDE]) == 0
    assert export_main(["csv", str(out)]) == 0
    for name in ("nuclei.geojson", "nuclei.csv"):
        assert (folder / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name
    assert (out / "slides" / "S2" / "nuclei.csv").exists() and not (out / "slides" / "S2" / "nuclei.geojson").exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no scratch left behind

    published_slide(out, "S3", [], status="failed")
    capsys.readouterr()
    assert export_main(["geojson", str(out)]) == 1  # a failed slide has no table: named, the others written
    assert "S3: not written: it did not finish (failed: unreadable)" in capsys.readouterr().err
    assert export_main(["geojson", str(out), "--slides", "nope"]) == 2
    assert "holds no slide nope" in capsys.readouterr().err
    assert export_main(["csv", str(tmp_path / "missing")]) == 2

    # a slide published by the previous version (the outline twice): the same files
    old = out / "slides" / "previous"
    old.mkdir()
    write_previous_layout(tables, old / "nuclei.parquet")
    (old / "stats.json").write_text(json.dumps({"slide_id": SLIDE, "status": "ok", "error": None}))
    assert export_main(["csv", str(out), "--slides", "previous"]) == 0
    assert export_main(["geojson", str(out), "--slides", "previous"]) == 0
    for name in ("nuclei.geojson", "nuclei.csv"):
        assert (old / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name


def test_duckdb_reads_the_outlines_as_geometry(tmp_path: Path) -> None:
    """DuckDB (the dev extra; not needed to run): ``geometry`` typed GEOMETRY, every row, and a
    one-row-group region query on the bbox covering answering as pyarrow does."""
    duckdb = pytest.importorskip("duckdb")
    tables = tile_tables(np.random.default_rng(10), grid=2)
    write_nucleus_tables(iter([pa.concat_tables(tables)]), tmp_path, SLIDE, ["parquet"])
    path = tmp_path / "nuclei.parquet"
    con = duckdb.connect()
    assert con.execute(f"SELECT typeof(geometry) FROM '{path}' LIMIT 1").fetchone() == ("GEOMETRY",)
    assert con.execute(f"SELECT count(*) FROM '{path}'").fetchone() == (sum(t.num_rows for t in tables),)
    query = f"SELECT count(*) FROM '{path}' WHERE bbox.xmax >= 100 AND bbox.xmin < 300"
    expected = pads.dataset(str(path)).to_table(filter=region_filter(100, -1e9, 200, 2e9)).num_rows
    assert con.execute(query).fetchone() == (expected,)
