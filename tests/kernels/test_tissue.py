"""The tissue mask (pipeline.kernels.tissue): stain kept, glass and ink left out; the channel-wise
computation equals the axis reductions."""

from __future__ import annotations

import numpy as np

from pipeline.kernels.tissue import tissue_mask


def test_tissue_mask_separates_stain_from_glass() -> None:
    img = np.full((60, 80, 3), 242, dtype=np.uint8)  # grey glass
    img[10:40, 10:50] = (220, 150, 190)  # eosin
    img[50:55, 60:65] = (20, 20, 20)  # black ink speck
    mask = tissue_mask(img, min_size_px=4)
    assert mask[20:30, 20:40].all()
    assert not mask[:5].any() and not mask[50:55, 60:65].any()


def test_tissue_mask_channelwise_equals_axis_reductions() -> None:
    """The channel-by-channel sums and extrema give the mask the axis reductions gave."""
    from pipeline.kernels.stain import optical_density
    from pipeline.kernels.tissue import TISSUE_MAX_OD, TISSUE_MIN_CHROMA, TISSUE_MIN_OD

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(120, 90, 3)).astype(np.uint8)
    img[:40] = 240 + rng.integers(0, 8, size=(40, 90, 3)).astype(np.uint8)  # glass
    od = optical_density(img)
    rgb_i = img.astype(np.int16)
    chroma = rgb_i.max(axis=-1) - rgb_i.min(axis=-1)
    before = (od.sum(axis=-1) > TISSUE_MIN_OD) & (chroma >= TISSUE_MIN_CHROMA) & ~(od.min(axis=-1) > TISSUE_MAX_OD)
    np.testing.assert_array_equal(tissue_mask(img, closing_px=1, min_size_px=1), before)
