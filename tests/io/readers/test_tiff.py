"""The TIFF reader (pipeline.io.readers.tiff): 16- and 12-bit samples read as their 8-bit twin,
strips too large to decode are refused when the file is opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import SlideEntry


def _inline_stats(path: Path, out: Path, model: Path, mpp: float = 0.25) -> dict:
    from pipeline.config import load_config
    from pipeline.slide.inline import process_slide_inline

    config = load_config(None, {"model": str(model), "tile_px": 256, "progress": False}, environ={})
    return process_slide_inline(SlideEntry(path.stem, path, mpp=mpp), str(out), config)


def test_16_bit_rgb_tiff_is_segmented_like_its_8_bit_twin(tmp_path: Path, blob_model: Path) -> None:
    """Before: the 16-bit samples were cast to uint8, keeping their low byte (noise)."""
    import tifffile

    from pipeline.io.readers import open_slide
    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(300, 300, seed=41)
    tifffile.imwrite(tmp_path / "eight.tif", image, tile=(64, 64))
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "sixteen.tif", image.astype(np.uint16) * 256 + noise, tile=(64, 64))
    # 12-bit samples with their range declared (MaxSampleValue), as some scanners write them
    twelve = np.round(image.astype(np.float64) * 4095 / 255).astype(np.uint16)
    tifffile.imwrite(tmp_path / "twelve.tif", twelve, tile=(64, 64), extratags=[(281, 3, 1, 4095, True)])
    for name in ("sixteen.tif", "twelve.tif"):
        with open_slide(tmp_path / name) as slide:
            read = slide.read_region(0, 0, 300, 300).astype(int)
        assert np.abs(read - image).max() <= 1, name
    eight = _inline_stats(tmp_path / "eight.tif", tmp_path / "out8", blob_model)
    sixteen = _inline_stats(tmp_path / "sixteen.tif", tmp_path / "out16", blob_model)
    assert eight["n_nuclei"] > 50
    assert abs(sixteen["n_nuclei"] - eight["n_nuclei"]) <= 0.02 * eight["n_nuclei"]


def test_tiff_whose_strips_are_too_large_to_decode_is_refused(tmp_path: Path) -> None:
    """A file declaring one strip of 20,000 × 10,000 px (572 MB decoded by any read of it) is
    refused when opened (its content is never decoded, so the strip here is a few bytes)."""
    import zlib

    import tifffile

    from pipeline.io.readers import SlideError, open_slide

    width, height = 20_000, 10_000
    path = tmp_path / "strip.tif"
    strip = zlib.compress(bytes(width * 3))  # one row: the declared strip is never decoded
    shape = (height, width, 3)
    tifffile.imwrite(path, iter([strip]), shape=shape, dtype="uint8", rowsperstrip=height, compression="zlib")
    with pytest.raises(SlideError, match=r"level 0 is stored in strips of 20,000×10,000 px \(572 MB each"):
        open_slide(path)
