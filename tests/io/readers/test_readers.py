"""Slide readers: the reader is chosen from the file's own tags; every real fixture either
yields pixels or fails with a clear reason."""

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.readers import (
    ArraySlide,
    SlideError,
    choose_reader,
    low_resolution_view,
    open_slide,
    read_mirrored,
)
from pipeline.io.readers.cucim import cucim_available
from pipeline.io.readers.metadata import Resolution, mpp_from_dicom, mpp_from_tiff
from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff
from tests.conftest import (
    WSI_FIXTURES,
    need_shared,
)


def test_generated_pyramid_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(600, 700, 3), dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "a.tiff", img, mpp=0.5, compression="zlib", tile=128)
    with open_slide(path) as slide:
        assert slide.reader == "tifffile"  # Deflate never goes to cuCIM
        assert slide.level_dimensions[0] == (700, 600)
        assert slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(10, 20, 50, 40), img[20:60, 10:60])


def test_tiff_resolution_tags_give_the_scale(tmp_path: Path) -> None:
    """A TIFF without vendor text is scaled by its X/YResolution and ResolutionUnit tags (as
    Hamamatsu NDPI and generic pyramids write them), read through the tifffile reader."""
    img = np.full((300, 400, 3), 200, dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "cm.tiff", img, mpp=0.25, compression="zlib", tile=128, aperio=False)
    with open_slide(path) as slide:
        assert slide.reader == "tifffile"
        assert slide.resolution == Resolution(0.25, "TIFF XResolution (cm)", 0.25)


def test_regions_outside_the_image_are_glass() -> None:
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    region = ArraySlide(img, mpp=0.25).read_region(-2, 8, 5, 5)
    assert (region[:, :2] == 255).all() and (region[2:] == 255).all()
    assert (region[:2, 2:] == 0).all()


def test_tile_windows_mirror_the_image_at_its_edges() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(10, 13, 3), dtype=np.uint8)
    slide = ArraySlide(img, mpp=0.25)
    reference = np.pad(img, ((30, 30), (30, 30), (0, 0)), mode="reflect")  # several folds deep
    for x, y, w, h in [(-3, -4, 8, 9), (9, 5, 10, 12), (-30, -30, 73, 70), (2, 3, 4, 5), (-25, 8, 3, 30)]:
        expected = reference[y + 30 : y + 30 + h, x + 30 : x + 30 + w]
        np.testing.assert_array_equal(read_mirrored(slide, x, y, w, h), expected)
    line = ArraySlide(img[:1], mpp=0.25)  # one row: every row of the window is that row
    expected = np.pad(img[:1], ((3, 0), (2, 0), (0, 0)), mode="reflect")[:4, :13]
    assert (expected == expected[:1]).all()
    np.testing.assert_array_equal(read_mirrored(line, -2, -3, 13, 4), expected)


def test_mpp_fallbacks() -> None:
    assert mpp_from_tiff("Aperio|AppMag = 20|MPP = 0.4990", None, None) == Resolution(0.499, "Aperio MPP")
    assert mpp_from_tiff("Aperio|AppMag = 40", None, None) == Resolution(0.25, "Aperio AppMag")
    assert mpp_from_tiff("", (40000, 1), 3) == Resolution(0.25, "TIFF XResolution (cm)")  # 40,000 px/cm
    assert mpp_from_tiff("", (72, 1), 2) is None  # a DPI placeholder, not a microscope


@pytest.mark.parametrize(
    "unit, per_unit, expected",
    [(2, 101_600.0, 0.25), (3, 40_000.0, 0.25), (4, 4_000.0, 0.25), (5, 4.0, 0.25), (5, 2.0, 0.5)],
)
def test_tiff_resolution_units(unit: int, per_unit: float, expected: float) -> None:
    """Inch, cm and the mm / µm units some scanners write; X and Y read separately."""
    found = mpp_from_tiff("", (per_unit, 1), unit, (per_unit / 2, 1))
    assert found is not None and found.mpp == pytest.approx(expected)
    assert found.mpp_y == pytest.approx(2 * expected) and not found.square and "non-square" in found.describe()


