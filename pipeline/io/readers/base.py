"""What every reader gives: the :class:`Slide` protocol, the error a user can act on, and the
reads built on any reader (mirrored tile windows, the low-resolution view).

Every reader returns RGB uint8 regions in the coordinates of the requested level; parts of a
region outside the image are white (glass). Tile windows are read with :func:`read_mirrored`,
which mirrors the image at its edges instead, so tiles at the slide's edge need no special case
downstream. A slide is a context manager: ``with open_slide(path) as slide: ...`` closes it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from pipeline.io.readers.metadata import Resolution

GLASS = 255  # value used for pixels outside the image


class SlideError(Exception):
    """A slide that cannot be read, with the reason a user can act on."""


@dataclass(frozen=True)
class UnreadableTile:
    """A tile of the file (its own storage tile, in pixels of ``level``) that cannot be decoded."""

    level: int
    x: int
    y: int
    width: int
    height: int
    error: str

    def describe(self) -> str:
        return f"level {self.level}, x {self.x}, y {self.y} ({self.width}×{self.height} px)"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class UnreadableRegion(SlideError):
    """A read that met tiles the decoder rejects (bad JPEG data inside a tile), naming them."""

    def __init__(self, tiles: list[UnreadableTile]) -> None:
        self.tiles = list(tiles)
        where = "; ".join(t.describe() for t in self.tiles[:MAX_TILES_NAMED])
        more = f" and {len(self.tiles) - MAX_TILES_NAMED} more" if len(self.tiles) > MAX_TILES_NAMED else ""
        super().__init__(f"unreadable tile at {where}{more}: {self.tiles[0].error}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries with its tiles
        return (UnreadableRegion, (self.tiles,))


MAX_TILES_NAMED = 5  # in one error message; stats.json lists them all


def decoder_message(exc: BaseException) -> str:
    """A decoder's error on one line, bounded (libjpeg's run over several lines)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


class Slide(Protocol):
    path: Path
    reader: str
    level_dimensions: list[tuple[int, int]]  # (width, height) per level, level 0 first
    level_downsamples: list[float]
    mpp: float | None  # microns per level-0 pixel, None when the file does not say
    resolution: Resolution | None  # the same, with the metadata field it came from
    properties: dict[str, str]

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """RGB uint8 height×width×3; (x, y) and size in pixels of ``level``.

        Parameters
        ----------
        x, y : int
            Top-left corner of the region, in pixels of ``level`` (x: column, y: row). It may lie
            outside the image.
        width, height : int
            Size of the region, in pixels of ``level``.
        level : int, optional
            Pyramid level to read, 0 being full resolution.

        Returns
        -------
        np.ndarray
            RGB uint8 array of shape (height, width, 3); the parts outside the image are glass
            (white, 255).
        """
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ClosesOnExit:
    """Mixin for readers: ``with`` closes the slide."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class FileSignature:
    """What a file is, from its first bytes and (for TIFF) its tags, before any decoder runs."""

    kind: str  # tiff | dicom | png | jpeg | unknown
    compressions: frozenset[int] = frozenset()  # TIFF compression codes of the pyramid's levels
    dicom_tiling: str = ""  # DICOM: TILED_FULL | TILED_SPARSE as the level states it, else 'unstated'
    dicom_bits: int = 0  # DICOM: BitsAllocated
    dicom_photometric: str = ""  # DICOM: PhotometricInterpretation
    dicom_compressed: bool = False  # DICOM: frames encapsulated (JPEG, JPEG 2000, ...), not raw samples
    dicom_ycbcr_frames_called_rgb: bool = False  # DICOM: the header says RGB, its JPEG frames say YCbCr (JFIF)
    scanner: str = ""  # a scanner's own format read through OpenSlide (e.g. "Hamamatsu NDPI"), '' for none


@dataclass(frozen=True)
class Reader:
    """A registered reader: whether it takes a file (from its signature), and how to open it."""

    open: Callable[[Path], Slide]
    claims: Callable[[FileSignature], bool]


def _clip_window(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Intersection of a requested window with the image: (x0, y0, x1, y1), possibly empty."""
    return max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)


