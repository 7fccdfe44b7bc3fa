"""cuCIM's ``CuImage`` for tiled TIFF/SVS whose compression it decodes safely (JPEG, Aperio
JPEG2000), when cuCIM is installed: the fastest reader, and it runs on the CPU too. cuCIM 26.10
kills the process on a Deflate-compressed tiled TIFF, so such files never reach it; and it can
crash the process (SIGSEGV) when two threads construct ``CuImage`` at once, so slides are opened
one at a time in a process (reads stay concurrent)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import ClosesOnExit, FileSignature, Reader, read_clipped
from pipeline.io.readers.metadata import Resolution, first, mpp_from_aperio, mpp_from_spacing

# TIFF compression codes cuCIM decodes correctly (checked on the fixtures): JPEG, Aperio JPEG2000.
CUCIM_SAFE_COMPRESSIONS = frozenset({7, 33003, 33005})
# Held while a CuImage is constructed: concurrent construction segfaulted cuCIM 26.10 in 2 of 15
# runs of the 4-slide test cohort (two planning tasks of one worker, or the QC's patch threads).
_OPENING = threading.Lock()


@dataclass
class CuCIMSlide(ClosesOnExit):
    """cuCIM's CuImage reader (CPU decode for JPEG / JPEG2000 SVS and generic TIFF)."""

    path: Path
    reader: str = "cucim"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=list)
    mpp: float | None = None
    resolution: Resolution | None = None
    properties: dict[str, str] = field(default_factory=dict)
    _img: Any = None

    @classmethod
    def open(cls, path: Path) -> CuCIMSlide:
        import cucim

        with _OPENING:
            img = cucim.CuImage(str(path))  # type: ignore[attr-defined]
        res = img.resolutions
        dims = [(int(w), int(h)) for w, h in res["level_dimensions"]]
        meta = img.metadata
        aperio = meta.get("aperio", {}) if isinstance(meta, dict) else {}
        resolution = first(mpp_from_aperio(aperio), mpp_from_spacing(img.spacing(), img.spacing_units()))
        return cls(
            path=path,
            level_dimensions=dims,
            level_downsamples=[float(d) for d in res["level_downsamples"]],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties={f"aperio.{k}": str(v) for k, v in aperio.items()},
            _img=img,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """A region of a level, read with cuCIM; parameters and result as
        :meth:`pipeline.io.readers.base.Slide.read_region`.
        """
        w, h = self.level_dimensions[level]
        ds = self.level_downsamples[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            # CuImage takes the location in level-0 coordinates and the size in level pixels.
            loc = (int(round(x0 * ds)), int(round(y0 * ds)))
            return np.asarray(self._img.read_region(loc, (x1 - x0, y1 - y0), level))

        return read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        self._img.close()


def cucim_available() -> bool:
    try:
        from cucim import CuImage  # type: ignore[attr-defined]  # noqa: F401
    except Exception:
        return False
    return True


def claims(sig: FileSignature) -> bool:
    """Tiled TIFF/SVS, not a scanner's own TIFF format (cuCIM 26.10 cannot open NDPI: "Cannot find
    a plugin"; OpenSlide or tifffile reads those)."""
    return sig.kind == "tiff" and not sig.scanner and sig.compressions <= CUCIM_SAFE_COMPRESSIONS and cucim_available()


READER = Reader(open=CuCIMSlide.open, claims=claims)