def test_ome_xml_physical_size(tmp_path: Path) -> None:
    import tifffile

    img, _ = synthetic_slide_image(300, 200, seed=1)
    path = tmp_path / "ome.tiff"
    tifffile.imwrite(
        path,
        img,
        ome=True,
        metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"},
    )
    with open_slide(path) as slide:
        assert slide.resolution == Resolution(0.5, "OME-XML PhysicalSizeX", 0.5)
    nm = '<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm"/></Image></OME>'
    assert mpp_from_tiff(nm, None, None) == Resolution(0.25, "OME-XML PhysicalSizeX")


def test_dicom_spacing_sources() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = 15.0, 12.0  # mm
    assert (
        mpp_from_dicom(ds, 3236, 2638).describe().startswith("4.64 × 4.55 (non-square pixels) µm/px from DICOM Imaged")
    )
    measures = Dataset()
    measures.PixelSpacing = [0.00025, 0.00025]
    group = Dataset()
    group.PixelMeasuresSequence = [measures]
    ds.PerFrameFunctionalGroupsSequence = [group]
    assert mpp_from_dicom(ds, 3236, 2638) == Resolution(0.25, "DICOM per-frame PixelSpacing", 0.25)
    ds.SharedFunctionalGroupsSequence = [group]
    assert mpp_from_dicom(ds, 3236, 2638) == Resolution(0.25, "DICOM shared PixelSpacing", 0.25)


def test_unsupported_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("not an image")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideError, match="unsupported file format"):
        open_slide(tmp_path / "x.txt")
    with pytest.raises(SlideError, match="empty file"):
        open_slide(tmp_path / "empty.svs")
    with pytest.raises(SlideError, match="file not found"):
        open_slide(tmp_path / "nope.svs")


def test_truncated_svs_fails_with_reason(tmp_path: Path) -> None:
    need_shared("CMU-1-Small-Region.svs")
    data = (WSI_FIXTURES / "CMU-1-Small-Region.svs").read_bytes()
    (tmp_path / "t.svs").write_bytes(data[:100_000])
    with pytest.raises(SlideError, match="truncated or corrupt"):
        open_slide(tmp_path / "t.svs")


@pytest.mark.parametrize(
    "name, size, mpp",
    [
        ("CMU-1-Small-Region.svs", (2220, 2967), 0.499),
        ("tcga-cr-7395-01a-01-ts1.svs", (4443, 3567), None),
        ("small_dicom.dcm", (3236, 2638), 4.635),  # 15 mm over 3,236 px: a thumbnail-scale image
        ("small.svs", (16, 16), 0.499),
        ("boxes.tiff", (300, 250), None),
    ],
)
def test_real_fixtures_open_and_read(name: str, size: tuple[int, int], mpp: float | None) -> None:
    need_shared(name)
    with open_slide(WSI_FIXTURES / name) as slide:
        assert slide.level_dimensions[0] == size
        assert slide.mpp == (pytest.approx(mpp, abs=1e-3) if mpp else None)
        view, factor = low_resolution_view(slide, 256)
    assert max(view.shape[:2]) <= 256 and factor >= 1
    assert view.std() > 5  # real pixels, not a blank buffer


def test_boxes_tiff_never_reaches_cucim() -> None:
    need_shared("boxes.tiff")
    assert choose_reader(WSI_FIXTURES / "boxes.tiff") == "tifffile"


@pytest.mark.skipif(not cucim_available(), reason="cuCIM is not installed")
def test_cucim_and_tifffile_agree_on_jpeg2000_svs() -> None:
    need_shared("tcga-cr-7395-01a-01-ts1.svs")
    path = WSI_FIXTURES / "tcga-cr-7395-01a-01-ts1.svs"
    assert choose_reader(path) == "cucim"
    with open_slide(path, "cucim") as one, open_slide(path, "tifffile") as other:
        a = one.read_region(1000, 1000, 300, 200)
        b = other.read_region(1000, 1000, 300, 200)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_dicom_frames_assemble_without_seams() -> None:
    """The DICOM fixture's frames are stored column-major without saying so; a wrong order
    shows as sharp jumps at the 500-px frame borders."""
    need_shared("small_dicom.dcm")
    slide = open_slide(WSI_FIXTURES / "small_dicom.dcm")
    region = slide.read_region(0, 0, 3000, 2500).astype(np.float32)
    seam = np.abs(region[:, 499] - region[:, 500]).mean()
    inner = np.abs(region[:, 249] - region[:, 250]).mean()
    assert seam < 3 * inner + 5


