"""DICOM whole-slide images: generated series (pyramid levels as separate instances, tiled
frames, JPEG or uncompressed, TILED_FULL or TILED_SPARSE) read back through wsidicom and through
the lazy pydicom reader; a folder or any one of its files opens every level; a region reads
only the frames it covers; folders that are not a series fail with a reason; a corrupt frame is
named and left out; 16-bit, grayscale and YCbCr series read as 8-bit RGB or are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree

from pipeline.config import Config
from pipeline.io.readers import SlideError, UnreadableRegion, choose_reader, open_slide, read_mirrored
from pipeline.io.readers import dicom as dicom_reader
from pipeline.io.readers.metadata import Resolution
from pipeline.io.readers.wsidicom import wsidicom_available
from pipeline.manifest import SlideEntry
from pipeline.slide import process_slide_inline
from pipeline.slide.inputs import slide_inputs
from pipeline.testing import synthetic_slide_image
from pipeline.testing.dicom import damage_frame, write_dicom_wsi
from tests.conftest import (
    ROOT,
    WSI_FIXTURES,
    manifest_of,
    need_shared,
    run_cli,
)

JPEG_MEAN_ERROR = 6.0  # grey levels: quality-90 JPEG of the noisy synthetic image (measured ≈ 4.4)
needs_wsidicom = pytest.mark.skipif(not wsidicom_available(), reason="wsidicom is not installed (Python < 3.11)")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_slide_image(700, 600, seed=11)[0]


def halved(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round()


def assert_reads_back(found: np.ndarray, expected: np.ndarray, compression: str) -> None:
    error = np.abs(found.astype(float) - expected).mean()
    assert error == 0 if compression == "none" else error < JPEG_MEAN_ERROR


@pytest.mark.parametrize("reader", ["wsidicom", "dicom"])
@pytest.mark.parametrize("layout, compression", [("TILED_FULL", "jpeg"), ("TILED_SPARSE", "none")])
def test_generated_series_reads_back(
    tmp_path: Path, image: np.ndarray, reader: str, layout: str, compression: str
) -> None:
    """Both readers give the series' two levels, their pixels and the scale from PixelSpacing."""
    if reader == "wsidicom" and not wsidicom_available():
        pytest.skip("wsidicom is not installed (Python < 3.11)")
    write_dicom_wsi(tmp_path / "slide", image, mpp=0.25, tile=128, layout=layout, compression=compression)
    with open_slide(tmp_path / "slide", reader) as slide:
        assert slide.reader == reader
        assert slide.level_dimensions == [(700, 600), (350, 300)]
        assert slide.level_downsamples == [1.0, 2.0]
        assert slide.resolution == Resolution(0.25, "DICOM shared PixelSpacing", 0.25)
        assert_reads_back(slide.read_region(0, 0, 700, 600), image, compression)
        assert_reads_back(slide.read_region(100, 50, 200, 150, level=1), halved(image)[50:200, 100:300], compression)
        corner = slide.read_region(650, 560, 100, 100)  # partly outside: glass there
        assert (corner[40:] == 255).all() and (corner[:, 50:] == 255).all()
        assert_reads_back(corner[:40, :50], image[560:, 650:], compression)
        window = read_mirrored(slide, -20, -20, 64, 64)
        assert_reads_back(window, np.pad(image[:44, :44], ((20, 0), (20, 0), (0, 0)), mode="reflect"), compression)


@needs_wsidicom
def test_series_that_state_their_tiling_go_to_wsidicom(tmp_path: Path, image: np.ndarray) -> None:
    write_dicom_wsi(tmp_path / "full", image, mpp=0.25, layout="TILED_FULL")
    write_dicom_wsi(tmp_path / "sparse", image, mpp=0.25, layout="TILED_SPARSE", offset_table=False)
    write_dicom_wsi(tmp_path / "unstated", image, mpp=4.6, layout="unstated", levels=1)
    assert choose_reader(tmp_path / "full") == "wsidicom"
    assert choose_reader(tmp_path / "sparse" / "level-0.dcm") == "wsidicom"
    assert choose_reader(tmp_path / "unstated" / "level-0.dcm") == "dicom"


