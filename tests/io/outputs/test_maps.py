"""maps.zarr as OME-NGFF 0.5 labels: a sharded multiscale pyramid that ome-zarr-py's reader
(the one behind napari-ome-zarr) opens with the slide's scale, level 0 unchanged by sharding
and by assembly tasks running at once."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from pipeline.config import Config
from pipeline.io.outputs.maps import (
    PYRAMID_TOP_PX,
    build_pyramid,
    create_maps,
    open_labels,
    open_maps,
    pyramid_shapes,
    shard_tiles,
)
from pipeline.manifest import SlideEntry
from pipeline.slide import (
    assemble_labels,
    assembly_bands,
    batches,
    check_slide_scale,
    plan_slide,
    process_slide_inline,
    reduce_slide,
    segment_tiles,
)


def stored_files(array_dir: Path) -> list[Path]:
    return [p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json"]


def test_pyramid_levels_take_every_second_pixel_one_shard_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    height, width, chunk, shard = 2600, 2100, 128, 512
    ids = rng.integers(0, 50_000, size=(-(-height // 8), -(-width // 8)), dtype=np.uint32)
    labels = np.kron(ids, np.ones((8, 8), dtype=np.uint32))[:height, :width]
    labels[:700, :] = 0  # background: its shards are never written
    probs = rng.integers(0, 256, size=(2, height, width), dtype=np.uint8)
    create_maps(tmp_path, width, height, 0.25, chunk, shard, probabilities=True)
    maps = open_maps(tmp_path)
    maps["labels/0"][:] = labels
    maps["probabilities/0"][:] = probs
    build_pyramid(tmp_path)

    shapes = pyramid_shapes(height, width)
    assert len(shapes) == 3 and max(shapes[-1]) <= PYRAMID_TOP_PX < max(shapes[-2])
    for k, shape in enumerate(shapes):
        level = open_labels(tmp_path, k)
        assert level.shape == shape and level.dtype == np.uint32
        np.testing.assert_array_equal(level[:], labels[:: 2**k, :: 2**k])  # ids stay ids: no blending
        np.testing.assert_array_equal(maps[f"probabilities/{k}"][:], probs[:, :: 2**k, :: 2**k])
    # one file per non-empty shard, not per chunk: rows of shards below the background band only
    level0 = tmp_path / "maps.zarr" / "labels" / "0"
    written_rows = range(700 // shard, -(-height // shard))
    assert len(stored_files(level0)) == len(written_rows) * -(-width // shard)
    assert len(stored_files(level0)) < (height // chunk) * (width // chunk) / 10


def test_a_shard_is_whole_tile_cores() -> None:
    assert shard_tiles(1024, 4096) == 4 and shard_tiles(1013, 4096) == 4 and shard_tiles(8192, 4096) == 1


@pytest.fixture(scope="module")
def ome_run(tmp_path_factory: pytest.TempPathFactory, synthetic_slide, blob_model) -> Path:
    """The synthetic slide (1100×900 px at 0.25 µm/px) with probabilities and shards of 2×2 tile cores."""
    path, _ = synthetic_slide
    out = tmp_path_factory.mktemp("ome")
    config = Config(model=str(blob_model), tile_px=256, map_shard_px=512, save_probabilities=True)
    process_slide_inline(SlideEntry(path.stem, path), str(out), config)
    return out / "slides" / path.stem


def test_ome_zarr_reader_opens_the_labels_as_a_multiscale_label_image(ome_run: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    stats = json.loads((ome_run / "stats.json").read_text())
    location = parse_url(str(ome_run / "maps.zarr"))
    assert location is not None and location.version == "0.5"
    nodes = [n for n in Reader(location)() if n.load(Label)]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.load(Multiscales) is not None and node.metadata["name"] == "labels"
    assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"]
    assert {a["unit"] for a in node.metadata["axes"]} == {"micrometer"}
    shapes = pyramid_shapes(stats["height"], stats["width"])
    assert [d.shape for d in node.data] == shapes and len(shapes) == 2  # 1100 px → 550 px
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[stats["mpp"] * 2**k] * 2 for k in range(len(shapes))]
    # the reader's level 0 is the label map: ids of nuclei.parquet
    level0 = np.asarray(node.data[0])
    ids = pq.read_table(ome_run / "nuclei.parquet", columns=["id"]).column(0).to_numpy()
    assert set(np.unique(level0[level0 > 0])) == set(ids)
    np.testing.assert_array_equal(np.asarray(node.data[1]), level0[::2, ::2])


def test_probabilities_are_a_multiscale_image_with_named_channels(ome_run: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    stats = json.loads((ome_run / "stats.json").read_text())
    location = parse_url(str(ome_run / "maps.zarr" / "probabilities"))
    assert location is not None
    node = next(iter(Reader(location)()))
    assert node.load(Multiscales) is not None
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.metadata["channel_names"] == ["centre", "material"]
    assert node.data[0].shape == (2, stats["height"], stats["width"]) and node.data[0].dtype == np.uint8
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[1] == [1.0, stats["mpp"] * 2, stats["mpp"] * 2]
    material = np.asarray(node.data[0][1])
    labels = open_labels(ome_run)[:]
    assert material[labels > 0].mean() > material[labels == 0].mean() + 100  # nuclei are where material is


def test_maps_validate_as_ngff_0_5(ome_run: Path) -> None:
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    root = zarr.open_group(str(ome_run / "maps.zarr"), mode="r")
    assert Labels.from_zarr(root).attributes.ome.labels == ["labels"]
    ImageLabel.from_zarr(root["labels"])
    Image.from_zarr(root["probabilities"])


def test_assembly_tasks_at_once_write_the_same_labels(
    ome_run: Path, tmp_path: Path, synthetic_slide, blob_model
) -> None:
    """Bands are whole rows of shards: assembly tasks running at the same time, each on its own
    band, give level 0 exactly as one task does (with other shards, too)."""
    path, _ = synthetic_slide
    config = Config(model=str(blob_model), tile_px=256, map_shard_px=256)
    plan = plan_slide(SlideEntry(path.stem, path), str(tmp_path), config)
    summaries = [segment_tiles(plan, b) for b in batches(plan.tiles, 2)]
    bands = assembly_bands(plan, 1)
    assert len(bands) == plan.grid.n_rows > 1
    with ThreadPoolExecutor(len(bands)) as pool:
        assembled = list(pool.map(lambda band: assemble_labels(plan, band, summaries), bands))
    reduce_slide(plan, summaries, assembled, check_slide_scale(plan))
    folder = tmp_path / "slides" / path.stem
    np.testing.assert_array_equal(open_labels(folder)[:], open_labels(ome_run)[:])
    np.testing.assert_array_equal(open_labels(folder, 1)[:], open_labels(ome_run, 1)[:])
    # bands of one shard row each when the shard is 2×2 cores: never a shard split between bands
    two = plan_slide(SlideEntry(path.stem, path), str(tmp_path / "two"), config.replace(map_shard_px=512))
    rows = [{r // 2 for r, _ in band} for band in assembly_bands(two, 1)]
    assert all(len(r) == 1 for r in rows) and len(rows) == len({min(r) for r in rows})


def test_tile_label_windows_are_16_bit_and_32_bit_ones_assemble_the_same(
    ome_run: Path, tmp_path: Path, synthetic_slide, blob_model
) -> None:
    """A tile's scratch label window holds its local ids in 16 bits (half the memory per window
    the assembly keeps); 32-bit windows (a tile of more than 65,535 nuclei, or a working folder
    written before) assemble to the same labels."""
    import numcodecs

    from pipeline.slide.work import tile_file

    path, _ = synthetic_slide
    config = Config(model=str(blob_model), tile_px=256)
    plan = plan_slide(SlideEntry(path.stem, path), str(tmp_path), config)
    summaries = [segment_tiles(plan, b) for b in batches(plan.tiles, 2)]
    codec, side = numcodecs.Zstd(), plan.grid.extent0
    windows = [tile_file(plan, tile, ".labels.zst") for tile in plan.tiles]
    assert windows and all(w.exists() for w in windows)
    for window in windows:
        raw = codec.decode(window.read_bytes())
        assert len(raw) == 2 * side * side  # 16-bit
        wide = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32)
        window.write_bytes(codec.encode(wide))
    assembled = [assemble_labels(plan, band, summaries) for band in assembly_bands(plan, 8)]
    reduce_slide(plan, summaries, assembled, check_slide_scale(plan))
    np.testing.assert_array_equal(open_labels(tmp_path / "slides" / path.stem)[:], open_labels(ome_run)[:])


def test_generated_label_windows_tile_the_same_map() -> None:
    """The benchmark's label map is made window by window: windows agree where they meet."""
    from pipeline.testing import synthetic_label_region

    whole = synthetic_label_region(700, 500, (0, 0, 700, 500), seed=4)
    corners = [(x0, y0) for y0 in (0, 250) for x0 in (0, 350)]
    parts = [synthetic_label_region(700, 500, (x0, y0, x0 + 350, y0 + 250), seed=4) for x0, y0 in corners]
    np.testing.assert_array_equal(np.block([parts[:2], parts[2:]]), whole)
    ids = np.unique(whole[whole > 0])
    assert 200 < len(ids) < 518 and np.all(np.bincount(whole.ravel())[ids] >= np.pi * 5**2 * 0.8)  # whole discs