@pytest.mark.skipif(not cucim_available(), reason="cuCIM is not installed")
def test_cucim_slides_open_one_at_a_time(synthetic_slide, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuCIM 26.10 can crash the process (SIGSEGV) when two threads construct ``CuImage`` at once
    (seen in a worker planning two slides and in the QC's patch threads: 2 of 15 runs of the
    4-slide test cohort). The reader opens one slide at a time; reading stays concurrent."""
    import threading
    import time

    import cucim

    real = cucim.CuImage
    inside, most = 0, 0
    count = threading.Lock()

    def recording(*args, **kwargs):
        nonlocal inside, most
        with count:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)  # long enough for every other thread to arrive
        try:
            return real(*args, **kwargs)
        finally:
            with count:
                inside -= 1

    monkeypatch.setattr(cucim, "CuImage", recording)
    path = synthetic_slide[0]
    barrier = threading.Barrier(4)
    regions = []

    def open_and_read() -> None:
        barrier.wait()
        with open_slide(path, "cucim") as slide:
            regions.append(slide.read_region(0, 0, 64, 64))

    threads = [threading.Thread(target=open_and_read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(regions) == 4 and most == 1


@pytest.mark.parametrize(("kind", "says"), [("fifo", "a named pipe (FIFO)"), ("/dev/zero", "a character device")])
def test_a_fifo_or_a_device_as_a_slide_says_what_it_is(kind: str, says: str, tmp_path: Path) -> None:
    """Not "empty file": a FIFO or a device has no size to read, and opening a FIFO would wait."""
    from tests.conftest import special_file

    path = special_file(kind, tmp_path)
    with pytest.raises(SlideError, match=re.escape(f"{says}, not a slide file: {path}")):
        choose_reader(path)


def test_unopenable_paths_say_what_they_are(tmp_path: Path) -> None:
    """The reason a slide path cannot be read names what is there: a symlink loop, a link to
    nothing, a folder, nothing at all (not one "file not found" for all of them)."""
    from pipeline.io.readers import SlideError, choose_reader

    (tmp_path / "loop.svs").symlink_to("loop.svs")
    (tmp_path / "dangling.svs").symlink_to("gone.svs")
    (tmp_path / "folder.svs").mkdir()
    for name, says in (
        ("loop.svs", "symbolic link loop"),
        ("dangling.svs", "symbolic link to a missing file"),
        ("folder.svs", "a folder that holds no DICOM files is not a slide"),
        ("missing.svs", "file not found"),
    ):
        with pytest.raises(SlideError, match=says) as err:
            choose_reader(tmp_path / name)
        assert name in str(err.value)


def _grayscale_files(folder: Path) -> list[Path]:
    import tifffile
    from PIL import Image

    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(200, 200, seed=42)
    gray = image.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")  # mode I;16: was turned white
    Image.fromarray(gray).save(folder / "gray8.png")  # mode L: gave 0 nuclei
    tifffile.imwrite(folder / "gray.tif", gray, tile=(64, 64), photometric="minisblack")
    return [folder / "gray16.png", folder / "gray8.png", folder / "gray.tif"]


def test_grayscale_images_are_refused_with_the_reason(tmp_path: Path) -> None:
    from pipeline.io.readers import SlideError, open_slide

    for path in _grayscale_files(tmp_path):
        with pytest.raises(SlideError, match="grayscale"):
            open_slide(path).close()


def test_transparent_pixels_are_glass_not_tissue(tmp_path: Path) -> None:
    """An RGBA image whose right half is transparent black: no tissue there (black read as tissue)."""
    import tifffile
    from PIL import Image

    from pipeline.io.readers import low_resolution_view, open_slide
    from pipeline.kernels.tissue import tissue_mask
    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(400, 300, seed=43, tissue="full")
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, 200:] = 0
    rgba = np.dstack([image, alpha])
    rgba[:, 200:, :3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, tile=(64, 64), photometric="rgb", extrasamples=[2])
    for name in ("rgba.png", "rgba.tif"):
        with open_slide(tmp_path / name) as slide:
            assert (slide.read_region(200, 0, 200, 300) == 255).all(), name
            np.testing.assert_array_equal(slide.read_region(0, 0, 200, 300), image[:, :200])
            view, ds = low_resolution_view(slide, 100)
        tissue = tissue_mask(view)
        right = int(np.ceil(200 / ds))
        assert tissue[:, : right - 2].mean() > 0.9 and not tissue[:, right + 1 :].any(), name
