"""Whole-slide image readers: the only module that opens slide files.

``open_slide(path)`` chooses a reader from the file's own bytes and tags *before* any
decoder touches it:

* cuCIM's ``CuImage`` for tiled TIFF/SVS whose compression it handles (JPEG, Aperio
  JPEG2000), when cuCIM is installed; it is the fastest reader and runs on the CPU too.
* tifffile (+ imagecodecs) for every other TIFF: Deflate/LZW/uncompressed tiles, plain
  TIFFs; cuCIM 26.10 kills the process on a Deflate-compressed tiled TIFF, so such files
  never reach it.
* pydicom (+ imagecodecs) for DICOM VL Whole Slide Microscopy images.
* Pillow for PNG/JPEG images, read as one-level slides.

Every reader returns RGB uint8 regions in the coordinates of the requested level; parts of
a region outside the image are white (glass). Tile windows are read with ``read_mirrored``,
which mirrors the image at its edges instead, so tiles at the slide's edge need no special
case downstream. Microns per pixel come from the vendor metadata with fallbacks, or are
``None`` (the caller then uses the manifest's value, or the default with a warning).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

GLASS = 255  # value used for pixels outside the image
# Base-level resolutions of real slide scanners (µm/px); values outside are metadata placeholders.
PLAUSIBLE_MPP = (0.1, 2.0)

# TIFF compression codes cuCIM decodes correctly (checked on the fixtures): JPEG, Aperio JPEG2000.
CUCIM_SAFE_COMPRESSIONS = frozenset({7, 33003, 33005})


class SlideError(Exception):
    """A slide that cannot be read, with the reason a user can act on."""


class Slide(Protocol):
    path: Path
    reader: str
    level_dimensions: list[tuple[int, int]]  # (width, height) per level, level 0 first
    level_downsamples: list[float]
    mpp: float | None  # microns per level-0 pixel, None when the file does not say
    properties: dict[str, str]

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """RGB uint8 height×width×3; (x, y) and size in pixels of ``level``."""
        ...

    def close(self) -> None: ...


def _clip_window(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Intersection of a requested window with the image: (x0, y0, x1, y1), possibly empty."""
    return max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)


def _read_clipped(
    read: Any, x: int, y: int, w: int, h: int, width: int, height: int
) -> np.ndarray:
    """Read the in-bounds part with ``read(x0, y0, x1, y1)`` and pad the rest with glass."""
    out = np.full((h, w, 3), GLASS, dtype=np.uint8)
    x0, y0, x1, y1 = _clip_window(x, y, w, h, width, height)
    if x1 > x0 and y1 > y0:
        block = np.asarray(read(x0, y0, x1, y1))
        if block.ndim == 2:
            block = np.repeat(block[..., None], 3, axis=2)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = block[..., :3]
    return out