def read_clipped(read: Any, x: int, y: int, w: int, h: int, width: int, height: int) -> np.ndarray:
    """Read the in-bounds part with ``read(x0, y0, x1, y1)`` and pad the rest with glass.

    Parameters
    ----------
    read : callable
        ``read(x0, y0, x1, y1)`` returns the in-bounds window [x0, x1) × [y0, y1) as an array of
        shape (y1 - y0, x1 - x0) or (y1 - y0, x1 - x0, channels); a grey one is repeated into RGB
        and channels past the third are dropped. Not called when the window misses the image.
    x, y : int
        Top-left corner of the requested window, in pixels of the image (x: column, y: row).
    w, h : int
        Size of the requested window, in pixels.
    width, height : int
        Size of the image, in pixels.

    Returns
    -------
    np.ndarray
        RGB uint8 array of shape (h, w, 3), glass (255) outside the image.
    """
    out = np.full((h, w, 3), GLASS, dtype=np.uint8)
    x0, y0, x1, y1 = _clip_window(x, y, w, h, width, height)
    if x1 > x0 and y1 > y0:
        block = np.asarray(read(x0, y0, x1, y1))
        if block.ndim == 2:
            block = np.repeat(block[..., None], 3, axis=2)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = block[..., :3]
    return out


def rgb8(samples: np.ndarray, max_value: int | None = None, alpha: str | None = None) -> np.ndarray:
    """RGB uint8 from a reader's samples (H×W×3 or H×W×4).

    ``max_value``: the samples are deeper than 8 bits and are scaled from ``[0, max_value]``
    (the image's declared range) to ``[0, 255]``; casting them would keep their low byte (noise)
    and clipping them would turn them white. ``alpha``: the fourth sample is opacity,
    ``"straight"`` or ``"premultiplied"``; a transparent pixel is glass (white), not what its
    colour samples hold (often black, which would read as tissue).

    >>> rgb8(np.array([[[65535, 32768, 0]]], dtype=np.uint16), 65535).tolist()
    [[[255, 128, 0]]]
    >>> rgb8(np.array([[[0, 0, 0, 0], [200, 100, 50, 255]]], dtype=np.uint8), alpha="straight").tolist()
    [[[255, 255, 255], [200, 100, 50]]]
    """
    if max_value is None and alpha is None:
        return samples[..., :3]
    scale = 255.0 / max_value if max_value is not None else 1.0
    values = samples.astype(np.float32) * np.float32(scale)
    rgb = values[..., :3]
    if alpha is not None:
        opacity = np.clip(values[..., 3:4] / 255.0, 0.0, 1.0)
        colour = rgb * opacity if alpha == "straight" else rgb
        rgb = colour + GLASS * (1.0 - opacity)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def mirrored_index(positions: np.ndarray, size: int) -> np.ndarray:
    """Positions along an axis of ``size`` pixels, those outside mirrored back in about the edge
    pixels (numpy's ``reflect``: −1 → 1, size → size − 2), repeatedly when far outside."""
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def read_mirrored(
    slide: Slide | GlassWhereUnreadable, x: int, y: int, width: int, height: int, level: int = 0
) -> np.ndarray:
    """A window of ``level`` whose parts outside the image are the image mirrored at its edges.

    A tile window at the slide's border then sees the tissue continued, as the model saw it in
    training (and as a tile cut from a larger image was), instead of a cut into white: on the
    validation tiles this is worth +0.003 AJI over glass padding (benchmarks/RESULTS-model.md).
    The mirror is about the image's own edges, not the window's, so every tiling sees the same
    pixels there and the assembled labels stay independent of the tile grid.

    Parameters
    ----------
    slide : Slide or GlassWhereUnreadable
        The slide to read.
    x, y : int
        Top-left corner of the window, in pixels of ``level`` (x: column, y: row); it may lie
        outside the image.
    width, height : int
        Size of the window, in pixels of ``level``.
    level : int, optional
        Pyramid level to read, 0 being full resolution.

    Returns
    -------
    np.ndarray
        RGB uint8 array of shape (height, width, 3).
    """
    w, h = slide.level_dimensions[level]
    rows = mirrored_index(np.arange(y, y + height), h)
    cols = mirrored_index(np.arange(x, x + width), w)
    r0, c0 = int(rows.min()), int(cols.min())
    block = slide.read_region(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1, level)
    if r0 == y and c0 == x and block.shape[:2] == (height, width):
        return block
    return take_runs(take_runs(block, rows - r0, 0), cols - c0, 1)


