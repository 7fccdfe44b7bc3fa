"""A slide is segmented at a scale we know or found, with its artifacts excluded, or it fails or
is flagged with a reason: resolution sources, the estimate from the nuclei, refusal of slides too
coarse to segment, and pen ink masked out."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import Config
from pipeline.io.outputs.stats import STATS_FIELDS
from pipeline.io.readers import ArraySlide, SlideError
from pipeline.kernels.stain import reinhard_stats
from pipeline.kernels.tissue import tissue_mask
from pipeline.manifest import SlideEntry
from pipeline.qc import build_qc
from pipeline.runtime import NucleusModel
from pipeline.slide import check_slide_scale, plan_slide, process_slide_inline
from pipeline.slide.scale import estimate_mpp
from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff
from tests.conftest import WSI_FIXTURES, need_shared


def half_size(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)


@pytest.mark.parametrize("factor", [1, 2])
def test_scale_estimated_from_generated_nuclei(blob_model: Path, factor: int) -> None:
    """The same tissue at 0.25 and at 0.5 µm/px, without metadata: the estimate finds each within 20 %."""
    img, _ = synthetic_slide_image(1400, 1200, seed=7, tissue="full")
    if factor == 2:
        img = half_size(img)
    slide = ArraySlide(img, mpp=None)
    tissue = tissue_mask(img)
    found = estimate_mpp(slide, tissue, 1.0, NucleusModel(blob_model), reinhard_stats(img, tissue))
    assert found is not None and found.n_nuclei >= 20
    assert found.mpp == pytest.approx(0.25 * factor, rel=0.2)


def test_no_metadata_runs_at_the_estimate_never_the_default(tmp_path: Path, blob_model: Path) -> None:
    img, _ = synthetic_slide_image(1000, 800, seed=8, tissue="full")
    path = tmp_path / "tile.png"
    Image.fromarray(half_size(img)).save(path)  # a 0.5 µm/px image, no resolution stored
    config = Config(model=str(blob_model))
    with pytest.warns(UserWarning, match="estimated from"):
        stats = process_slide_inline(SlideEntry("t", path), str(tmp_path / "out"), config)
    assert stats["mpp_source"] == "estimate" and stats["mpp"] == pytest.approx(0.5, rel=0.2)
    assert stats["mpp_estimate"] == pytest.approx(stats["mpp"], rel=1e-3) and stats["n_nuclei"] > 50
    assert "mpp_default" not in stats["flags"]


def test_blank_image_falls_back_to_the_default_with_a_flag(tmp_path: Path, blob_model: Path) -> None:
    path = tmp_path / "glass.png"
    Image.fromarray(np.full((300, 300, 3), 240, np.uint8)).save(path)
    with pytest.warns(UserWarning, match="too few nuclei to estimate"):
        stats = process_slide_inline(SlideEntry("g", path), str(tmp_path / "out"), Config(model=str(blob_model)))
    assert stats["mpp_source"] == "default" and "mpp_default" in stats["flags"]


def test_too_coarse_is_refused_with_value_and_source(tmp_path: Path, blob_model: Path) -> None:
    img, _ = synthetic_slide_image(600, 500, seed=2)
    path = write_pyramidal_tiff(tmp_path / "thumb.svs", img, mpp=4.0)
    with pytest.raises(SlideError, match=r"4 µm/px from Aperio MPP is too coarse to segment nuclei \(limit 2.0\)"):
        plan_slide(SlideEntry("thumb", path), str(tmp_path / "out"), Config(model=str(blob_model)))
    with pytest.raises(SlideError, match=r"from manifest mpp column is too coarse .*limit 3.0"):
        plan_slide(
            SlideEntry("thumb", path, mpp=3.5),
            str(tmp_path / "out"),
            Config(model=str(blob_model), max_mpp=3.0, low_resolution_mpp=1.0),
        )


def test_coarse_but_usable_is_flagged_low_resolution(tmp_path: Path, blob_model: Path) -> None:
    img, _ = synthetic_slide_image(800, 700, seed=4)
    path = write_pyramidal_tiff(tmp_path / "s.svs", img, mpp=0.25)
    config = Config(model=str(blob_model), estimate_scale=False)
    with pytest.warns(UserWarning, match="coarser than 0.6"):
        stats = process_slide_inline(SlideEntry("s", path, mpp=0.8), str(tmp_path / "out"), config)
    assert stats["status"] == "ok" and "low_resolution" in stats["flags"] and stats["mpp_source"] == "manifest"


def test_metadata_that_disagrees_with_the_nuclei_is_flagged(tmp_path: Path, blob_model: Path) -> None:
    img, _ = synthetic_slide_image(1000, 900, seed=9, tissue="full")
    path = write_pyramidal_tiff(tmp_path / "wrong.svs", half_size(img), mpp=0.25)  # really 0.5 µm/px
    config = Config(model=str(blob_model), scale_tolerance=1.5)  # a 2x mislabel: within the default's reach
    with pytest.warns(UserWarning, match="estimated from the nuclei"):
        stats = process_slide_inline(SlideEntry("w", path), str(tmp_path / "out"), config)
    assert stats["mpp"] == 0.25 and stats["mpp_source"] == "slide" and stats["mpp_field"] == "Aperio MPP"
    assert "scale_disagreement" in stats["flags"] and stats["mpp_estimate"] == pytest.approx(0.5, rel=0.2)


def test_a_stated_scale_is_checked_beside_the_tiles_with_the_same_outcome(tmp_path: Path, blob_model: Path) -> None:
    """The estimate cannot change the resolution a stated slide is segmented at, so planning
    leaves its cross-check for later (the tiles need not wait for it); the slide's stats end up
    with the same estimate, flag and note as when the check is made during planning."""
    from pipeline.io.readers import open_slide
    from pipeline.slide.plan import scale_check_tissue, slide_seed
    from pipeline.slide.scale import decide_scale

    img, _ = synthetic_slide_image(1000, 900, seed=9, tissue="full")
    path = write_pyramidal_tiff(tmp_path / "wrong.svs", half_size(img), mpp=0.25)  # really 0.5 µm/px
    config = Config(model=str(blob_model), scale_tolerance=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plan = plan_slide(SlideEntry("w", path), str(tmp_path / "plan"), config)
    assert plan.mpp == 0.25 and plan.mpp_estimate is None and plan.scale_check_view is not None
    assert "scale_disagreement" not in plan.flags  # not known yet: the check has not been made
    with pytest.warns(UserWarning, match="estimated from the nuclei"):
        check = check_slide_scale(plan)
    assert check is not None and check.flags == ("scale_disagreement",)
    # the same as the check made at once, during planning, on the same tissue and stain statistics
    model = NucleusModel(blob_model)
    tissue, view_ds = scale_check_tissue(plan)
    with open_slide(path) as slide, pytest.warns(UserWarning):
        at_once = decide_scale(
            "w",
            None,
            slide,
            tissue,
            view_ds,
            model,
            plan.stain,
            estimate=True,
            prefer_estimate=False,
            default_mpp=0.25,
            max_mpp=2.0,
            low_resolution_mpp=0.6,
            tolerance=config.scale_tolerance,
            seed=slide_seed("w"),
        )
    assert at_once.flags == check.flags and at_once.estimate is not None and check.estimate is not None
    assert check.estimate == at_once.estimate and check.warnings == at_once.warnings
    # a run ends with the check's outcome in the slide's stats, and the scratch file gone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        stats = process_slide_inline(SlideEntry("w", path), str(tmp_path / "out"), config)
    assert "scale_disagreement" in stats["flags"] and stats["mpp_estimate"] == pytest.approx(0.5, rel=0.2)
    assert any("estimated from the nuclei" in w for w in stats["warnings"]) and stats["stage_seconds"]["scale"] > 0
    assert not list((tmp_path / "out").rglob("scale_tissue.npy"))
    # prefer_estimate: the estimate decides the resolution, so it is made during planning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        preferred = plan_slide(SlideEntry("w", path), str(tmp_path / "pref"), config.replace(prefer_estimate=True))
    assert preferred.scale_check_view is None and preferred.mpp_source == "estimate"


def test_the_cluster_runs_the_scale_check_beside_the_tiles(tmp_path: Path, blob_model: Path) -> None:
    """On the cluster the check is a task of its own, started before the slide's last tile batch
    ends (not before the first starts), and the reduce puts its outcome in the slide's stats."""
    from distributed import Client, LocalCluster, get_task_stream

    from pipeline.graph import run_slides

    img, _ = synthetic_slide_image(1000, 900, seed=9, tissue="full")
    path = write_pyramidal_tiff(tmp_path / "wrong.svs", half_size(img), mpp=0.25)  # really 0.5 µm/px
    config = Config(model=str(blob_model), tile_px=128, tiles_per_task=1, scale_tolerance=1.5)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client, get_task_stream(client) as stream, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            (outcome,) = run_slides(client, [SlideEntry("w", path)], tmp_path / "out", config)
    assert outcome.status == "ok", outcome.error
    stats = outcome.stats
    assert "scale_disagreement" in stats["flags"] and stats["mpp_estimate"] == pytest.approx(0.5, rel=0.2)
    spans = {}
    for task in stream.data:
        start = min(s["start"] for s in task["startstops"] if s["action"] == "compute")
        stop = max(s["stop"] for s in task["startstops"] if s["action"] == "compute")
        spans.setdefault(task["key"].split("-w-")[0], []).append((start, stop))
    (check,) = spans["check-scale"]
    tiles = spans["segment-tiles"]
    assert len(tiles) > 2 and check[0] < max(stop for _, stop in tiles)


