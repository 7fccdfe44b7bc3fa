"""Pillow for PNG/JPEG images, and images already in memory, seen as one-level slides."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.io.readers.base import ClosesOnExit, Reader, SlideError, read_clipped, rgb8
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
        """A region of the image (it has one level: ``level`` is not used); parameters and result as
        :meth:`pipeline.io.readers.base.Slide.read_region`.
        """
        w, h = self.level_dimensions[0]
        return read_clipped(lambda x0, y0, x1, y1: self.image[y0:y1, x0:x1], x, y, width, height, w, h)

    def close(self) -> None:
        pass


# Pillow decodes a PNG or JPEG whole (no tiles to read one at a time), and its own
# decompression-bomb guard warns above this many pixels (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 Mpx,
# ≈ 9,459² px, 268 MB as RGB): a bigger plain image is refused with the way to convert it.
MAX_IMAGE_PIXELS = 89_478_485
# Decoded images kept per process: the tile tasks of one slide open it again and again
# (benchmarks/RESULTS-faults.md: 16 tile tasks on a 4,000² PNG decode it once instead of 16 times).
DECODED_IMAGES_KEPT = 2
CONVERT_PLAIN_IMAGE = (
    "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg)"
)
COLOUR_MODES = {"RGB": None, "RGBA": "straight", "RGBa": "premultiplied"}
CONVERTED_MODES = {"CMYK", "YCbCr", "LAB", "HSV"}  # colour, converted to RGB by Pillow itself


def open_image(path: Path) -> ArraySlide:
    """A PNG or JPEG as a one-level slide, decoded once per process (see :func:`decoded_image`)."""
    stat = path.stat()
    image, resolution = decoded_image(str(path), stat.st_size, stat.st_mtime_ns)
    return ArraySlide(image, mpp=None, path=path, reader="image", resolution=resolution)


@lru_cache(maxsize=DECODED_IMAGES_KEPT)
def decoded_image(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, Resolution | None]:
    """:func:`decode_image`, kept for the next task of the same process (read-only; keyed by the
    file's size and modification time, so a replaced file is decoded again)."""
    image, resolution = decode_image(Path(path))
    image.flags.writeable = False
    return image, resolution


def decode_image(path: Path) -> tuple[np.ndarray, Resolution | None]:
    """The image as RGB uint8 and its resolution from the dpi it stores.

    Refused with the reason, before decoding: a grayscale image (one channel has no stain
    colours to separate; segmented, 16-bit grayscale reads as white, 8-bit gives 0 nuclei) and an image
    over :data:`MAX_IMAGE_PIXELS`. Transparent pixels are glass; deeper than 8 bits is scaled
    by the image's range (Pillow gives 16-bit RGB as 8-bit already)."""
    from PIL import Image

    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused while opening
        raise SlideError(f"{exc}; {CONVERT_PLAIN_IMAGE}") from None
    with opened as im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise SlideError(
                f"{im.format} image of {width:,}×{height:,} px is too large to decode whole "
                f"(at most {MAX_IMAGE_PIXELS:,} px): {CONVERT_PLAIN_IMAGE}"
            )
        mode = im.mode
        if mode == "P" or mode == "PA":
            rgba = im.convert("RGBA")
            alpha: str | None = "straight"
            samples = np.asarray(rgba)
        elif mode in COLOUR_MODES:
            alpha = COLOUR_MODES[mode]
            samples = np.asarray(im)
        elif mode in CONVERTED_MODES:
            alpha = None
            samples = np.asarray(im.convert("RGB"))
        else:
            raise SlideError(
                f"grayscale image (mode {mode}): nuclei are segmented on H&E colour images, and one "
                "channel has no stain colours to separate"
            )
        dpi = im.info.get("dpi")
        resolution = mpp_from_resolution_tags(dpi[0], 2, dpi[1]) if dpi else None
    return np.ascontiguousarray(rgb8(samples, alpha=alpha)), resolution


READER = Reader(open=open_image, claims=lambda sig: sig.kind in ("png", "jpeg"))
