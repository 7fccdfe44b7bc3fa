"""The OpenSlide reader: the scanners' own formats are routed to it from their signs, it gives the
same pixels and scale as the other readers on the real fixtures, a generated Hamamatsu VMS slide
reads back as its JPEGs, and without OpenSlide such a slide fails naming the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.readers import (
    SlideError,
    UnreadableRegion,
    choose_reader,
    file_signature,
    low_resolution_view,
    open_slide,
    read_mirrored,
)
from pipeline.io.readers import cucim as cucim_reader
from pipeline.io.readers.cucim import cucim_available
from pipeline.io.readers.openslide import INSTALL, openslide_available
from pipeline.testing import synthetic_slide_image, write_hamamatsu_vms, write_pyramidal_tiff
from tests.conftest import ROOT, SHARED_DATA, WSI_FIXTURES

needs_openslide = pytest.mark.skipif(not openslide_available(), reason=f"OpenSlide is not installed ({INSTALL})")
NDPI = SHARED_DATA / "wsi_fixtures_more" / "hamamatsu_ndpi"
NDPI_FILES = ["test3-DAPI-2-(387).ndpi", "test3-TRITC 2 (560).ndpi"]


def need_ndpi(name: str) -> Path:
    if not (NDPI / name).exists():
        pytest.skip(f"{NDPI / name} is not present")
    return NDPI / name


def regions(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Windows at the origin, inside, across the bottom-right edge and beyond the top-left corner."""
    return [
        (0, 0, min(300, width), min(200, height)),
        (width // 3, height // 3, 257, 129),
        (width - 137, height - 91, 200, 150),
        (-20, -10, 64, 48),
    ]


def other_readers(path: Path) -> list[str]:
    return ["tifffile", *(["cucim"] if cucim_available() and path.suffix == ".svs" else [])]


REAL_FIXTURES = [
    (WSI_FIXTURES, "CMU-1-Small-Region.svs"),
    (WSI_FIXTURES, "small.svs"),
    (WSI_FIXTURES, "tcga-cr-7395-01a-01-ts1.svs"),
    (WSI_FIXTURES, "boxes.tiff"),
    *((NDPI, name) for name in NDPI_FILES),
]


@needs_openslide
@pytest.mark.parametrize("folder, name", REAL_FIXTURES, ids=[n for _, n in REAL_FIXTURES])
def test_openslide_agrees_with_the_other_readers(folder: Path, name: str) -> None:
    """Same levels, pixels (at the origin, inside, at the edge, beyond it) and scale as tifffile
    (and cuCIM where installed). Levels whose downsample is a whole number agree exactly;
    OpenSlide places a region of a level with a fractional one (an odd-sized level: 2.0005, 4.016)
    at a fractional position and interpolates, so there it agrees at the origin and with the
    stored pixels (tifffile) to a few grey levels on average; the pipeline reads such levels only
    for its low-resolution view."""
    path = folder / name
    if not path.exists():
        pytest.skip(f"{path} is not present")
    with open_slide(path, "openslide") as slide:
        for reader in other_readers(path):
            with open_slide(path, reader) as other:
                assert slide.level_dimensions[: len(other.level_dimensions)] == other.level_dimensions
                assert slide.mpp == (pytest.approx(other.mpp, rel=1e-9) if other.mpp else None)
                for level, (w, h) in enumerate(other.level_dimensions):
                    whole = slide.level_downsamples[level] == round(slide.level_downsamples[level])
                    for i, (x, y, rw, rh) in enumerate(regions(w, h)):
                        ours = slide.read_region(x, y, rw, rh, level)
                        theirs = other.read_region(x, y, rw, rh, level)
                        assert ours.shape == (rh, rw, 3) and ours.dtype == np.uint8
                        if whole or i in (0, 3):
                            np.testing.assert_array_equal(ours, theirs, err_msg=f"{reader} level {level} {x},{y}")
                        elif reader == "tifffile":  # the stored pixels (cuCIM rounds such a position its own way)
                            assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 5.0
        if name.endswith(".svs") and slide.mpp:
            assert slide.resolution is not None and slide.resolution.field == "OpenSlide mpp-x (aperio)"


def test_ndpi_is_recognised_and_never_reaches_cucim() -> None:
    """cuCIM cannot open NDPI ("Cannot find a plugin"): with cuCIM installed and no OpenSlide, an
    NDPI slide failed where tifffile reads it."""
    path = need_ndpi(NDPI_FILES[0])
    signature = file_signature(path)
    assert signature.scanner == "Hamamatsu NDPI" and signature.kind == "tiff"
    assert not cucim_reader.claims(signature)
    assert choose_reader(path) == ("openslide" if openslide_available() else "tifffile")


@needs_openslide
def test_ndpi_reads_through_openslide_with_its_scale() -> None:
    path = need_ndpi(NDPI_FILES[0])
    with open_slide(path) as slide:
        assert slide.reader == "openslide"
        assert len(slide.level_dimensions) == 7 and slide.level_dimensions[0] == (3968, 4864)
        assert slide.resolution is not None and slide.resolution.field == "OpenSlide mpp-x (hamamatsu)"
        assert slide.mpp == pytest.approx(1e4 / 43826)  # tiff.XResolution 43,826 px/cm
        view, factor = low_resolution_view(slide, 512)
    assert max(view.shape[:2]) <= 512 and factor == 16


def test_ndpi_reads_through_tifffile_without_openslide(monkeypatch: pytest.MonkeyPatch) -> None:
    path = need_ndpi(NDPI_FILES[0])
    monkeypatch.setitem(sys.modules, "openslide", None)  # `import openslide` fails, as when not installed
    assert not openslide_available()
    with open_slide(path) as slide:
        assert slide.reader == "tifffile" and slide.mpp == pytest.approx(1e4 / 43826)


@pytest.fixture
def vms_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A generated 2×2-file Hamamatsu VMS slide and its level 0 as its JPEGs decode (Pillow)."""
    from PIL import Image

    image, _ = synthetic_slide_image(768, 640, seed=4)
    path = write_hamamatsu_vms(tmp_path / "vms", image, mpp=0.25)
    decoded = [[np.asarray(Image.open(path.parent / f"image_{c}_{r}.jpg")) for c in range(2)] for r in range(2)]
    return path, np.concatenate([np.concatenate(row, axis=1) for row in decoded], axis=0)


@needs_openslide
def test_generated_vms_reads_back_as_its_jpegs(vms_slide: tuple[Path, np.ndarray]) -> None:
    path, level0 = vms_slide
    assert file_signature(path).scanner == "Hamamatsu VMS" and choose_reader(path) == "openslide"
    with open_slide(path) as slide:
        assert slide.reader == "openslide" and slide.level_dimensions[0] == (768, 640)
        assert slide.resolution is not None
        assert slide.resolution.describe() == "0.25 µm/px from OpenSlide mpp-x (hamamatsu)"
        np.testing.assert_array_equal(slide.read_region(0, 0, 768, 640), level0)
        glass = np.pad(level0, ((40, 40), (40, 40), (0, 0)), constant_values=255)
        mirrored = np.pad(level0, ((40, 40), (40, 40), (0, 0)), mode="reflect")
        for x, y, w, h in [(370, 310, 30, 20), (700, 600, 100, 80), (-40, -40, 90, 70), (0, 0, 1, 1)]:
            window = (slice(y + 40, y + 40 + h), slice(x + 40, x + 40 + w))
            np.testing.assert_array_equal(slide.read_region(x, y, w, h), glass[window])  # across files, beyond edges
            np.testing.assert_array_equal(read_mirrored(slide, x, y, w, h), mirrored[window])
        view, factor = low_resolution_view(slide, 200)
        assert max(view.shape[:2]) <= 200 and np.abs(view.astype(float).mean() - level0.mean()) < 2


@needs_openslide
def test_a_truncated_vms_jpeg_is_named_by_its_strips(vms_slide: tuple[Path, np.ndarray]) -> None:
    """The bottom-right JPEG cut at 60 %: its lost strips (384×8 px between restart markers) are
    named, the rest of the slide still reads (OpenSlide's handle is opened again after the error)."""
    path, level0 = vms_slide
    damaged = path.parent / "image_1_1.jpg"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 6 // 10])
    with open_slide(path) as slide:
        with pytest.raises(UnreadableRegion) as unreadable:
            slide.read_region(0, 0, 768, 640)
        tiles = unreadable.value.tiles
        assert {(t.level, t.x, t.width, t.height) for t in tiles} == {(0, 384, 384, 8)}
        assert 320 < min(t.y for t in tiles) and max(t.y for t in tiles) == 632
        assert "OpenSlideError" in tiles[0].error
        np.testing.assert_array_equal(slide.read_region(0, 0, 768, 320), level0[:320])


def test_without_openslide_a_vms_slide_fails_naming_the_extra(
    vms_slide: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = vms_slide
    (tmp_path / "scan.mrxs").write_bytes(b"")
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "Slidedat.ini").write_text("[GENERAL]\n")
    monkeypatch.setitem(sys.modules, "openslide", None)
    assert choose_reader(path) == "openslide"
    with pytest.raises(SlideError) as refused:
        open_slide(path)
    assert str(refused.value) == f"Hamamatsu VMS is read through OpenSlide, which is not installed: {INSTALL}"
    with pytest.raises(SlideError, match=r"^3DHISTECH MIRAX is read through OpenSlide, which is not installed"):
        open_slide(tmp_path / "scan.mrxs")


@needs_openslide
def test_openslide_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    """A MIRAX layout whose index is not one, and a VMS whose JPEG is missing: one-line reasons."""
    (tmp_path / "scan.mrxs").write_bytes(b"")
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "Slidedat.ini").write_text("[GENERAL]\n")
    assert choose_reader(tmp_path / "scan.mrxs") == "openslide"
    with pytest.raises(SlideError, match=r"^OpenSlide could not open the file: OpenSlideError: "):
        open_slide(tmp_path / "scan.mrxs")
    image, _ = synthetic_slide_image(256, 256, seed=1)
    vms = write_hamamatsu_vms(tmp_path / "vms", image, mpp=0.25)
    (vms.parent / "image_1_1.jpg").unlink()
    with pytest.raises(SlideError, match=r"^OpenSlide could not open the file: .*image_1_1\.jpg"):
        open_slide(vms)


@pytest.mark.parametrize(
    "scanner, tags",
    [
        ("Hamamatsu NDPI", {"extratags": [(65420, "I", 1, 1, True), (271, "s", 0, "Hamamatsu", True)]}),
        (
            "Leica SCN",
            {
                "description": '<?xml version="1.0"?><scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01"></scn>'
            },
        ),
        ("Ventana BIF", {"software": "ScanOutputManager 1.1.0.15854", "extratags": [(700, "B", 7, b"<iScan>", True)]}),
        ("Trestle TIFF", {"software": "MedScan", "description": "Background Color=FFFFFF;Objective Power=20"}),
    ],
)
def test_scanner_tiffs_are_routed_by_their_tags(
    scanner: str, tags: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TIFF carrying a scanner's tags (written here on a plain image, no real slide) is OpenSlide's;
    without OpenSlide it fails naming the extra, but NDPI, which tifffile then reads."""
    import tifffile

    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb", metadata=None, **tags)
    assert file_signature(path).scanner == scanner
    if openslide_available():
        assert choose_reader(path) == "openslide"
    monkeypatch.setitem(sys.modules, "openslide", None)
    if scanner == "Hamamatsu NDPI":
        assert choose_reader(path) == "tifffile"
    else:
        with pytest.raises(SlideError, match=f"^{scanner} is read through OpenSlide, which is not installed"):
            open_slide(path)


def test_an_olympus_vsi_is_refused_not_read_as_its_overview(tmp_path: Path) -> None:
    """A cellSens .vsi file is a TIFF holding the overview and label images; its pyramid lies in
    .ets files in the folder beside it, which neither OpenSlide nor tifffile reads. Without this
    check tifffile opened the .vsi and the run segmented the overview as if it were the slide."""
    import tifffile

    path = tmp_path / "scan.vsi"
    tifffile.imwrite(path, np.full((64, 96, 3), 200, np.uint8), photometric="rgb")
    (tmp_path / "_scan_" / "stack1").mkdir(parents=True)
    (tmp_path / "_scan_" / "stack1" / "frame_t.ets").write_bytes(b"SIS\x00")
    with pytest.raises(SlideError, match=r"^Olympus VSI \(cellSens\) is not read: .*\.ets.*OME-TIFF"):
        choose_reader(path)
    with pytest.raises(SlideError, match=r"^Olympus VSI"):
        open_slide(path)
    with open_slide(path, "tifffile") as forced:  # a reader named by the user is still used
        assert forced.level_dimensions[0] == (96, 64)


def test_plain_files_are_not_scanner_formats(tmp_path: Path) -> None:
    image, _ = synthetic_slide_image(300, 200, seed=2)
    tiff = write_pyramidal_tiff(tmp_path / "a.svs", image, mpp=0.5, tile=128)
    (tmp_path / "notes.txt").write_text("[Virtual Microscope] no slide here\n")
    assert file_signature(tiff).scanner == "" and choose_reader(tiff) != "openslide"
    with pytest.raises(SlideError, match="unsupported file format"):
        choose_reader(tmp_path / "notes.txt")


def run_pipeline(manifest: Path, out: Path, model: Path, pythonpath: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", str(manifest), "--out", str(out), "--model", str(model)]
        + ["--no-progress", "--no-qc", "--workers", "1", "--threads", "2", "--tile-px", "256"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )


@needs_openslide
@pytest.mark.slow
def test_a_run_segments_a_vms_slide(vms_slide: tuple[Path, np.ndarray], tmp_path: Path, blob_model: Path) -> None:
    path, _ = vms_slide
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id\n{path},vms\n")
    result = run_pipeline(manifest, tmp_path / "out", blob_model, str(ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "slides" / "vms" / "stats.json").read_text())
    assert stats["status"] == "ok" and stats["n_nuclei"] > 100
    assert (stats["width"], stats["height"], stats["mpp"]) == (768, 640, 0.25)


@pytest.mark.slow
def test_a_run_without_openslide_fails_the_vms_slide_alone(
    vms_slide: tuple[Path, np.ndarray], tmp_path: Path, blob_model: Path
) -> None:
    """The run goes on: the TIFF slide is segmented, the VMS slide fails with the command that
    installs OpenSlide, exit status 1. OpenSlide is made unimportable in the run's processes by a
    package of that name on PYTHONPATH that fails to import, as an install without its library does."""
    path, _ = vms_slide
    image, _ = synthetic_slide_image(512, 512, seed=3)
    tiff = write_pyramidal_tiff(tmp_path / "t.svs", image, mpp=0.25, tile=256)
    blocked = tmp_path / "blocked" / "openslide"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("OpenSlide library not found")\n')
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id\n{path},vms\n{tiff},tiff\n")
    result = run_pipeline(manifest, tmp_path / "out", blob_model, f"{blocked.parent}:{ROOT}")
    assert result.returncode == 1, result.stderr[-3000:]
    slides = json.loads((tmp_path / "out" / "run.json").read_text())["slides"]
    assert slides["tiff"]["status"] == "ok"
    assert slides["vms"]["status"] == "failed"
    assert f"Hamamatsu VMS is read through OpenSlide, which is not installed: {INSTALL}" in slides["vms"]["error"]
