"""wsidicom for DICOM VL Whole Slide Microscopy series that state their tiling: the pyramid's
levels (one instance each, in one folder or given by one of their files), frames read lazily
through the files' offset tables, ``TILED_FULL`` and ``TILED_SPARSE`` alike.

Files that state neither their image type nor where their frames go (the one-file fixture)
are left to the ``dicom`` reader, which works their order out; so are samples wsidicom does not
return as 8-bit RGB (it decodes colour only at 8 bits, and opens no uncompressed YCbCr).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import (
    ClosesOnExit,
    FileSignature,
    Reader,
    SlideError,
    UnreadableRegion,
    UnreadableTile,
    decoder_message,
    read_clipped,
)
from pipeline.io.readers.dicom import (
    FRAME_CACHE_BYTES,
    LAST_SIGNATURE_TAG,
    leading_tags,
    sample_range,
    series_files,
    signature_of,
)
from pipeline.io.readers.metadata import Resolution, mpp_from_dicom

STATED_TILINGS = ("TILED_FULL", "TILED_SPARSE")
# PhotometricInterpretation of frames wsidicom's decoders return as RGB: JPEG / JPEG 2000 streams
# decoded to RGB by their codec, and raw RGB samples (it opens no series of raw YBR_FULL samples).
ENCAPSULATED_RGB = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def reads_as_rgb(signature: FileSignature) -> bool:
    """Whether wsidicom returns this series' frames as 8-bit RGB: it decodes colour only at 8
    bits, and decodes a JPEG frame the header calls RGB without a colour transform even when the
    stream says YCbCr (a JFIF marker)."""
    colour = ENCAPSULATED_RGB if signature.dicom_compressed else ("RGB",)
    return (
        signature.dicom_bits == 8
        and signature.dicom_photometric in colour
        and not signature.dicom_ycbcr_frames_called_rgb
    )


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
    _tile_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of a frame per level

    @classmethod
    def open(cls, path: Path) -> WsiDicomSlide:
        from wsidicom import WsiDicom
        from wsidicom.config import Settings

        files = series_files(path)
        ds = leading_tags(files[0], LAST_SIGNATURE_TAG)
        sample_range(ds, files[0].name)  # grayscale etc.: the reason
        if not reads_as_rgb(signature := signature_of(files[0], ds)):
            stored = "compressed" if signature.dicom_compressed else "uncompressed"
            called = "; its header says RGB, its JPEG frames YCbCr" if signature.dicom_ycbcr_frames_called_rgb else ""
            raise SlideError(
                f"wsidicom reads 8-bit colour frames only (this series: {signature.dicom_bits}-bit "
                f"{signature.dicom_photometric}, {stored}{called}); the dicom reader reads it (--reader dicom, or auto)"
            )
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
            _tile_sizes=[(lv.tile_size.width, lv.tile_size.height) for lv in levels],
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """A region of a level, read with wsidicom.

        Parameters and result as :meth:`pipeline.io.readers.base.Slide.read_region`; raises SlideError when
        ``level`` does not exist, UnreadableRegion naming the tiles of the region that cannot be decoded.
        """
        if not 0 <= level < len(self._levels):
            raise SlideError(f"level {level} does not exist (the slide has {len(self._levels)})")
        w, h = self.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            try:
                region = self._wsi.read_region((x0, y0), self._levels[level], (x1 - x0, y1 - y0), as_array=True)
            except OSError:
                raise
            except Exception as exc:
                bad = self.unreadable_tiles(level, x0, y0, x1, y1)
                if not bad:
                    raise
                raise UnreadableRegion(bad) from exc
            return np.asarray(region)[..., :3]

        return read_clipped(read, x, y, width, height, w, h)

    def unreadable_tiles(self, level: int, x0: int, y0: int, x1: int, y1: int) -> list[UnreadableTile]:
        """The frames in a window that fail to decode, found by reading each alone (only after a
        read failed: wsidicom raises the decoder's error for the region, not naming the frame).

        Parameters
        ----------
        level : int
            Pyramid level of the window.
        x0, y0, x1, y1 : int
            The window [x0, x1) × [y0, y1), in pixels of ``level``.

        Returns
        -------
        list of UnreadableTile
            The failing frames, in pixels of ``level``; empty when each frame reads alone.
        """
        tw, th = self._tile_sizes[level]
        bad = []
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                try:
                    self._wsi.read_tile(self._levels[level], (tx, ty), as_array=True)
                except OSError:
                    raise
                except Exception as exc:
                    bad.append(UnreadableTile(level, tx * tw, ty * th, tw, th, decoder_message(exc)))
        return bad

    def close(self) -> None:
        if self._wsi is not None:
            self._wsi.close()
            self._wsi = None


def _claims(signature: FileSignature) -> bool:
    return (
        signature.kind == "dicom"
        and signature.dicom_tiling in STATED_TILINGS
        and reads_as_rgb(signature)
        and wsidicom_available()
    )


READER = Reader(open=WsiDicomSlide.open, claims=_claims)
