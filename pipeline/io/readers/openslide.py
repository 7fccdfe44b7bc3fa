"""OpenSlide for the scanners' own formats that no other reader opens: 3DHISTECH MIRAX (.mrxs),
Leica SCN, Ventana/Roche BIF, Hamamatsu VMS/VMU and NDPI, Sakura SVSlide, Trestle, and any other
format OpenSlide detects in a file the other readers do not take.

OpenSlide is an optional extra (``openslide-python`` with its library from ``openslide-bin``).
Without it, a slide in one of these formats fails with the command that installs it; NDPI is then
read by tifffile (the same pixels on the real NDPI fixtures; cuCIM cannot open NDPI).

Opening reads the file's index and metadata, no pixels; a region decodes only the tiles it
covers, into at most the region itself (RGBA, 4 bytes a pixel) plus OpenSlide's tile cache
(:data:`TILE_CACHE_BYTES` per open slide). The format is recognised from the file's own signs
before any decoder runs (:func:`scanner_format`), by the rules OpenSlide itself detects them with.
"""

from __future__ import annotations

import threading
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
    rgb8,
)
from pipeline.io.readers.metadata import Resolution, mpp_from_openslide

INSTALL = 'pip install "nuclei-pipeline[openslide]"'
# OpenSlide's own default (32 MiB per open slide): a tile task's window (~1,250² px at level 0)
# covers a few dozen 240–512 px tiles, so its neighbours' shared border tiles stay cached.
TILE_CACHE_BYTES = 32 * 2**20
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
SQLITE_MAGIC = b"SQLite format 3\x00"
# Formats read through OpenSlide, by the name OpenSlide's detection gives them (its vendor backend),
# as a person names them in a message.
FORMAT_NAMES = {
    "hamamatsu": "Hamamatsu",
    "leica": "Leica SCN",
    "mirax": "3DHISTECH MIRAX",
    "sakura": "Sakura SVSlide",
    "trestle": "Trestle TIFF",
    "ventana": "Ventana BIF",
}
# TIFF-based formats OpenSlide reads and the other readers do not (or not correctly): recognised
# by the tags OpenSlide's detection looks for, read here with tifffile (only tags, no pixels).
NDPI = "Hamamatsu NDPI"
# Formats tifffile reads when OpenSlide is not installed: NDPI gave the same pixels through both
# readers on the real NDPI fixtures (JPEG levels with restart markers); the others stitch tiles
# that overlap (BIF, Trestle) or hold several images of which the first may be the macro (SCN).
READ_WITHOUT_OPENSLIDE = frozenset({NDPI})
INI_GROUPS = {
    "[Virtual Microscope Specimen]": "Hamamatsu VMS",
    "[Uncompressed Virtual Microscope Specimen]": "Hamamatsu VMU",
}
INI_HEAD_BYTES = 64 * 1024  # the group header opens a VMS/VMU index, a few hundred bytes long
OPAQUE = 255  # alpha of a pixel the scanner imaged


def openslide_available() -> bool:
    """Whether OpenSlide and its library load (``openslide-python`` without ``openslide-bin``
    or a system library does not)."""
    try:
        import openslide  # noqa: F401
    except Exception:
        return False
    return True


def scanner_format(path: Path, head: bytes) -> str:
    """The scanner format OpenSlide reads that ``path`` is in (e.g. "Hamamatsu VMS"), '' for
    none; ``head`` is the file's first bytes. Recognised without OpenSlide: the signs its
    detection looks for (a TIFF's vendor tags, the VMS/VMU index group, the MIRAX folder, the
    SVSlide database); with OpenSlide, also any other format it detects in a file that is not
    TIFF, DICOM, PNG or JPEG."""
    if head[:4] in TIFF_MAGIC:
        return tiff_scanner_format(path)
    if head[128:132] == b"DICM":
        return ""
    if path.suffix.lower() == ".mrxs" and (path.with_suffix("") / "Slidedat.ini").is_file():
        return FORMAT_NAMES["mirax"]
    if path.suffix.lower() == ".svslide" and head.startswith(SQLITE_MAGIC):
        return FORMAT_NAMES["sakura"]
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n":
        return ""
    with open(path, "rb") as f:
        text = f.read(INI_HEAD_BYTES).decode("latin-1")
    for group, name in INI_GROUPS.items():
        if group in text:
            return name
    if openslide_available():
        import openslide

        detected = openslide.OpenSlide.detect_format(str(path))
        if detected:
            return FORMAT_NAMES.get(detected, f"{detected} (as OpenSlide calls it)")
    return ""


