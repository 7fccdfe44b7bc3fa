"""Pillow for PNG/JPEG images, and images already in memory, seen as one-level slides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io.readers.base import ClosesOnExit, Reader, SlideError, read_clipped
from pipeline.io.readers.metadata import Resolution, mpp_from_resolution_tags


@dataclass
class ArraySlide(ClosesOnExit):
    """An image already in memory (a PNG tile, a test image) seen as a one-level slide."""

    image: np.ndarray
    mpp: float | None
    path: Path = Path("<memory>")
    reader: str = "array"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=lambda: [1.0])
    properties: dict[str, str] = field(default_factory=dict)
    resolution: Resolution | None = None

    def __post_init__(self) -> None:
        if self.resolution is None and self.mpp:
            self.resolution = Resolution(float(self.mpp), "given with the image")
        if self.resolution is not None:
            self.mpp = self.resolution.mpp
        if self.image.ndim == 2:
            self.image = np.repeat(self.image[..., None], 3, axis=2)
        if self.image.ndim != 3 or self.image.shape[2] < 3:
            raise SlideError(f"expected an RGB image, got shape {self.image.shape}")
        self.image = np.ascontiguousarray(self.image[..., :3]).astype(np.uint8, copy=False)
        self.level_dimensions = [(int(self.image.shape[1]), int(self.image.shape[0]))]

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        w, h = self.level_dimensions[0]
        return read_clipped(lambda x0, y0, x1, y1: self.image[y0:y1, x0:x1], x, y, width, height, w, h)

    def close(self) -> None:
        pass


def open_image(path: Path) -> ArraySlide:
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi")
        resolution = mpp_from_resolution_tags(dpi[0], 2, dpi[1]) if dpi else None
        return ArraySlide(np.asarray(im.convert("RGB")), mpp=None, path=path, reader="image", resolution=resolution)


READER = Reader(open=open_image, claims=lambda sig: sig.kind in ("png", "jpeg"))
