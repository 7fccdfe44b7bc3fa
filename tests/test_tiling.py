"""Tile geometry on slides read at another resolution than the model's: every tile samples one
global model-resolution grid, so a slide location reaches the network as the same pixels at the
same place of its 16-px pooling grid, whatever tile (or tile size) reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.io.readers import open_slide
from pipeline.slide.segment import read_tile
from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff
from pipeline.tiling import INPUT_MULTIPLE, TileGrid

MODEL_MPP = 0.25


def global_model_px(grid: TileGrid, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The slide-wide model-resolution index of each row and column of a tile's window (model
    pixel k of the slide is centred on level-0 (k + ½)·scale − ½), and how far off an integer."""
    side = grid.model_side
    x, y = grid.to_level0(tile[0], tile[1], np.arange(side), np.arange(side))
    kx, ky = (x + 0.5) / grid.scale - 0.5, (y + 0.5) / grid.scale - 0.5
    return ky, kx


@pytest.mark.parametrize("mpp", [0.5, 0.2527, 0.25])
def test_a_slide_location_gets_the_same_model_input_from_every_tile(tmp_path: Path, mpp: float) -> None:
    image, _ = synthetic_slide_image(700, 600, seed=7, tissue="full")
    with open_slide(write_pyramidal_tiff(tmp_path / "s.svs", image, mpp=mpp)) as slide:
        width, height = slide.level_dimensions[0]
        canvas: dict[tuple[int, int], np.ndarray] = {}
        compared = 0
        for tile_px in (128, 192):
            grid = TileGrid.for_slide(width, height, mpp, MODEL_MPP, tile_px, 48)
            for tile in [(r, c) for r in range(grid.n_rows) for c in range(grid.n_cols)]:
                ky, kx = global_model_px(grid, tile)
                np.testing.assert_allclose(ky, np.round(ky), atol=1e-6)  # on the slide's model grid
                assert round(kx[0]) % INPUT_MULTIPLE == 0 and round(ky[0]) % INPUT_MULTIPLE == 0  # pooling phase
                window = read_tile(slide, grid, tile)
                key = (int(round(ky[0])), int(round(kx[0])))
                for (y0, x0), other in canvas.items():
                    ys = slice(max(y0, key[0]), min(y0 + other.shape[0], key[0] + window.shape[0]))
                    xs = slice(max(x0, key[1]), min(x0 + other.shape[1], key[1] + window.shape[1]))
                    if ys.start >= ys.stop or xs.start >= xs.stop:
                        continue
                    a = other[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
                    b = window[ys.start - key[0] : ys.stop - key[0], xs.start - key[1] : xs.stop - key[1]]
                    np.testing.assert_array_equal(a, b)
                    compared += a.size
                canvas[key] = window
        assert compared > 10 * width * height  # tiles overlap, across both tile sizes


@pytest.mark.parametrize("halo_px", [80, 176, 304])
def test_default_tile_core_keeps_the_halo_a_small_share_on_gpus(halo_px: int) -> None:
    """CPU workers keep 1024-px cores (their memory grows with the window); on a GPU the default
    core is the smallest whose window (core + 2 halos) is at most 1.35× its area."""
    from pipeline.tiling import MAX_WINDOW_AREA, default_tile_px

    def area(core: int) -> float:
        return ((core + 2 * halo_px) / core) ** 2

    assert default_tile_px(halo_px, on_gpu=False) == 1024
    core = default_tile_px(halo_px, on_gpu=True)
    assert core % INPUT_MULTIPLE == 0 and area(core) <= MAX_WINDOW_AREA
    assert core == 1024 or area(core - INPUT_MULTIPLE) > MAX_WINDOW_AREA


def test_a_plan_on_the_cpu_takes_1024_px_cores(tmp_path: Path, blob_model: Path) -> None:
    from pipeline.config import Config
    from pipeline.manifest import SlideEntry
    from pipeline.slide import plan_slide

    image, _ = synthetic_slide_image(2400, 1200, seed=7, tissue="full")
    slide = write_pyramidal_tiff(tmp_path / "s.svs", image, mpp=0.25)
    plan = plan_slide(SlideEntry("s", slide), str(tmp_path / "out"), Config(model=str(blob_model)))
    assert Config().tile_px == 0 and plan.grid.core0 == 1024