def test_pen_ink_is_masked_and_the_nuclei_beside_it_kept(tmp_path: Path, blob_model: Path) -> None:
    img, truth = synthetic_slide_image(1200, 1000, seed=11, tissue="full")
    stroke = (slice(430, 520), slice(100, 1100))  # a green marker line across the tissue
    img[stroke] = (46, 139, 87)
    path = write_pyramidal_tiff(tmp_path / "inked.svs", img, mpp=0.25)
    stats = process_slide_inline(SlideEntry("inked", path), str(tmp_path / "out"), Config(model=str(blob_model)))
    assert stats["artifact_mm2"]["green_ink"] == pytest.approx(90 * 1000 * 0.25**2 / 1e6, rel=0.35)
    assert "artifacts" in stats["flags"] and "excluded from segmentation" in " ".join(stats["warnings"])
    import pyarrow.parquet as pq

    nuclei = pq.read_table(tmp_path / "out" / "slides" / "inked" / "nuclei.parquet").to_pandas()
    x, y = nuclei["centroid_x"].to_numpy(), nuclei["centroid_y"].to_numpy()
    in_ink = (y >= 430) & (y < 520) & (x >= 100) & (x < 1100)
    assert not in_ink.any()  # no "nucleus" inside the ink
    beside = [n for n in truth if not (400 <= n.y < 550 and 70 <= n.x < 1130)]
    found = sum(1 for n in beside if np.min(np.hypot(x - n.x, y - n.y)) < 4)
    assert found >= 0.95 * len(beside)  # the nuclei next to the stroke are kept


