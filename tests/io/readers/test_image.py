"""Plain images as slides (pipeline.io.readers.image): decoded once per process, refused before
decoding when too large."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def test_plain_image_is_decoded_once_per_process_for_its_tile_tasks(tmp_path: Path) -> None:
    """Every tile task opens its slide: a PNG was decoded whole by each of them; now once per
    process (and again when the file is replaced)."""
    from PIL import Image

    from pipeline.io.readers import open_slide
    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(300, 200, seed=44)
    path = tmp_path / "plain.png"
    Image.fromarray(image).save(path)
    with open_slide(path) as first, open_slide(path) as second:
        assert np.shares_memory(first.image, second.image)
        np.testing.assert_array_equal(second.read_region(0, 0, 300, 200), image)
    Image.fromarray(image[:, ::-1].copy()).save(path)
    os.utime(path, ns=(1, 1))
    with open_slide(path) as replaced:
        np.testing.assert_array_equal(replaced.read_region(0, 0, 300, 200), image[:, ::-1])


def test_plain_image_too_large_to_decode_whole_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    import pipeline.io.readers.image as plain
    from pipeline.io.readers import SlideError, open_slide

    Image.fromarray(np.full((300, 400, 3), 240, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(plain, "MAX_IMAGE_PIXELS", 100_000)  # 120,000 px: over the limit
    with pytest.raises(SlideError, match=r"PNG image of 400×300 px is too large.*pyramidal TIFF"):
        open_slide(tmp_path / "big.png")
