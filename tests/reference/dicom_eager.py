"""The previous DICOM reader, verbatim (pipeline/io/readers/dicom.py before the lazy reader):
every frame's bytes read into memory on open. The reference that tests/test_dicom.py compares the
lazy reader's pixels with, and whose memory benchmarks/dicom_memory.py measures as the baseline."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import GLASS, ClosesOnExit, Reader, SlideError, read_clipped
from pipeline.io.readers.metadata import Resolution, mpp_from_dicom


@dataclass
class DicomSlide(ClosesOnExit):
    """DICOM VL Whole Slide Microscopy image (one level per file), JPEG/JPEG2000 frames."""

    path: Path
    reader: str = "dicom"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=lambda: [1.0])
    mpp: float | None = None
    resolution: Resolution | None = None
    properties: dict[str, str] = field(default_factory=dict)
    _frames: list[bytes] = field(default_factory=list)
    _frame_size: tuple[int, int] = (0, 0)  # (rows, columns) of one frame
    _grid: tuple[int, int] = (0, 0)  # (frame rows, frame columns) of the mosaic
    _column_major: bool = False
    _cache: dict[int, np.ndarray] = field(default_factory=dict)
    _positions: dict[tuple[int, int], int] | None = None

    @classmethod
    def open(cls, path: Path) -> DicomSlide:
        import pydicom
        from pydicom.encaps import generate_frames

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # over-long vendor strings
            ds = pydicom.dcmread(path)
        if "TotalPixelMatrixColumns" not in ds:
            raise SlideError("DICOM file is not a tiled whole-slide image (no TotalPixelMatrixColumns)")
        width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames", 1))
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            raise SlideError("uncompressed DICOM WSI frames are not supported")
        frames = list(generate_frames(ds.PixelData, number_of_frames=n_frames))
        grid = (math.ceil(height / rows), math.ceil(width / cols))
        resolution = mpp_from_dicom(ds, width, height)
        slide = cls(
            path=path,
            level_dimensions=[(width, height)],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties={"dicom.PatientID": str(ds.get("PatientID", ""))},
            _frames=frames,
            _frame_size=(rows, cols),
            _grid=grid,
        )
        slide._positions = _dicom_frame_positions(ds, rows, cols)
        if slide._positions is None and str(ds.get("DimensionOrganizationType", "")) != "TILED_FULL":
            # No stated order: pick the one under which neighbouring frames join smoothly.
            slide._column_major = slide._column_major_fits_better()
        return slide

    def _decode(self, index: int) -> np.ndarray:
        if index not in self._cache:
            import imagecodecs

            img = np.asarray(imagecodecs.imread(self._frames[index]))
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = img[..., :3]
        return self._cache[index]

    def _frame_index(self, r: int, c: int) -> int | None:
        if self._positions is not None:
            return self._positions.get((r, c))
        n_rows, n_cols = self._grid
        idx = c * n_rows + r if self._column_major else r * n_cols + c
        return idx if idx < len(self._frames) else None

    def _column_major_fits_better(self) -> bool:
        n_rows, n_cols = self._grid
        if n_rows < 2 or n_cols < 2:
            return False
        score = {False: 0.0, True: 0.0}
        for major in (False, True):
            self._column_major = major
            for r in range(min(n_rows - 1, 3)):
                for c in range(min(n_cols - 1, 3)):
                    a, right, below = (self._frame_index(*p) for p in ((r, c), (r, c + 1), (r + 1, c)))
                    if a is None or right is None or below is None:
                        continue
                    fa = self._decode(a).astype(np.float32)
                    score[major] += float(np.abs(fa[:, -1] - self._decode(right)[:, 0]).mean())
                    score[major] += float(np.abs(fa[-1] - self._decode(below)[0]).mean())
        self._cache.clear()
        return score[True] < score[False]

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        if level != 0:
            raise SlideError("DICOM reader holds one level per file")
        fh, fw = self._frame_size
        w, h = self.level_dimensions[0]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            out = np.full((y1 - y0, x1 - x0, 3), GLASS, dtype=np.uint8)
            for r in range(y0 // fh, (y1 - 1) // fh + 1):
                for c in range(x0 // fw, (x1 - 1) // fw + 1):
                    idx = self._frame_index(r, c)
                    if idx is None:
                        continue
                    frame = self._decode(idx)
                    fy0, fx0 = r * fh, c * fw
                    sy0, sx0 = max(y0, fy0), max(x0, fx0)
                    sy1, sx1 = min(y1, fy0 + frame.shape[0]), min(x1, fx0 + frame.shape[1])
                    if sy1 > sy0 and sx1 > sx0:
                        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[
                            sy0 - fy0 : sy1 - fy0, sx0 - fx0 : sx1 - fx0
                        ]
            return out

        return read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        self._frames = []
        self._cache.clear()


def _dicom_frame_positions(ds: Any, rows: int, cols: int) -> dict[tuple[int, int], int] | None:
    """Frame index per (frame row, frame column) from the per-frame plane positions, if present."""
    seq = ds.get("PerFrameFunctionalGroupsSequence")
    if not seq:
        return None
    positions: dict[tuple[int, int], int] = {}
    for i, item in enumerate(seq):
        try:
            pos = item.PlanePositionSlideSequence[0]
            col = int(pos.ColumnPositionInTotalImagePixelMatrix) - 1
            row = int(pos.RowPositionInTotalImagePixelMatrix) - 1
        except (AttributeError, IndexError):
            return None
        positions[(row // rows, col // cols)] = i
    return positions


READER = Reader(open=DicomSlide.open, claims=lambda sig: sig.kind == "dicom")
