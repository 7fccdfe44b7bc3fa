"""The slide pipeline in-process: every nucleus once and whole, whatever the tiling; outputs
as docs/outputs.md describes them; coordinates in level-0 pixels of the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from scipy.spatial import cKDTree

from pipeline.config import Config
from pipeline.io.outputs.parquet import wkb_polygons
from pipeline.manifest import SlideEntry
from pipeline.slide import process_slide_inline
from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff


def run_inline(slide: Path, out: Path, model: Path, **cfg: object) -> dict:
    config = Config(model=str(model), **cfg)  # type: ignore[arg-type]
    return process_slide_inline(SlideEntry(slide.stem, slide), str(out), config)


def match_rate(a: np.ndarray, b: np.ndarray, radius: float) -> float:
    """Share of points in ``a`` with a point of ``b`` within ``radius``."""
    if len(a) == 0:
        return 0.0
    d, _ = cKDTree(b).query(a)
    return float((d <= radius).mean())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synthetic_slide, blob_model) -> dict[int, Path]:
    path, _ = synthetic_slide
    out = {}
    for tile in (256, 384):
        folder = tmp_path_factory.mktemp(f"tile{tile}")
        run_inline(path, folder, blob_model, tile_px=tile, write_csv=True, write_geojson=True)
        out[tile] = folder / "slides" / path.stem
    return out


def test_every_true_nucleus_found_exactly_once(runs, synthetic_slide) -> None:
    _, truth = synthetic_slide
    table = pq.read_table(runs[256] / "nuclei.parquet").to_pandas()
    found = table[["centroid_x", "centroid_y"]].to_numpy()
    true = np.array([(n.x, n.y) for n in truth])
    assert match_rate(true, found, 2.0) >= 0.99
    assert match_rate(found, true, 2.0) >= 0.99
    # no duplicates: no two detections on the same nucleus
    pairs = cKDTree(found).query_pairs(4.0)
    assert len(pairs) == 0


def test_tile_size_does_not_change_the_nuclei(runs) -> None:
    a = zarr.open_array(str(runs[256] / "maps.zarr" / "labels" / "0"), mode="r")[:]
    b = zarr.open_array(str(runs[384] / "maps.zarr" / "labels" / "0"), mode="r")[:]
    ids_a = np.unique(a[a > 0])
    # for each nucleus of run A: IoU with the label of run B it overlaps most
    ious = []
    for i in ids_a:
        mask = a == i
        overlap = b[mask]
        overlap = overlap[overlap > 0]
        if overlap.size == 0:
            ious.append(0.0)
            continue
        j = np.bincount(overlap).argmax()
        other = b == j
        ious.append((mask & other).sum() / (mask | other).sum())
    ious = np.array(ious)
    assert (ious >= 0.9).mean() >= 0.99
    assert len(np.unique(b[b > 0])) == pytest.approx(len(ids_a), abs=len(ids_a) * 0.01)


def test_tile_size_does_not_change_a_resampled_slide(tmp_path: Path, blob_model) -> None:
    """A slide scanned at 0.2527 µm/px (Aperio's 40x) is resampled to the model's 0.25: every
    tile samples the same slide-wide grid, so the tiling changes no nucleus."""
    image, _ = synthetic_slide_image(1100, 900, seed=3)
    slide = write_pyramidal_tiff(tmp_path / "aperio40x.svs", image, mpp=0.2527, compression="jpeg")
    maps = []
    for tile in (256, 384):
        run_inline(slide, tmp_path / f"tile{tile}", blob_model, tile_px=tile)
        folder = tmp_path / f"tile{tile}" / "slides" / slide.stem
        maps.append(zarr.open_array(str(folder / "maps.zarr" / "labels" / "0"), mode="r")[:])
    a, b = maps
    assert len(np.unique(a)) > 500
    same = [np.array_equal(a == i, b == b[a == i][0]) for i in np.unique(a[a > 0])]
    assert np.mean(same) >= 0.995


def test_outputs_follow_the_contract(runs) -> None:
    folder = runs[256]
    stats = json.loads((folder / "stats.json").read_text())
    table = pq.read_table(folder / "nuclei.parquet")
    assert stats["status"] == "ok" and stats["n_nuclei"] == table.num_rows > 500
    for key in (
        "slide_id",
        "cancer_type",
        "width",
        "height",
        "mpp",
        "tissue_mm2",
        "area_mean_um2",
        "area_std_um2",
        "area_mean_px40x",
        "area_std_px40x",
        "nuclei_per_mm2",
        "n_tiles",
        "seconds",
        "model_sha256",
    ):
        assert key in stats
    assert table.column_names == [
        "id",
        "centroid_x",
        "centroid_y",
        "area_px",
        "area_um2",
        "perimeter_px",
        "eccentricity",
        "mean_haematoxylin",
        "geometry",
        "bbox",
    ]
    ids = table.column("id").to_numpy()
    assert sorted(ids) == list(range(1, len(ids) + 1))
    # the paper's CSV
    lines = (folder / "nuclei.csv").read_text().splitlines()
    assert lines[0] == "AreaInPixels,PhysicalSize,Polygon" and len(lines) == len(ids) + 1
    area, size, poly = lines[1].split(",")
    assert poly.startswith("[") and poly.endswith("]") and len(poly[1:-1].split(":")) % 2 == 0
    # QuPath GeoJSON
    gj = json.loads((folder / "nuclei.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(ids)
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and gj["features"][0]["properties"]["objectType"] == "detection"
    # label map: uint32, chunked by the tile core, ids = table ids, areas agree
    labels = zarr.open_array(str(folder / "maps.zarr" / "labels" / "0"), mode="r")
    assert labels.dtype == np.uint32 and labels.chunks == (stats["tile_core_px"],) * 2
    lab = labels[:]
    counts = np.bincount(lab.ravel(), minlength=len(ids) + 1)[1:]
    assert set(np.unique(lab[lab > 0])) == set(ids)
    area_px = table.column("area_px").to_numpy()
    assert np.median(np.abs(counts - area_px) / area_px) < 0.02
    # nothing left behind
    assert not list(folder.parent.glob(".*"))
    assert not (folder / "tiles").exists()


def test_20x_slide_is_resampled_and_reported_in_level0_pixels(tmp_path: Path, blob_model: Path) -> None:
    image, truth = synthetic_slide_image(600, 500, seed=9, radius=(2.6, 4.0), spacing=14)
    path = write_pyramidal_tiff(tmp_path / "x20.svs", image, mpp=0.5, compression="zlib")
    stats = run_inline(path, tmp_path / "out", blob_model, tile_px=256)
    assert stats["mpp"] == pytest.approx(0.5) and stats["tile_core_px"] == 128
    table = pq.read_table(tmp_path / "out" / "slides" / "x20" / "nuclei.parquet").to_pandas()
    found = table[["centroid_x", "centroid_y"]].to_numpy()
    true = np.array([(n.x, n.y) for n in truth])
    assert match_rate(true, found, 1.5) >= 0.97
    _, nearest = cKDTree(found).query(true)
    assert np.abs(np.median(found[nearest] - true, axis=0)).max() < 0.25  # no half-pixel shift
    polygon = np.array(wkb_polygons(pa.array(table["geometry"].iloc[:1], pa.binary()))[0].as_py()).reshape(-1, 2)
    assert np.abs(polygon.mean(axis=0) - found[0]).max() < 2.0


def test_stage_seconds_cover_every_stage(runs) -> None:
    """stats.json's stage_seconds account for the whole slide: planning, tissue view, the tiles'
    stages, assembly, the maps' pyramid and the reduce."""
    stats = json.loads((runs[256] / "stats.json").read_text())
    stages = stats["stage_seconds"]
    expected = {"plan", "tissue_view", "scale", "read", "normalise", "infer", "watershed", "features", "write"}
    assert expected | {"assemble", "pyramid", "reduce"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    # one thread here: the stages after planning fit in the slide's seconds (counted from the plan)
    after_plan = sum(v for k, v in stages.items() if k not in ("plan", "tissue_view", "scale"))
    assert 0.5 * stats["seconds"] <= after_plan <= stats["seconds"] + 0.01
