"""tifffile (+ imagecodecs) for every TIFF, SVS included: tiled or plain, any compression.

Reads through tifffile's Zarr view, so only the tiles a region touches are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import ClosesOnExit, Reader, SlideError, read_clipped
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

    @classmethod
    def open(cls, path: Path) -> TiffSlide:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        page = series.pages[0]
        if not isinstance(page, tifffile.TiffPage):
            raise SlideError("the TIFF's first image has no page of its own")
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
            levels.append(zarr.open(series.aszarr(level=i), mode="r"))
        description = str(page.description or "")
        tags = {name: page.tags.get(name) for name in ("XResolution", "YResolution", "ResolutionUnit")}
        resolution = mpp_from_tiff(description, *(t.value if t is not None else None for t in tags.values()))
        return cls(
            path=path,
            level_dimensions=dims,
            level_downsamples=[dims[0][0] / d[0] for d in dims],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties={f"aperio.{k}": v for k, v in aperio_fields(description).items()},
            _tif=tif,
            _levels=levels,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        arr = self._levels[level]
        w, h = self.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return np.asarray(arr[y0:y1, x0:x1])

        return read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        self._tif.close()


def tiff_compressions(path: Path) -> frozenset[int]:
    """Compression codes of the pyramid's pages (read from tags only, nothing decoded)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [level.pages[0] for level in tif.series[0].levels]
        return frozenset(int(p.compression) for p in pages if isinstance(p, tifffile.TiffPage))


READER = Reader(open=TiffSlide.open, claims=lambda sig: sig.kind == "tiff")