def tiff_scanner_format(path: Path) -> str:
    """A TIFF's scanner format read through OpenSlide: NDPI (tag 65420), Leica SCN (its XML
    description), Ventana BIF (XMP with the scanner's software), Trestle (Software "MedScan")."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if page.is_ndpi:
            return NDPI
        if page.is_scn:
            return FORMAT_NAMES["leica"]
        if page.is_bif:
            return FORMAT_NAMES["ventana"]
        if str(page.software or "").startswith("MedScan") and page.description:
            return FORMAT_NAMES["trestle"]
    return ""


@dataclass
class OpenSlideSlide(ClosesOnExit):
    """A slide opened with OpenSlide: its pyramid levels, regions in level coordinates."""

    path: Path
    reader: str = "openslide"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=list)
    mpp: float | None = None
    resolution: Resolution | None = None
    properties: dict[str, str] = field(default_factory=dict)
    _slide: Any = None
    _error: type[BaseException] = Exception  # OpenSlide's error (its module loads only with the extra)
    _reopening: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, path: Path) -> OpenSlideSlide:
        if not openslide_available():
            name = scanner_format(path, _head(path)) or "this slide's format"
            raise SlideError(f"{name} is read through OpenSlide, which is not installed: {INSTALL}")
        import openslide

        try:
            slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError("not a format OpenSlide reads") from None
        except openslide.OpenSlideError as exc:
            raise SlideError(f"OpenSlide could not open the file: {decoder_message(exc)}") from None
        try:
            slide.set_cache(openslide.OpenSlideCache(TILE_CACHE_BYTES))
            dims = [(int(w), int(h)) for w, h in slide.level_dimensions]
            properties = dict(slide.properties)
            resolution = mpp_from_openslide(properties, *dims[0])
        except BaseException:
            slide.close()
            raise
        return cls(
            path=path,
            level_dimensions=dims,
            level_downsamples=[float(d) for d in slide.level_downsamples],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties=properties,
            _slide=slide,
            _error=openslide.OpenSlideError,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """A region of a level, read with OpenSlide.

        Parameters and result as :meth:`pipeline.io.readers.base.Slide.read_region`; raises UnreadableRegion
        naming the tiles of the region that cannot be decoded.
        """
        w, h = self.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            try:
                return self._read(x0, y0, x1 - x0, y1 - y0, level)
            except self._error as exc:
                self._reopen()
                raise UnreadableRegion(self.unreadable_tiles(level, x0, y0, x1, y1, exc)) from exc

        return read_clipped(read, x, y, width, height, w, h)

    def _read(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        """RGB of an in-bounds window: OpenSlide takes the location in level-0 pixels and gives
        premultiplied RGBA, transparent where the scanner stored nothing (glass here)."""
        ds = self.level_downsamples[level]
        rgba = np.asarray(self._slide.read_region((round(x * ds), round(y * ds)), level, (width, height)))
        if rgba[..., 3].min() == OPAQUE:
            return rgba[..., :3]
        return rgb8(rgba, alpha="premultiplied")

    def unreadable_tiles(
        self, level: int, x0: int, y0: int, x1: int, y1: int, exc: BaseException
    ) -> list[UnreadableTile]:
        """The file's tiles in a window that fail to decode, each read alone (only after a read
        failed; OpenSlide refuses every later read of a handle that met an error, so it is
        opened again after each); the whole window when no single tile fails.

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
        tw = int(self.properties.get(f"openslide.level[{level}].tile-width", 0)) or (x1 - x0)
        th = int(self.properties.get(f"openslide.level[{level}].tile-height", 0)) or (y1 - y0)
        w, h = self.level_dimensions[level]
        bad = []
        for ty in range(y0 // th * th, y1, th):
            for tx in range(x0 // tw * tw, x1, tw):
                try:
                    self._read(tx, ty, min(tw, w - tx), min(th, h - ty), level)
                except self._error as tile_exc:
                    self._reopen()
                    bad.append(UnreadableTile(level, tx, ty, tw, th, decoder_message(tile_exc)))
        return bad or [UnreadableTile(level, x0, y0, x1 - x0, y1 - y0, decoder_message(exc))]

    def _reopen(self) -> None:
        """A fresh handle in place of one that met an error; the old one is not closed here, as
        another thread may be reading through it (it closes once no read holds it)."""
        import openslide

        with self._reopening:
            slide = openslide.OpenSlide(str(self.path))
            slide.set_cache(openslide.OpenSlideCache(TILE_CACHE_BYTES))
            self._slide = slide

    def close(self) -> None:
        self._slide.close()


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(132)


def claims(sig: FileSignature) -> bool:
    """A scanner format only OpenSlide reads; without OpenSlide it claims them too (to fail with
    the command that installs it), except NDPI, which tifffile then reads."""
    if not sig.scanner:
        return False
    return sig.scanner not in READ_WITHOUT_OPENSLIDE or openslide_available()


READER = Reader(open=OpenSlideSlide.open, claims=claims)