def test_one_file_of_a_series_opens_every_level(tmp_path: Path, image: np.ndarray) -> None:
    """Given the smallest level's file, the slide is the whole pyramid, level 0 first; an
    instance of another series in the same folder is not one of its levels."""
    write_dicom_wsi(tmp_path, image, mpp=0.25, tile=128, levels=3, name="a")
    write_dicom_wsi(tmp_path, image[:256, :256], mpp=0.5, tile=128, levels=1, name="b")
    with open_slide(tmp_path / "a-2.dcm") as slide:
        assert slide.level_dimensions == [(700, 600), (350, 300), (175, 150)]
        assert slide.mpp == pytest.approx(0.25)
    with pytest.raises(SlideError, match="folder holds 2 DICOM series, not one slide"):
        open_slide(tmp_path)


def test_frames_stored_column_major_without_saying_so_are_placed_right(tmp_path: Path, image: np.ndarray) -> None:
    """A file like the real fixture (no ImageType, no dimension organisation, frames column by
    column, scale only as ImagedVolumeWidth) reads back as the image, at its stated scale."""
    (path,) = write_dicom_wsi(tmp_path, image, mpp=4.6, tile=128, layout="unstated", levels=1)
    with open_slide(path) as slide:
        assert slide.reader == "dicom"
        assert slide.resolution is not None and slide.resolution.field == "DICOM ImagedVolumeWidth"
        assert slide.mpp == pytest.approx(4.6)
        assert_reads_back(slide.read_region(0, 0, 700, 600), image, "jpeg")


