"""The previous CPU basin watershed, verbatim but for its docstring: every contested basin flooded
by its own scikit-image call on its box; the reference that ``tests/test_kernels.py`` compares the
flood of basins side by side on one canvas with (the same labels, ties among seed values included)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.kernels.nuclei import contested_basins


def watershed_from_seeds(surface: Any, markers: Any, mask: Any, lone_after: int | None = None) -> Any:
    import scipy.ndimage as ndi
    from skimage.segmentation import watershed

    seeds = np.where(mask, markers, 0).astype(np.int32, copy=False)
    basins, bordering, contested = contested_basins(seeds, mask)
    outright = np.where(contested, 0, bordering)  # per basin: its one seed's id; 0 where none borders it
    if lone_after is not None:
        lone = bordering == 0  # a mask component holding no seed
        lone[0] = False
        outright[lone] = np.arange(lone_after + 1, lone_after + 1 + int(lone.sum()), dtype=outright.dtype)
    labels = seeds + outright[basins]
    if not contested.any():
        return labels
    number = np.zeros(contested.shape[0], dtype=np.int32)
    number[contested] = np.arange(1, int(contested.sum()) + 1, dtype=np.int32)
    gaps = number[basins]  # the contested basins, numbered 1..k
    height, width = seeds.shape
    for k, (rows, cols) in enumerate(ndi.find_objects(gaps), start=1):
        box = (  # the basin's box and the seed pixels one step around it
            slice(max(rows.start - 1, 0), min(rows.stop + 1, height)),
            slice(max(cols.start - 1, 0), min(cols.stop + 1, width)),
        )
        gap, box_seeds = gaps[box] == k, seeds[box]
        flooded = watershed(surface[box], box_seeds, mask=gap | (box_seeds > 0))
        labels[box][gap] = flooded[gap]
    return labels
