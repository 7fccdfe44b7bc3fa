"""The low-resolution view of a slide (pipeline.io.readers.base.low_resolution_view): built
from bounded blocks, refused for a large level without a pyramid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

VIEW_PEAK = """
import sys
from pipeline.io.readers import low_resolution_view, open_slide
from pipeline.testing.memory import own_peak_rss_bytes
with open_slide(sys.argv[1]) as slide:
    low_resolution_view(slide)
print(own_peak_rss_bytes() / 2**20)  # its own: ru_maxrss would count pytest's peak too
"""


@pytest.mark.slow
def test_low_resolution_view_of_a_hostile_width_stays_under_1_gb(tmp_path: Path) -> None:
    """A 1 MB file declaring 150,000 × 1,000 px: its view was built from bands of the whole
    width (1.9 GB; 3.9 GB at 300,000 px); now from bounded blocks (~0.3 GB peak with
    the interpreter, benchmarks/RESULTS-faults.md)."""
    from pipeline.testing import glass_tiff

    path = glass_tiff(tmp_path / "wide.tif", 150_000, 1_000)
    assert path.stat().st_size < 2e6
    result = subprocess.run(
        [sys.executable, "-c", VIEW_PEAK, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < 1024


def test_view_of_a_slide_without_a_pyramid_is_refused_naming_its_size(tmp_path: Path) -> None:
    """A 5 MB one-level file of 40,000² px: reading 1.6 Gpx of glass for a thumbnail (a 100,000²
    one spent over 160 s) is refused at once with the level's size and how to convert it."""
    import time

    from pipeline.io.readers import SlideError, low_resolution_view, open_slide
    from pipeline.testing import glass_tiff

    path = glass_tiff(tmp_path / "flat.tif", 40_000, 40_000)
    started = time.perf_counter()
    with open_slide(path) as slide, pytest.raises(SlideError, match=r"level 0, 40,000×40,000 px.*pyramid"):
        low_resolution_view(slide)
    assert time.perf_counter() - started < 10


def test_view_in_bounded_blocks_equals_the_view_in_whole_bands(synthetic_slide) -> None:
    """Blocks split across the width give the view pixel for pixel (clean slides keep their outputs)."""
    from pipeline.io.readers import low_resolution_view, open_slide

    with open_slide(synthetic_slide[0], "tifffile") as slide:
        whole, ds = low_resolution_view(slide, 256, block_px=10**9)
        for block_px in (2_000, 50_000):
            blocks, ds_blocks = low_resolution_view(slide, 256, block_px=block_px)
            np.testing.assert_array_equal(blocks, whole)
            assert ds_blocks == ds