def mirrored_index(positions: np.ndarray, size: int) -> np.ndarray:
    """Positions along an axis of ``size`` pixels, those outside mirrored back in about the edge
    pixels (numpy's ``reflect``: −1 → 1, size → size − 2), repeatedly when far outside."""
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def read_mirrored(slide: Slide, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
    """A window of ``level`` whose parts outside the image are the image mirrored at its edges.

    A tile window at the slide's border then sees the tissue continued, as the model saw it in
    training (and as a tile cut from a larger image was), instead of a cut into white: on the
    validation tiles this is worth +0.003 AJI over glass padding (benchmarks/RESULTS-model.md).
    The mirror is about the image's own edges, not the window's, so every tiling sees the same
    pixels there and the assembled labels stay independent of the tile grid.
    """
    w, h = slide.level_dimensions[level]
    rows = mirrored_index(np.arange(y, y + height), h)
    cols = mirrored_index(np.arange(x, x + width), w)
    r0, c0 = int(rows.min()), int(cols.min())
    block = slide.read_region(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1, level)
    if r0 == y and c0 == x and block.shape[:2] == (height, width):
        return block
    return block[np.ix_(rows - r0, cols - c0)]


# ---------------------------------------------------------------- metadata (vendor quirks) ----

_APERIO_MPP = re.compile(r"\bMPP\s*=\s*([0-9.]+)")
_APERIO_MAG = re.compile(r"\bAppMag\s*=\s*([0-9.]+)")


def mpp_from_tiff(description: str, x_resolution: Any, unit: Any) -> float | None:
    """Microns per pixel from TIFF metadata: Aperio's ``MPP =`` field, then AppMag (10/mag),
    then the TIFF resolution tags when their unit is cm or inch."""
    m = _APERIO_MPP.search(description or "")
    if m and float(m.group(1)) > 0:
        return float(m.group(1))
    m = _APERIO_MAG.search(description or "")
    if m and float(m.group(1)) > 0:
        return 10.0 / float(m.group(1))
    if x_resolution is not None and unit is not None:
        num, den = x_resolution if isinstance(x_resolution, tuple) else (x_resolution, 1)
        px_per_unit = float(num) / float(den) if den else 0.0
        unit_um = {2: 25_400.0, 3: 10_000.0}.get(int(unit))
        if px_per_unit > 0 and unit_um:
            mpp = unit_um / px_per_unit
            if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
                return mpp
    return None


def _tiff_properties(description: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for part in (description or "").split("|")[1:]:
        if "=" in part:
            k, v = part.split("=", 1)
            props[f"aperio.{k.strip()}"] = v.strip()
    return props


# ---------------------------------------------------------------------------- readers ----


@dataclass
class TiffSlide:
    """Tiled or plain TIFF (incl. SVS) through tifffile's Zarr view: reads only the tiles asked for."""

    path: Path
    reader: str = "tifffile"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=list)
    mpp: float | None = None
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
        xres = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        mpp = mpp_from_tiff(
            description, xres.value if xres else None, unit.value if unit else None
        )
        return cls(
            path=path,
            level_dimensions=dims,
            level_downsamples=[dims[0][0] / d[0] for d in dims],
            mpp=mpp,
            properties=_tiff_properties(description),
            _tif=tif,
            _levels=levels,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        arr = self._levels[level]
        w, h = self.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return np.asarray(arr[y0:y1, x0:x1])

        return _read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        self._tif.close()


@dataclass
class CuCIMSlide:
    """cuCIM's CuImage reader (CPU decode for JPEG / JPEG2000 SVS and generic TIFF)."""

    path: Path
    reader: str = "cucim"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=list)
    mpp: float | None = None
    properties: dict[str, str] = field(default_factory=dict)
    _img: Any = None

    @classmethod
    def open(cls, path: Path) -> CuCIMSlide:
        from cucim import CuImage  # type: ignore[attr-defined]

        img = CuImage(str(path))
        res = img.resolutions
        dims = [(int(w), int(h)) for w, h in res["level_dimensions"]]
        meta = img.metadata
        aperio = meta.get("aperio", {}) if isinstance(meta, dict) else {}
        mpp: float | None = None
        if aperio.get("MPP"):
            mpp = float(aperio["MPP"])
        elif aperio.get("AppMag"):
            mpp = 10.0 / float(aperio["AppMag"])
        else:
            spacing = img.spacing()
            units = img.spacing_units()
            if spacing and units and str(units[0]).lower() in ("micrometer", "um", "µm"):
                value = float(spacing[0])
                mpp = value if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1] else None
        return cls(
            path=path,
            level_dimensions=dims,
            level_downsamples=[float(d) for d in res["level_downsamples"]],
            mpp=mpp,
            properties={f"aperio.{k}": str(v) for k, v in aperio.items()},
            _img=img,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        w, h = self.level_dimensions[level]
        ds = self.level_downsamples[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            # CuImage takes the location in level-0 coordinates and the size in level pixels.
            loc = (int(round(x0 * ds)), int(round(y0 * ds)))
            return np.asarray(self._img.read_region(loc, (x1 - x0, y1 - y0), level))

        return _read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        self._img.close()


@dataclass
class DicomSlide:
    """DICOM VL Whole Slide Microscopy image (one level per file), JPEG/JPEG2000 frames."""

    path: Path
    reader: str = "dicom"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=lambda: [1.0])
    mpp: float | None = None
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
        mpp = _dicom_mpp(ds, width)
        slide = cls(
            path=path,
            level_dimensions=[(width, height)],
            mpp=mpp,
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

        return _read_clipped(read, x, y, width, height, w, h)

    def close(self) -> None:
        self._frames = []
        self._cache.clear()


def _dicom_mpp(ds: Any, width: int) -> float | None:
    """PixelSpacing (mm) from the shared functional groups, else ImagedVolumeWidth / columns."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return float(spacing[1]) * 1000.0
    except (AttributeError, IndexError, KeyError):
        pass
    volume_width = ds.get("ImagedVolumeWidth")
    if volume_width:
        # The imaged volume often describes the whole scanned area, not this pixel matrix;
        # trust it only when it gives a scanner-like resolution.
        mpp = float(volume_width) * 1000.0 / width
        if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
            return mpp
    return None


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


@dataclass
class ArraySlide:
    """An image already in memory (a PNG tile, a test image) seen as a one-level slide."""

    image: np.ndarray
    mpp: float | None
    path: Path = Path("<memory>")
    reader: str = "array"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=lambda: [1.0])
    properties: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim == 2:
            self.image = np.repeat(self.image[..., None], 3, axis=2)
        if self.image.ndim != 3 or self.image.shape[2] < 3:
            raise SlideError(f"expected an RGB image, got shape {self.image.shape}")
        self.image = np.ascontiguousarray(self.image[..., :3]).astype(np.uint8, copy=False)
        self.level_dimensions = [(int(self.image.shape[1]), int(self.image.shape[0]))]

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        w, h = self.level_dimensions[0]
        return _read_clipped(lambda x0, y0, x1, y1: self.image[y0:y1, x0:x1], x, y, width, height, w, h)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------ dispatch ----

def _sniff(path: Path) -> str:
    """The file's container, from its first bytes: tiff, dicom, png, jpeg or unknown."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return "unknown"


def tiff_compressions(path: Path) -> set[int]:
    """Compression codes of the pyramid's pages (read from tags only, nothing decoded)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [level.pages[0] for level in tif.series[0].levels]
        return {int(p.compression) for p in pages if isinstance(p, tifffile.TiffPage)}


def cucim_available() -> bool:
    try:
        from cucim import CuImage  # type: ignore[attr-defined]  # noqa: F401
    except Exception:
        return False
    return True


def choose_reader(path: Path, preference: str = "auto") -> str:
    """Name of the reader for ``path``: cucim, tifffile, dicom or image.

    ``preference`` 'auto' picks cuCIM for tiled TIFFs whose compression it decodes safely;
    any other value forces that reader (for experts and tests).
    """
    if not path.exists():
        raise SlideError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise SlideError(f"empty file: {path}")
    kind = _sniff(path)
    if preference != "auto":
        return preference
    if kind == "tiff":
        try:
            compressions = tiff_compressions(path)
        except Exception as exc:
            raise SlideError(f"truncated or corrupt TIFF (its tags cannot be read: {exc})") from exc
        if cucim_available() and compressions <= CUCIM_SAFE_COMPRESSIONS:
            return "cucim"
        return "tifffile"
    if kind == "dicom":
        return "dicom"
    if kind in ("png", "jpeg"):
        return "image"
    raise SlideError("unsupported file format (not TIFF/SVS, DICOM, PNG or JPEG)")


def open_slide(path: str | Path, reader: str = "auto") -> Slide:
    """Open a slide with the reader its own tags call for; raises SlideError with the reason."""
    p = Path(path)
    name = choose_reader(p, reader)
    try:
        slide: Slide
        if name == "cucim":
            slide = CuCIMSlide.open(p)
        elif name == "tifffile":
            slide = TiffSlide.open(p)
        elif name == "dicom":
            slide = DicomSlide.open(p)
        elif name == "image":
            from PIL import Image

            with Image.open(p) as im:
                slide = ArraySlide(np.asarray(im.convert("RGB")), mpp=None, path=p, reader="image")
        else:
            raise SlideError(f"unknown reader {name!r}")
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{name} could not open the file: {type(exc).__name__}: {exc}") from exc
    if slide.level_dimensions[0][0] < 1 or slide.level_dimensions[0][1] < 1:
        raise SlideError("slide has no pixels")
    return slide


def low_resolution_view(slide: Slide, max_side: int = 2048, strip_px: int = 1024) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide no larger than ``max_side`` pixels on its long side,
    and its downsample factor relative to level 0.

    Uses the coarsest pyramid level that is still at least ``max_side`` on its long side and
    reads it in strips, block-averaging each strip, so memory never holds a large level.
    """
    w0, h0 = slide.level_dimensions[0]
    target = max(1.0, max(w0, h0) / max_side)
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= target + 1e-6:
            level = i
    lw, lh = slide.level_dimensions[level]
    factor = max(1, int(math.ceil(max(lw, lh) / max_side)))
    out_w, out_h = math.ceil(lw / factor), math.ceil(lh / factor)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows = max(factor, (strip_px // factor) * factor)
    for y in range(0, lh, rows):
        strip = slide.read_region(0, y, out_w * factor, min(rows, lh - y), level).astype(np.float32)
        sh = strip.shape[0]
        pad = (-sh) % factor
        if pad:
            strip = np.concatenate([strip, np.repeat(strip[-1:], pad, axis=0)])
        blocks = strip.reshape(strip.shape[0] // factor, factor, out_w, factor, 3).mean(axis=(1, 3))
        out[y // factor : y // factor + blocks.shape[0]] = np.round(blocks).astype(np.uint8)
    return out, slide.level_downsamples[level] * factor