def test_stats_and_qc_columns_for_ok_and_failed_slides(tmp_path: Path, blob_model: Path) -> None:
    from pipeline.io.outputs.publish import publish_failure
    from pipeline.io.outputs.stats import failure_stats

    img, _ = synthetic_slide_image(700, 600, seed=1)
    path = write_pyramidal_tiff(tmp_path / "a.svs", img, mpp=0.25)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        process_slide_inline(SlideEntry("a", path, cancer_type="BRCA"), str(out), Config(model=str(blob_model)))
    publish_failure(
        out,
        "b",
        failure_stats(
            "b",
            "BRCA",
            "b.svs",
            "b.svs: 4.64 µm/px from DICOM ImagedVolumeWidth is too coarse to segment nuclei (limit 2.0)",
        ),
    )
    for sid in ("a", "b"):
        stats = json.loads((out / "slides" / sid / "stats.json").read_text())
        assert list(stats) == list(STATS_FIELDS), sid
    ok = json.loads((out / "slides" / "a" / "stats.json").read_text())
    assert ok["mpp_field"] == "Aperio MPP" and ok["mpp_estimate"] and isinstance(ok["artifact_mm2"], dict)
    qc = build_qc(out, patches="none")
    import pandas as pd

    wsi = pd.read_csv(qc / "wsi_qc.csv", keep_default_na=False).set_index("WSI-ID")
    assert {"MPP", "MPPSource", "MPPEstimate", "Flags", "ArtifactMM2"} <= set(wsi.columns)
    assert wsi.loc["a", "MPPSource"] == "slide: Aperio MPP" and float(wsi.loc["a", "MPP"]) == 0.25
    assert "too coarse" in wsi.loc["b", "Note"]


