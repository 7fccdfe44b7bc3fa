"""tifffile (+ imagecodecs) for every TIFF, SVS included: tiled or plain, any compression.

Reads through tifffile's Zarr view, so only the tiles a region touches are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import (
    ClosesOnExit,
    Reader,
    SlideError,
    UnreadableRegion,
    UnreadableTile,
    decoder_message,
    read_clipped,
    rgb8,
)
from pipeline.io.readers.metadata import Resolution, aperio_fields, mpp_from_tiff


@dataclass
class TiffSlide(ClosesOnExit):
    """Tiled or plain TIFF (incl. SVS) through tifffile's Zarr view: reads only the tiles asked for."""

    path: Path
    reader: str = "tifffile"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=list)
    mpp: float | None = None
    resolution: Resolution | None = None
    properties: dict[str, str] = field(default_factory=dict)
    _tif: Any = None
    _levels: list[Any] = field(default_factory=list)
    _max_value: int | None = None  # samples deeper than 8 bits: their declared range, scaled to 0..255
    _alpha: str | None = None  # the fourth sample is opacity: straight | premultiplied

    @classmethod
    def open(cls, path: Path) -> TiffSlide:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(path)
        try:
            series = tif.series[0]
            page = series.pages[0]
            if not isinstance(page, tifffile.TiffPage):
                raise SlideError("the TIFF's first image has no page of its own")
            max_value, alpha = sample_layout(page)
            levels = []
            dims = []
            for i, level in enumerate(series.levels):
                shape = level.shape
                if len(shape) == 2:
                    h, w = shape
                elif len(shape) == 3 and shape[-1] in (3, 4):
                    h, w = shape[0], shape[1]
                else:
                    raise SlideError(f"unsupported TIFF layout {shape} (expected H×W×RGB)")
                dims.append((int(w), int(h)))
                check_chunk_size(i, level.pages[0])
                levels.append(zarr.open(series.aszarr(level=i), mode="r"))
            description = str(page.description or "")
            x_res, unit, y_res = (tag_value(page, name) for name in ("XResolution", "ResolutionUnit", "YResolution"))
            resolution = mpp_from_tiff(description, x_res, unit, y_res)
        except BaseException:  # a refused file is closed here: a worker opens thousands
            tif.close()
            raise
        return cls(
            path=path,
            level_dimensions=dims,
            level_downsamples=[dims[0][0] / d[0] for d in dims],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties={f"aperio.{k}": v for k, v in aperio_fields(description).items()},
            _tif=tif,
            _levels=levels,
            _max_value=max_value,
            _alpha=alpha,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """A region of a level, decoded from the TIFF's tiles it covers.

        Parameters and result as :meth:`pipeline.io.readers.base.Slide.read_region`; raises UnreadableRegion
        naming the tiles of the region that cannot be decoded.
        """
        arr = self._levels[level]
        w, h = self.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            try:
                samples = np.asarray(arr[y0:y1, x0:x1])
            except Exception as exc:
                raise UnreadableRegion(self.unreadable_tiles(level, x0, y0, x1, y1, exc)) from exc
            return rgb8(samples, self._max_value, self._alpha)

        return read_clipped(read, x, y, width, height, w, h)

    def unreadable_tiles(
        self, level: int, x0: int, y0: int, x1: int, y1: int, exc: BaseException
    ) -> list[UnreadableTile]:
        """The file's tiles in a window that fail to decode, found by decoding each alone (only
        after a read failed); the whole window when no single tile fails.

        Parameters
        ----------
        level : int
            Pyramid level of the window.
        x0, y0, x1, y1 : int
            The window [x0, x1) × [y0, y1), in pixels of ``level``.
        exc : BaseException
            The error of the failed read, named when no single tile fails.

        Returns
        -------
        list of UnreadableTile
            The failing tiles, in pixels of ``level``; never empty.
        """
        arr = self._levels[level]
        th, tw = (int(n) for n in arr.chunks[:2])
        w, h = self.level_dimensions[level]
        bad = []
        for ty in range(y0 // th * th, y1, th):
            for tx in range(x0 // tw * tw, x1, tw):
                try:
                    arr[ty : min(ty + th, h), tx : min(tx + tw, w)]
                except Exception as tile_exc:
                    bad.append(UnreadableTile(level, tx, ty, tw, th, decoder_message(tile_exc)))
        return bad or [UnreadableTile(level, x0, y0, x1 - x0, y1 - y0, decoder_message(exc))]

    def close(self) -> None:
        self._tif.close()


def tag_value(page: Any, name: str) -> Any:
    """A TIFF tag's value, None when the page lacks it."""
    tag = page.tags.get(name)
    return tag.value if tag is not None else None


# TIFF Photometric values that hold colour as RGB once decoded (JPEG's YCbCr is decoded to RGB).
RGB_PHOTOMETRICS = {2: "RGB", 6: "YCbCr"}
PHOTOMETRIC_NAMES = {0: "grayscale", 1: "grayscale", 3: "palette", 4: "mask", 5: "CMYK", 8: "CIELab"}
ALPHA_KINDS = {1: "premultiplied", 2: "straight"}  # TIFF ExtraSamples: associated / unassociated alpha


def sample_layout(page: Any) -> tuple[int | None, str | None]:
    """How a TIFF's samples become RGB uint8: the range of samples deeper than 8 bits (the
    ``MaxSampleValue`` tag, else the bit depth's), and the kind of alpha its fourth sample is.

    Refused with the reason: grayscale (one channel has no stain colours to separate; segmented,
    it gives 0 nuclei), palette, CMYK or Lab colour, samples that are not 8- or 16-bit unsigned integers."""
    photometric = int(page.photometric)
    if photometric not in RGB_PHOTOMETRICS or page.samplesperpixel < 3:
        kind = PHOTOMETRIC_NAMES.get(photometric, f"Photometric {photometric}")
        if page.samplesperpixel < 3:
            kind = "grayscale"
        raise SlideError(
            f"{kind} TIFF ({page.samplesperpixel} sample(s) per pixel): nuclei are segmented on "
            "H&E colour images stored as RGB"
        )
    dtype = np.dtype(page.dtype)
    if dtype == np.uint8:
        max_value = None
    elif dtype == np.uint16:
        declared = page.tags.get("MaxSampleValue")
        values = np.atleast_1d(declared.value) if declared is not None else np.zeros(1)
        max_value = int(values.max()) if values.max() > 0 else 2 ** int(page.bitspersample) - 1
    else:
        raise SlideError(f"TIFF samples of type {dtype} are not supported (8- or 16-bit unsigned RGB expected)")
    extras = tuple(page.extrasamples or ())
    alpha = ALPHA_KINDS.get(int(extras[0])) if extras and page.samplesperpixel >= 4 else None
    return max_value, alpha


# A TIFF's tiles (or strips) are decoded whole, whatever part of one a read needs: one larger than
# this would alone take the memory a worker has for a slide (a 1 MB file can hold one strip of
# 900 MB of glass). Tiled slides use 240–1,024 px tiles (0.2–3 MB); a plain 10,000² px TIFF
# written as one strip (300 MB) still opens.
MAX_CHUNK_BYTES = 512 * 2**20


def check_chunk_size(level: int, page: Any) -> None:
    """Refuse a level whose tiles or strips are too large to decode one at a time."""
    chunk = tuple(int(n) for n in page.chunks)
    size = int(np.prod(chunk)) * np.dtype(page.dtype).itemsize
    if size > MAX_CHUNK_BYTES:
        kind = "tiles" if page.is_tiled else "strips"
        raise SlideError(
            f"level {level} is stored in {kind} of {chunk[1]:,}×{chunk[0]:,} px ({size / 2**20:,.0f} MB each, decoded "
            f"whole by every read; at most {MAX_CHUNK_BYTES // 2**20} MB): rewrite it as a tiled TIFF (e.g. vips "
            "tiffsave IN OUT.tif --tile --pyramid --compression jpeg)"
        )


def tiff_compressions(path: Path) -> frozenset[int]:
    """Compression codes of the pyramid's pages (read from tags only, nothing decoded)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [level.pages[0] for level in tif.series[0].levels]
        return frozenset(int(p.compression) for p in pages if isinstance(p, tifffile.TiffPage))


READER = Reader(open=TiffSlide.open, claims=lambda sig: sig.kind == "tiff")
