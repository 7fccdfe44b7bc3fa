"""Planning a slide's tiles (pipeline.slide.plan): a resolution beyond any scanner, or one that
makes the slide longer than glass, fails the slide before any tile is planned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import SlideEntry


@pytest.mark.parametrize(
    ("mpp", "says"),
    [
        (99.0, "99 µm/px from manifest mpp column is too coarse"),  # 396× upsampling: tiles of a few pixels
        (0.02, "0.02 µm/px from manifest mpp column is finer than any slide scanner"),  # 12.5× reads per tile
    ],
)
def test_manifest_mpp_beyond_any_scanner_fails_its_slide_before_tiles_are_planned(
    mpp: float, says: str, cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    from pipeline.config import load_config
    from pipeline.io.readers import SlideError
    from pipeline.slide.plan import plan_slide

    config = load_config(None, {"model": str(blob_model), "tile_px": 256}, environ={})
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    with pytest.raises(SlideError, match=says):
        plan_slide(SlideEntry("s0", cohort / "s0.svs", mpp=mpp), str(out), config)
    assert not list((out / "slides").iterdir())  # no working folder, no tiles


def test_resolution_that_makes_the_slide_longer_than_glass_fails_it_before_tiles_are_planned(
    blob_model: Path, tmp_path: Path
) -> None:
    """A 48,000-px-long scan (12 mm at 40x) said to be at 1.9 µm/px would be 91 mm long: a wrong
    mpp, which would also plan a tile grid over 91 mm of imagined tissue. The tile plan is bounded
    by the glass: no slide's grid covers more than MAX_SLIDE_MM at the model's resolution."""

    from pipeline.config import COARSEST_MPP, load_config
    from pipeline.io.readers import SlideError
    from pipeline.slide.plan import plan_slide
    from pipeline.slide.scale import MAX_SLIDE_MM
    from pipeline.testing import write_pyramidal_tiff

    path = write_pyramidal_tiff(tmp_path / "long.svs", np.full((256, 48_000, 3), 240, np.uint8), mpp=0.25)
    config = load_config(None, {"model": str(blob_model), "tile_px": 256}, environ={})
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    with pytest.raises(SlideError, match=r"1.9 µm/px from manifest mpp column makes the slide 91 mm long"):
        plan_slide(SlideEntry("long", path, mpp=1.9), str(out), config)
    assert not list((out / "slides").iterdir())
    # max_mpp itself is bounded: at the coarsest accepted, tiles keep cores of 1/16 of their side
    assert load_config(None, {"max_mpp": COARSEST_MPP}, environ={}).max_mpp == COARSEST_MPP
    with pytest.raises(ValueError, match="max_mpp=50"):
        load_config(None, {"max_mpp": 50}, environ={})
    assert MAX_SLIDE_MM < 100