def take_runs(array: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``array.take(index, axis)`` for an index made of a few runs that step by +1 or −1 (a
    mirrored range), copied as slices: 1 ms instead of 17 for a 1248² RGB window's fancy index.

    >>> take_runs(np.arange(5), np.array([2, 1, 0, 1, 2, 3, 4, 3]), 0).tolist()
    [2, 1, 0, 1, 2, 3, 4, 3]
    """
    steps = np.diff(index)
    if not np.all(np.abs(steps) == 1):  # repeats (an axis one pixel long)
        return array.take(index, axis=axis)
    starts = [0, *(np.flatnonzero(steps[1:] != steps[:-1]) + 1).tolist(), index.size]
    pieces = []
    for start, stop in itertools.pairwise(starts):
        first, last = int(index[start]), int(index[stop - 1])
        run = slice(first, last + 1) if last >= first else slice(first, last - 1 if last > 0 else None, -1)
        pieces.append(array[(slice(None),) * axis + (run,)])
    # one run is a view (reversed, when the window lies wholly beyond an edge): a copy, as the index gave
    return np.ascontiguousarray(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces, axis=axis)


# Pixels of a slide level read at once while building the low-resolution view: 8 Mpx is 24 MB as
# RGB and 96 MB as float32 while block-averaged, so the view stays far under 1 GB however wide
# the slide (a 300,000×1,000 px header made one strip of the whole width peak at 3.9 GB).
VIEW_BLOCK_PX = 8 * 2**20
# The most pixels of one level the view may read: a level of 2^30 px (32,768² px) takes ~70 s at the
# view's rate measured on 2 busy cores (15 Mpx/s, benchmarks/RESULTS-faults.md). A file whose smallest
# fitting level is larger has no pyramid (a one-level 100,000² px file spent over 160 s decoding
# glass) and is refused.
MAX_VIEW_SOURCE_PX = 2**30


def low_resolution_view(
    slide: Slide,
    max_side: int = 2048,
    strip_px: int = 1024,
    block_px: int = VIEW_BLOCK_PX,
    unreadable: list[UnreadableTile] | None = None,
) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide no larger than ``max_side`` pixels on its long side,
    and its downsample factor relative to level 0.

    Uses the coarsest pyramid level that is still at least ``max_side`` on its long side and
    reads it in blocks of at most ``block_px`` pixels (bands of ``strip_px`` rows, split across
    the width), block-averaging each, so memory never holds a large part of a level. A level over
    :data:`MAX_VIEW_SOURCE_PX` is refused (a slide without a pyramid), naming its size.

    With an ``unreadable`` list, tiles the decoder rejects are appended to it and seen as glass
    (so they are no tissue); without one, they raise :class:`UnreadableRegion`.

    Parameters
    ----------
    slide : Slide
        The slide to view.
    max_side : int, optional
        Largest side of the view, in pixels.
    strip_px : int, optional
        Rows of the source level read at a time (rounded to a multiple of the averaging factor).
    block_px : int, optional
        Most pixels of the source level read in one block.
    unreadable : list of UnreadableTile, optional
        Collects the tiles that cannot be decoded, which are then seen as glass; None raises on
        them instead.

    Returns
    -------
    view : np.ndarray
        RGB uint8 array of shape (rows, columns, 3), its long side at most ``max_side``.
    downsample : float
        Level-0 pixels per view pixel.

    Raises
    ------
    SlideError
        When the level used is over :data:`MAX_VIEW_SOURCE_PX` pixels.
    UnreadableRegion
        When a tile cannot be decoded and ``unreadable`` is None.
    """
    w0, h0 = slide.level_dimensions[0]
    target = max(1.0, max(w0, h0) / max_side)
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= target + 1e-6:
            level = i
    lw, lh = slide.level_dimensions[level]
    if lw * lh > MAX_VIEW_SOURCE_PX:
        raise SlideError(
            f"no pyramid level small enough for the low-resolution view: the smallest one of at least "
            f"{max_side} px is level {level}, {lw:,}×{lh:,} px (at most {MAX_VIEW_SOURCE_PX:,} px are read for "
            "the view); convert the slide to a pyramidal TIFF (e.g. vips tiffsave IN OUT.tif --tile --pyramid "
            "--compression jpeg)"
        )
    factor = max(1, int(math.ceil(max(lw, lh) / max_side)))
    out_w, out_h = math.ceil(lw / factor), math.ceil(lh / factor)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows = max(factor, (strip_px // factor) * factor)
    cols = max(factor, (block_px // rows) // factor * factor)
    for y in range(0, lh, rows):
        for x in range(0, out_w * factor, cols):
            width = min(cols, out_w * factor - x)
            height = min(rows, lh - y)
            try:
                block = slide.read_region(x, y, width, height, level).astype(np.float32)
            except UnreadableRegion as exc:
                if unreadable is None:
                    raise
                block = read_around(slide, x, y, width, height, level, exc.tiles, unreadable).astype(np.float32)
            pad = (-block.shape[0]) % factor
            if pad:
                block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
            means = block.reshape(block.shape[0] // factor, factor, width // factor, factor, 3).mean(axis=(1, 3))
            out[y // factor : y // factor + means.shape[0], x // factor : (x + width) // factor] = np.round(means)
    return out, slide.level_downsamples[level] * factor


def read_around(
    slide: Slide,
    x: int,
    y: int,
    width: int,
    height: int,
    level: int,
    bad: list[UnreadableTile],
    unreadable: list[UnreadableTile],
) -> np.ndarray:
    """A region read cell by cell on the grid of the file's tiles (the size of the ``bad`` ones),
    with glass where a cell cannot be decoded; those tiles are appended to ``unreadable``.

    Parameters
    ----------
    slide : Slide
        The slide to read.
    x, y : int
        Top-left corner of the region, in pixels of ``level`` (x: column, y: row).
    width, height : int
        Size of the region, in pixels of ``level``.
    level : int
        Pyramid level to read.
    bad : list of UnreadableTile
        The tiles a read of the region failed on; the first one's size is the grid's cell size.
    unreadable : list of UnreadableTile
        Tiles that fail here are appended to it (each once).

    Returns
    -------
    np.ndarray
        RGB uint8 array of shape (height, width, 3), glass (255) where a cell cannot be decoded.
    """
    out = np.full((height, width, 3), GLASS, dtype=np.uint8)
    tw, th = max(1, bad[0].width), max(1, bad[0].height)
    for cy in range(y // th * th, y + height, th):
        for cx in range(x // tw * tw, x + width, tw):
            x0, y0 = max(cx, x), max(cy, y)
            x1, y1 = min(cx + tw, x + width), min(cy + th, y + height)
            try:
                out[y0 - y : y1 - y, x0 - x : x1 - x] = slide.read_region(x0, y0, x1 - x0, y1 - y0, level)
            except UnreadableRegion as exc:
                unreadable.extend(t for t in exc.tiles if t not in unreadable)
    return out


class GlassWhereUnreadable:
    """A slide whose reads show glass where the file's tiles cannot be decoded, and list those
    tiles (in ``unreadable``): a segmentation window reads the rest of its pixels."""

    def __init__(self, slide: Slide, unreadable: list[UnreadableTile]) -> None:
        self.slide = slide
        self.unreadable = unreadable
        self.level_dimensions = slide.level_dimensions

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """A region of the slide, with glass where its file's tiles cannot be decoded (those tiles
        are appended to ``unreadable``); parameters and result as :meth:`Slide.read_region`.
        """
        try:
            return self.slide.read_region(x, y, width, height, level)
        except UnreadableRegion as exc:
            return read_around(self.slide, x, y, width, height, level, exc.tiles, self.unreadable)
