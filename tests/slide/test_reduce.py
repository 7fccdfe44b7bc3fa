"""A slide's reduction (pipeline.slide.reduce): it can run again after a worker died before
publishing, and corrupt tiles are named, left out and flagged, or fail the slide beyond a share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import SlideEntry


def test_reduction_ended_before_publication_can_run_again(
    cohort: Path, blob_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed during a slide's reduction, before the rename that publishes it: the
    scheduler runs the reduction again (with its tile batches, whose results died with the worker),
    and that must find the tiles' scratch files still there (benchmarks/chaos.py: it failed with
    FileNotFoundError, the first attempt having dropped them). The result equals an uninterrupted one."""
    import pipeline.slide.reduce as reduce_module
    from pipeline.config import load_config
    from pipeline.slide import (
        assemble_labels,
        batches,
        check_slide_scale,
        chunks_to_assemble,
        plan_slide,
        reduce_slide,
        segment_tiles,
    )
    from tests.conftest import output_digest

    config = load_config(None, {"model": str(blob_model), "tile_px": 128}, environ={})

    def stages(out: Path):  # type: ignore[no-untyped-def]
        plan = plan_slide(SlideEntry("s0", cohort / "s0.svs"), str(out), config)
        segs = [segment_tiles(plan, b) for b in batches(plan.tiles, config.tiles_per_task)]
        return plan, segs, [assemble_labels(plan, chunks_to_assemble(plan), segs)], check_slide_scale(plan)

    (tmp_path / "clean" / "slides").mkdir(parents=True)
    reduce_slide(*stages(tmp_path / "clean"))
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    plan, segs, assembled, check = stages(out)
    publish = reduce_module.publish_slide

    class WorkerKilled(Exception):
        pass

    def killed_before_the_rename(partial: Path, final: Path) -> None:
        raise WorkerKilled

    monkeypatch.setattr(reduce_module, "publish_slide", killed_before_the_rename)
    with pytest.raises(WorkerKilled):
        reduce_slide(plan, segs, assembled, check)
    monkeypatch.setattr(reduce_module, "publish_slide", publish)
    segs = [segment_tiles(plan, b) for b in batches(plan.tiles, config.tiles_per_task)]  # recomputed
    assembled = [assemble_labels(plan, chunks_to_assemble(plan), segs)]
    reduce_slide(plan, segs, assembled, check)
    assert output_digest(out / "slides" / "s0") == output_digest(tmp_path / "clean" / "slides" / "s0")
    assert [p.name for p in (out / "slides").iterdir()] == ["s0"]  # no scratch left behind


def _corrupt_tiles(path: Path, indices: list[int]) -> None:
    """Zero the header bytes of level-0 tiles ``indices`` (raster order) of a JPEG TIFF."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        spans = [(page.dataoffsets[i], page.databytecounts[i]) for i in indices]
    data = bytearray(path.read_bytes())
    for offset, _ in spans:
        data[offset + 2 : offset + 40] = bytes(38)  # JPEG tables gone: "Quantization table 0x00 was not defined"
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corrupt_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,024² px pyramidal JPEG slide (4×4 tiles of 256 px at level 0), clean and with one and
    two undecodable level-0 tiles."""
    import shutil

    from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff

    folder = tmp_path_factory.mktemp("corrupt")
    image, _ = synthetic_slide_image(1024, 1024, seed=45)
    write_pyramidal_tiff(folder / "clean.svs", image, mpp=0.25)
    for name, indices in (("one.svs", [5]), ("two.svs", [5, 10])):
        shutil.copy(folder / "clean.svs", folder / name)
        _corrupt_tiles(folder / name, indices)
    return folder


def _reader_stats(path: Path, out: Path, model: Path) -> dict:
    from pipeline.config import load_config
    from pipeline.slide.inline import process_slide_inline

    # tifffile: cuCIM decodes a corrupt JPEG tile without an error (it cannot be told from tissue);
    # no stain normalisation: statistics taken without the tile would move the nuclei compared
    config = load_config(
        None,
        {"model": str(model), "tile_px": 256, "reader": "tifffile", "estimate_scale": False, "stain": "none"},
        environ={},
    )
    return process_slide_inline(SlideEntry(path.stem, path, mpp=0.25), str(out), config)


def test_corrupt_tile_is_named_excluded_and_flagged(corrupt_slides: Path, blob_model: Path, tmp_path: Path) -> None:
    """Before: the slide failed at planning with the decoder's message and no tile named. Now it
    finishes without that tile: listed in stats.json, flagged for the QC, the nuclei away from it
    as in the clean slide."""
    import pyarrow.parquet as pq

    clean = _reader_stats(corrupt_slides / "clean.svs", tmp_path / "clean", blob_model)
    one = _reader_stats(corrupt_slides / "one.svs", tmp_path / "one", blob_model)
    assert clean["status"] == one["status"] == "ok" and clean["unreadable_tiles"] is None
    assert "unreadable_tiles" in one["flags"] and "unreadable_tiles" not in clean["flags"]
    [bad] = one["unreadable_tiles"]
    assert (bad["level"], bad["x"], bad["y"], bad["width"], bad["height"]) == (0, 256, 256, 256, 256)
    assert "Jpeg" in bad["error"] and any("level 0, x 256, y 256" in w for w in one["warnings"])
    # the QC: a note in wsi_qc.csv, and review patches with the tile as glass (not a failed extraction)
    import pandas as pd

    from pipeline.qc import build_qc

    qc = build_qc(tmp_path / "one", report=False)
    row = pd.read_csv(qc / "wsi_qc.csv").iloc[0]
    assert "unreadable_tiles" in row["Flags"], row.to_dict()
    patches = json.loads((qc / "patches" / "one" / "patches.json").read_text())
    assert patches["images"] and "failed" not in patches["note"], patches

    def centroids(out: Path, slide_id: str) -> np.ndarray:
        table = pq.read_table(out / "slides" / slide_id / "nuclei.parquet", columns=["centroid_x", "centroid_y"])
        return np.column_stack([table.column(0).to_numpy(), table.column(1).to_numpy()])

    kept, full = centroids(tmp_path / "one", "one"), centroids(tmp_path / "clean", "clean")
    near = lambda xy: (xy[:, 0] > 256 - 40) & (xy[:, 0] < 512 + 40) & (xy[:, 1] > 256 - 40) & (xy[:, 1] < 512 + 40)  # noqa: E731
    inside = lambda xy: (xy[:, 0] >= 256) & (xy[:, 0] < 512) & (xy[:, 1] >= 256) & (xy[:, 1] < 512)  # noqa: E731
    assert not inside(kept).any()
    # away from it, the clean slide's nuclei are found (the stain statistics, taken without the
    # tile, move a few outlines by a pixel)
    from scipy.spatial import cKDTree

    away = full[~near(full)]
    distance, _ = cKDTree(kept).query(away)
    assert (distance < 1.5).mean() > 0.99 and len(kept) >= 0.85 * len(full)


def test_slide_losing_too_much_to_corrupt_tiles_fails_naming_them(
    corrupt_slides: Path, blob_model: Path, tmp_path: Path
) -> None:
    """Two of 16 tiles (12.5 % of the segmented area) are over what a slide may lose."""
    from pipeline.io.readers import SlideError

    with pytest.raises(SlideError, match=r"level 0, x 256, y 256; level 0, x 512, y 512.*over the 10%"):
        _reader_stats(corrupt_slides / "two.svs", tmp_path / "two", blob_model)
