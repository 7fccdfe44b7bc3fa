"""What the network is given: tiles normalised with the slide's stain statistics and stacked into
one padded batch (numpy or cupy alike). Shared by the tiles and the scale estimate, which must
feed the model exactly alike."""

from __future__ import annotations

from typing import Any

from pipeline.kernels.dispatch import array_module
from pipeline.kernels.stain import MacenkoStains, StainStats, macenko_normalise, reinhard_normalise


def normalise_stain(rgb: Any, stain: StainStats | MacenkoStains | None) -> Any:
    """uint8 RGB → float32 RGB in [0, 1], normalised with the slide's statistics (numpy or cupy)."""
    xp = array_module(rgb)
    if isinstance(stain, StainStats):
        return reinhard_normalise(rgb, stain).astype(xp.float32, copy=False)
    if isinstance(stain, MacenkoStains):
        return macenko_normalise(rgb, stain).astype(xp.float32, copy=False)
    return rgb.astype(xp.float32) / 255.0


def model_input(images: list[Any], side: int) -> Any:
    """Stack H×W×3 float images into N×3×side×side, padding right/bottom with white."""
    xp = array_module(images[0])
    batch = xp.ones((len(images), 3, side, side), dtype=xp.float32)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[0], : img.shape[1]] = img.transpose(2, 0, 1)
    return batch