@pytest.mark.parametrize("offset_table", [True, False])
def test_a_region_decodes_only_the_frames_it_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset_table: bool
) -> None:
    """Opening reads no pixel data (the offset table, or each fragment's 8-byte header where
    there is none); a 256² region aligned on 128² frames decodes 4 of 48 frames and reads only
    their bytes from the file, so a tile task's memory does not grow with the slide."""
    import imagecodecs

    big = synthetic_slide_image(1024, 768, seed=2)[0]
    (path,) = write_dicom_wsi(tmp_path, big, mpp=0.25, tile=128, levels=1, offset_table=offset_table)
    decoded: list[int] = []
    read_bytes: list[int] = []
    real_decode, real_pread = imagecodecs.jpeg8_decode, os.pread

    def counting_decode(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        decoded.append(len(data))
        return real_decode(data, *args, **kwargs)

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        read_bytes.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", counting_decode)
    monkeypatch.setattr(dicom_reader.os, "pread", counting_pread)
    with open_slide(path, "dicom") as slide:
        assert decoded == [] and sum(read_bytes) <= 12 + 8 * 49 + 4 * 48  # element, item headers, offset table
        read_bytes.clear()
        region = slide.read_region(256, 128, 256, 256)
    assert len(decoded) == 4 and sum(decoded) <= sum(read_bytes) <= sum(decoded) + 4 * 8  # + item headers
    assert sum(read_bytes) < path.stat().st_size / 8
    assert_reads_back(region, big[128:384, 256:512], "jpeg")


def test_frames_split_over_fragments_are_joined_by_the_offset_table(tmp_path: Path, image: np.ndarray) -> None:
    """A frame may span several fragments: the offset table says where each frame starts; with
    no table the frames cannot be told apart, and the reader says so."""
    (path,) = write_dicom_wsi(tmp_path / "a", image, mpp=0.25, tile=128, levels=1, fragments_per_frame=3)
    with open_slide(path, "dicom") as slide:
        assert_reads_back(slide.read_region(0, 0, 700, 600), image, "jpeg")
    (path,) = write_dicom_wsi(tmp_path / "b", image, mpp=0.25, levels=1, fragments_per_frame=3, offset_table=False)
    with pytest.raises(SlideError, match="frames span 27 fragments for 9 frames and no offset table says how"):
        open_slide(path, "dicom")


@pytest.mark.parametrize(
    "contents, reason",
    [
        ({}, "folder that holds no DICOM files is not a slide"),
        ({"notes.txt": b"not a slide"}, "folder that holds no DICOM files is not a slide"),
    ],
)
def test_folders_that_are_not_a_series_fail_with_a_reason(tmp_path: Path, contents: dict, reason: str) -> None:
    folder = tmp_path / "slide"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    with pytest.raises(SlideError, match=reason):
        open_slide(folder)


def test_truncated_dicom_fails_with_a_reason(tmp_path: Path, image: np.ndarray) -> None:
    (path,) = write_dicom_wsi(tmp_path / "s", image, mpp=0.25, levels=1, layout="unstated")
    data = path.read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated or corrupt"):
        open_slide(tmp_path / "t.dcm")


def test_a_series_folder_is_segmented_and_rerun_checks_its_files(tmp_path: Path, blob_model: Path) -> None:
    """A folder of DICOM instances is a slide path: its nuclei are found at the scale from
    PixelSpacing, and a level rewritten since changes the slide's recorded inputs."""
    image, truth = synthetic_slide_image(600, 500, seed=9)
    folder = tmp_path / "S1"
    write_dicom_wsi(folder, image, mpp=0.25, tile=128)
    config = Config(model=str(blob_model), tile_px=256)
    stats = process_slide_inline(SlideEntry("S1", folder), str(tmp_path / "out"), config)
    assert stats["status"] == "ok" and stats["mpp_field"] == "DICOM shared PixelSpacing"
    table = pq.read_table(tmp_path / "out" / "slides" / "S1" / "nuclei.parquet").to_pandas()
    distance, _ = cKDTree(table[["centroid_x", "centroid_y"]].to_numpy()).query([(n.x, n.y) for n in truth])
    assert (distance <= 2.0).mean() >= 0.97
    before = slide_inputs(folder, None, "x", config)
    level = folder / "level-1.dcm"
    level.write_bytes(level.read_bytes() + b"\0\0")
    after = slide_inputs(folder, None, "x", config)
    assert after["slide_bytes"] == before["slide_bytes"] + 2


def test_the_fixture_is_read_lazily_without_seams() -> None:
    """The real one-file fixture (no ImageType: wsidicom cannot index it) goes to the pydicom
    reader, which finds its column-major order and then decodes only the frames a region covers."""
    need_shared("small_dicom.dcm")
    path = WSI_FIXTURES / "small_dicom.dcm"
    assert choose_reader(path) == "dicom"
    with open_slide(path) as slide:
        (level,) = slide.levels
        assert level.column_major and not level.cache  # the order test's frames are dropped
        region = slide.read_region(250, 250, 500, 500).astype(np.float32)  # 4 frames of 500²
        assert len(level.cache) == 4
    seam = np.abs(region[:, 249] - region[:, 250]).mean()
    inner = np.abs(region[:, 124] - region[:, 125]).mean()
    assert seam < 3 * inner + 5


def test_the_lazy_reader_gives_the_written_pixels(tmp_path: Path, image: np.ndarray) -> None:
    """Frames in an unstated order, stored without compression: every region read is the image
    that was written, pixel for pixel, the part inside the slide of a region crossing its edge too."""
    (path,) = write_dicom_wsi(tmp_path, image, mpp=4.6, tile=128, layout="unstated", levels=1, compression="none")
    height, width = image.shape[:2]
    with open_slide(path, "dicom") as lazy:
        assert lazy.level_dimensions[0] == (width, height)
        np.testing.assert_array_equal(lazy.read_region(0, 0, width, height), image)
        np.testing.assert_array_equal(lazy.read_region(120, 40, 1, 1), image[40:41, 120:121])
        np.testing.assert_array_equal(lazy.read_region(-30, 90, 333, 257)[:, 30:], image[90:347, :303])


# ----------------------------------------------- faults: a corrupt frame, samples that are not 8-bit RGB ----

BOTH_READERS = [pytest.param("wsidicom", marks=needs_wsidicom), "dicom"]


@pytest.mark.parametrize("reader", BOTH_READERS)
def test_corrupt_frame_is_named_with_the_decoders_error(tmp_path: Path, reader: str) -> None:
    """Before: the decoder's error escaped as is (the slide failed at planning, no frame named).
    Now a read covering the frame names it (level, x, y and its size), reads elsewhere work,
    and the tissue view sees it as glass."""
    from pipeline.io.readers import low_resolution_view
    from pipeline.io.readers.base import UnreadableTile

    image = synthetic_slide_image(512, 384, seed=12)[0]
    paths = write_dicom_wsi(tmp_path, image, mpp=0.25, tile=128, levels=2)
    damage_frame(paths[0], 6)  # frames row by row, 4 per row: row 1, column 2
    with open_slide(tmp_path, reader) as slide:
        with pytest.raises(UnreadableRegion) as raised:
            slide.read_region(100, 100, 300, 100)
        [bad] = raised.value.tiles
        assert (bad.level, bad.x, bad.y, bad.width, bad.height) == (0, 256, 128, 128, 128)
        assert "Quantization table 0x00 was not defined" in bad.error
        assert "level 0, x 256, y 128" in str(raised.value)
        assert_reads_back(slide.read_region(0, 0, 256, 384), image[:, :256], "jpeg")
        assert_reads_back(slide.read_region(0, 0, 256, 192, level=1), halved(image), "jpeg")
        unreadable: list[UnreadableTile] = []
        view, _ = low_resolution_view(slide, 512, unreadable=unreadable)
    assert unreadable == [bad] and (view[128:256, 256:384] == 255).all()


@pytest.mark.slow
def test_run_finishes_a_series_with_a_corrupt_frame_listing_it(tmp_path: Path, blob_model: Path) -> None:
    """``python -m pipeline.run`` on a manifest: the slide is ok without the frame, which is
    listed in stats.json and flags the slide for the QC (exit 0, run.json final). The series
    states its tiling, so wsidicom reads it where installed (both readers name the frame alike:
    test above; what the run does with it does not depend on the reader)."""
    image = synthetic_slide_image(768, 768, seed=13)[0]
    paths = write_dicom_wsi(tmp_path / "S1", image, mpp=0.25, tile=128, levels=2)
    damage_frame(paths[0], 14)  # 6 frames per row: row 2, column 2
    (tmp_path / "manifest.csv").write_text("slide_path,slide_id\nS1,S1\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "out")]
        + ["--model", str(blob_model), "--tile-px", "256", "--no-progress"]
        + ["--workers", "1", "--threads", "1", "--dashboard", "off"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "ok"
    stats = json.loads((tmp_path / "out" / "slides" / "S1" / "stats.json").read_text())
    assert stats["status"] == "ok" and "unreadable_tiles" in stats["flags"] and stats["n_nuclei"] > 0
    [bad] = stats["unreadable_tiles"]
    assert (bad["level"], bad["x"], bad["y"], bad["width"], bad["height"]) == (0, 256, 256, 128, 128)
    assert "Quantization table" in bad["error"]
    assert any("level 0, x 256, y 256" in w for w in stats["warnings"])


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_16_bit_series_is_scaled_from_bits_stored(tmp_path: Path, image: np.ndarray, bits_stored: int) -> None:
    """BitsAllocated 16: samples scaled from 0..2^BitsStored−1 to 0..255 (wsidicom decodes
    colour only at 8 bits and could not open such a series; the lazy reader refused it)."""
    top = 2**bits_stored - 1
    deep = np.round(image.astype(np.float64) * top / 255).astype(np.uint16)
    write_dicom_wsi(tmp_path, deep, mpp=0.25, tile=128, compression="none", bits_stored=bits_stored)
    assert choose_reader(tmp_path) == "dicom"
    with open_slide(tmp_path) as slide:
        found = slide.read_region(-10, 0, 720, 600)
        assert found.dtype == np.uint8 and (found[:, :10] == 255).all() and (found[:, 710:] == 255).all()
        assert np.abs(found[:, 10:710].astype(int) - image).max() <= 1
        assert np.abs(slide.read_region(0, 0, 350, 300, level=1).astype(int) - halved(image)).max() <= 1


@pytest.mark.parametrize("reader", ["auto", *BOTH_READERS])
def test_grayscale_series_is_refused_with_the_reason(tmp_path: Path, image: np.ndarray, reader: str) -> None:
    """Before: the lazy reader repeated the one channel into grey RGB (0 nuclei, exit 0) and
    wsidicom failed on its first read with a numpy broadcast error."""
    write_dicom_wsi(
        tmp_path, image.mean(axis=2).astype(np.uint8), mpp=0.25, compression="none", photometric="MONOCHROME2"
    )
    reason = r"grayscale DICOM \(MONOCHROME2, 1 sample\(s\) per pixel\): nuclei are segmented on H&E colour images"
    with pytest.raises(SlideError, match=reason):
        open_slide(tmp_path, reader).close()


@pytest.mark.parametrize("reader", ["auto", *BOTH_READERS])
@pytest.mark.parametrize(
    "compression, photometric",
    [("jpeg", "YBR_FULL_422"), ("jpeg", "RGB"), ("none", "YBR_FULL")],
)
def test_frames_read_as_rgb_whatever_their_photometric_interpretation(
    tmp_path: Path, reader: str, compression: str, photometric: str
) -> None:
    """Saturated colour patches (where a missed or extra YCbCr→RGB transform is far off) read
    back as the RGB image: JPEG stored as YCbCr, JPEG stored as RGB that only the DICOM header
    says is RGB (the lazy reader converted it as YCbCr), uncompressed YBR_FULL (refused before)."""
    colours = np.array([[200, 30, 40], [30, 180, 60], [40, 50, 210], [230, 210, 40]], dtype=np.uint8)
    image = np.repeat(np.repeat(colours.reshape(2, 2, 3), 128, axis=0), 128, axis=1)
    image = np.clip(image + np.random.default_rng(5).normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    write_dicom_wsi(tmp_path, image, mpp=0.25, tile=128, levels=1, compression=compression, photometric=photometric)
    if reader == "wsidicom" and compression == "none":
        with pytest.raises(SlideError, match="wsidicom reads 8-bit colour frames only.*--reader dicom"):
            open_slide(tmp_path, reader)
        return
    with open_slide(tmp_path, reader) as slide:
        found = slide.read_region(0, 0, 256, 256).astype(float)
    error = np.abs(found - image).mean()
    assert error <= (JPEG_MEAN_ERROR if compression == "jpeg" else 1.0), error


@pytest.mark.parametrize("reader", ["auto", *BOTH_READERS])
def test_rgb_header_on_ycbcr_jpeg_frames_is_read_by_the_stream(tmp_path: Path, image: np.ndarray, reader: str) -> None:
    """A series whose header says RGB while its JPEG frames carry a JFIF marker (YCbCr), as the
    real fixture's does: read as the stream says. wsidicom follows the header (≈ 56 grey levels
    off, silently), so such a series is left to the lazy reader."""
    import pydicom

    for path in write_dicom_wsi(tmp_path, image, mpp=0.25, tile=128):
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "RGB"
        ds.save_as(path)
    if reader == "wsidicom":
        with pytest.raises(SlideError, match="header says RGB, its JPEG frames YCbCr.*--reader dicom"):
            open_slide(tmp_path, reader)
        return
    with open_slide(tmp_path, reader) as slide:
        assert slide.reader == "dicom"
        assert_reads_back(slide.read_region(0, 0, 700, 600), image, "jpeg")


@pytest.mark.slow
def test_a_folder_is_a_slide_only_when_it_holds_a_dicom_series(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    """A folder of DICOM instances is segmented like a file; an empty folder, or one of other
    files, fails alone with the reason, and the others finish."""
    from pipeline.testing import synthetic_slide_image
    from pipeline.testing.dicom import write_dicom_wsi

    write_dicom_wsi(tmp_path / "series", synthetic_slide_image(300, 300, seed=41)[0], mpp=0.25, tile=128)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a slide")
    rows = ["series,series,BRCA", "empty,empty,BRCA", "notes,notes,BRCA", f"{cohort}/s0.svs,s0,BRCA"]
    manifest = manifest_of(tmp_path, rows)
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--tile-px", "256")
    assert result.returncode == 1, result.stderr[-3000:]
    slides = json.loads((tmp_path / "out" / "run.json").read_text())["slides"]
    assert slides["series"]["status"] == "ok" and slides["s0"]["status"] == "ok"
    for name in ("empty", "notes"):
        assert slides[name]["status"] == "failed"
        assert f"{name}: SlideError: a folder that holds no DICOM files is not a slide" in slides[name]["error"]
