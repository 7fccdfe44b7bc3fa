"""wsidicom for DICOM VL Whole Slide Microscopy series that state their tiling: the pyramid's
levels (one instance each, in one folder or given by one of their files), frames read lazily
through the files' offset tables, ``TILED_FULL`` and ``TILED_SPARSE`` alike.

Files that state neither their image type nor where their frames go (the one-file fixture)
are left to the ``dicom`` reader, which works their order out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import ClosesOnExit, FileSignature, Reader, SlideError, read_clipped
from pipeline.io.readers.dicom import FRAME_CACHE_BYTES, series_files
from pipeline.io.readers.metadata import Resolution, mpp_from_dicom

STATED_TILINGS = ("TILED_FULL", "TILED_SPARSE")


def wsidicom_available() -> bool:
    try:
        import wsidicom  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class WsiDicomSlide(ClosesOnExit):
    """A DICOM WSI series opened with wsidicom (its selected pyramid, first focal plane and optical path)."""

    path: Path
    reader: str = "wsidicom"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=lambda: [1.0])
    mpp: float | None = None
    resolution: Resolution | None = None
    properties: dict[str, str] = field(default_factory=dict)
    _wsi: Any = None
    _levels: list[int] = field(default_factory=list)  # wsidicom's level number (log2 of the downsample) per level

    @classmethod
    def open(cls, path: Path) -> WsiDicomSlide:
        from wsidicom import WsiDicom
        from wsidicom.config import Settings

        files = series_files(path)
        # Caches bounded per open slide (wsidicom's defaults keep 100 MB of each).
        settings = Settings(decoded_frame_cache_size=FRAME_CACHE_BYTES, encoded_frame_cache_size=FRAME_CACHE_BYTES // 4)
        wsi = WsiDicom.open(files, settings=settings)
        try:
            levels = list(wsi.levels)
            if not levels:
                raise SlideError(f"wsidicom found no pyramid level in {path}")
            base = levels[0]
            width, height = base.size.width, base.size.height
            header = base.datasets[0].as_dataset()  # the pydicom data set: parsed as for any DICOM file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # over-long vendor strings
                resolution = mpp_from_dicom(header, width, height)
                patient = str(header.get("PatientID", ""))
        except BaseException:
            wsi.close()
            raise
        return cls(
            path=path,
            level_dimensions=[(lv.size.width, lv.size.height) for lv in levels],
            level_downsamples=[width / lv.size.width for lv in levels],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties={"dicom.PatientID": patient, "dicom.levels": str(len(levels))},
            _wsi=wsi,
            _levels=[lv.level for lv in levels],
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        if not 0 <= level < len(self._levels):
            raise SlideError(f"level {level} does not exist (the slide has {len(self._levels)})")
        w, h = self.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            region = self._wsi.read_region((x0, y0), self._levels[level], (x1 - x0, y1 - y0), as_array=True)
            return np.asarray(region)[..., :3]

        return read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        if self._wsi is not None:
            self._wsi.close()
            self._wsi = None


def _claims(signature: FileSignature) -> bool:
    return signature.kind == "dicom" and signature.dicom_tiling in STATED_TILINGS and wsidicom_available()


READER = Reader(open=WsiDicomSlide.open, claims=_claims)