@pytest.mark.slow
def test_fixture_manifest_with_the_shipped_model(tmp_path: Path) -> None:
    """The real fixtures, as planned by the shipped model (the scale is decided at planning, the
    cross-check of a stated one made beside the tiles): CMU at its own 0.499 µm/px with its
    estimate recorded, the thumbnail-scale DICOM refused with
    value and source, the TCGA slide without MPP never run at the default nor read as 40x."""
    need_shared("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "small_dicom.dcm")
    config = Config(intra_op_threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cmu = plan_slide(SlideEntry("cmu", WSI_FIXTURES / "CMU-1-Small-Region.svs"), str(tmp_path), config)
        check = check_slide_scale(cmu)
        with pytest.raises(SlideError, match=r"4.64 µm/px from DICOM ImagedVolumeWidth is too coarse .*limit 2.0"):
            plan_slide(SlideEntry("dicom", WSI_FIXTURES / "small_dicom.dcm"), str(tmp_path), config)
        tcga = plan_slide(SlideEntry("tcga", WSI_FIXTURES / "tcga-cr-7395-01a-01-ts1.svs"), str(tmp_path), config)
    # metadata wins; the estimate is recorded beside it (its accuracy on held-out images is in
    # benchmarks/RESULTS-scale.md) and flagged when beyond the tolerance
    assert cmu.mpp == pytest.approx(0.499) and cmu.mpp_source == "slide" and cmu.mpp_field == "Aperio MPP"
    assert check is not None and check.estimate is not None
    ratio = check.estimate.mpp / 0.499
    tolerance = config.scale_tolerance
    assert 0.5 < ratio < 2.0 and ("scale_disagreement" in check.flags) == (not 1 / tolerance <= ratio <= tolerance)
    # a ~10x frozen section: estimated coarse and flagged, never read as 40x
    assert tcga.mpp_source == "estimate" and tcga.mpp > 0.6 and "low_resolution" in tcga.flags


@pytest.mark.slow
def test_the_example_slide_is_within_the_per_slide_bound(tmp_path: Path) -> None:
    """The built-in example (CMU-1-Small-Region, 20x skin, its Aperio MPP right) run under its own
    id: its estimate from the nuclei (2.06× its metadata with model 1.3.0, 1.21× with 1.4.0: the sample
    windows fall on dermis, whose thin fibroblast nuclei read small) lies within the per-slide bound,
    so it is not flagged."""
    need_shared("CMU-1-Small-Region.svs")
    config = Config(intra_op_threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no scale warning
        plan = plan_slide(
            SlideEntry("CMU-1-Small-Region", WSI_FIXTURES / "CMU-1-Small-Region.svs"), str(tmp_path), config
        )
        check = check_slide_scale(plan)
    assert check is not None and check.estimate is not None
    assert check.flags == () and check.warnings == ()
    assert 1 / config.scale_tolerance <= check.estimate.mpp / 0.499 <= config.scale_tolerance


def test_the_reference_nucleus_area_belongs_to_the_shipped_model() -> None:
    """The estimate compares a slide's nuclei with the median area the shipped model finds on its
    training images at their true scale: a constant that holds for one model only. A new model
    must come with its own (``benchmarks/scale_estimate.py --calibrate``), or every slide without
    metadata is read at a scale off by the two models' difference."""
    from pipeline.runtime.session import SHIPPED_MODEL, file_sha256
    from pipeline.slide import scale

    assert file_sha256(SHIPPED_MODEL) == scale.REFERENCE_MODEL_SHA256, (
        "the shipped model changed: run `python benchmarks/scale_estimate.py --calibrate` and set "
        "REFERENCE_AREA_PX and REFERENCE_MODEL_SHA256 in pipeline/slide/scale.py"
    )
