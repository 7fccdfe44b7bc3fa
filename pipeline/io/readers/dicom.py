"""pydicom (+ imagecodecs) for DICOM VL Whole Slide Microscopy images that wsidicom cannot index:
files that state neither their frames' order nor their image type (the one-file fixture), read
lazily.

Opening reads each level's header and its offset table, not its pixel data (without a table,
the 8-byte header of every fragment); a region then reads and decodes only the frames it covers,
through one file handle per level, keeping at most :data:`FRAME_CACHE_BYTES` of decoded frames.
A slide path is one file or a folder; either way, every level of the series found beside it is
opened (one instance per level, as scanners export pyramids).

Frames are placed by their per-frame positions when the file gives them, row by row when it says
``TILED_FULL``, and otherwise in the order under which neighbouring frames join smoothly (the
fixture's are column by column without saying so).
"""

from __future__ import annotations

import functools
import math
import os
import struct
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.readers.base import (
    GLASS,
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
from pipeline.io.readers.metadata import Resolution, mpp_from_dicom

# Decoded frames kept per open level: a tile window (1024 px core + halo at the model's
# resolution, config.tile_px) covers ~25 frames of 256² (5 MiB) and shares its border frames
# with the next tile of the task; 32 MiB holds them with room for 500² frames, while a whole
# decoded slide would be gigabytes.
FRAME_CACHE_BYTES = 32 * 1024 * 1024
DICM_OFFSET = 128  # the "DICM" magic follows a 128-byte preamble (PS3.10 §7.1)
ITEM = (0xFFFE, 0xE000)  # encapsulated pixel data: an item (offset table or fragment)
SEQUENCE_END = (0xFFFE, 0xE0DD)
PIXEL_DATA = (0x7FE0, 0x0010)
# Encapsulated transfer syntaxes (PS3.5 §10) → imagecodecs decoder; any other goes to
# imagecodecs.imread, which tries its codecs in turn (3× slower on a 256² JPEG frame, measured).
DECODERS = {
    "1.2.840.10008.1.2.4.50": "jpeg8_decode",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "jpeg8_decode",  # JPEG extended
    "1.2.840.10008.1.2.4.80": "jpegls_decode",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "jpegls_decode",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "jpeg2k_decode",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "jpeg2k_decode",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "jpeg2k_decode",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "jpeg2k_decode",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "jpeg2k_decode",  # HTJ2K
}
NON_VOLUME = ("LABEL", "OVERVIEW", "THUMBNAIL")  # ImageType values of instances that are not pyramid levels
LAST_IDENTITY_TAG = 0x00480007  # TotalPixelMatrixRows: after ImageType, SeriesInstanceUID, TotalPixelMatrixColumns
LAST_SIGNATURE_TAG = 0x00280103  # PixelRepresentation: after ImageType, DimensionOrganizationType, BitsAllocated
# PhotometricInterpretation values of colour frames (PS3.3 C.7.6.3.1.2): JPEG and JPEG 2000 decoders
# return RGB for YBR_FULL_422 / YBR_FULL / YBR_ICT / YBR_RCT streams; uncompressed YBR_FULL is
# converted here (uncompressed YBR_FULL_422 stores chroma for pixel pairs: not read).
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a regular file carrying the DICOM Part 10 magic."""
    try:
        with open(path, "rb") as f:
            f.seek(DICM_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: Path) -> tuple[Any, int]:
    """A DICOM file's data set without its pixel data, and the offset of the pixel data element."""
    import pydicom

    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # over-long vendor strings, checked as values are read
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        for _ in ds:  # read every top-level value now, inside this filter
            pass
        return ds, fp.tell()


def _is_level(ds: Any) -> bool:
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    return "TotalPixelMatrixColumns" in ds and not any(kind in image_type for kind in NON_VOLUME)


def leading_tags(path: Path, last: int) -> Any:
    """The data set's elements up to tag ``last`` only (elements come in tag order): a few hundred
    bytes, however large the rest of the header (per-frame groups) is."""
    from pydicom.filereader import read_partial

    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = read_partial(fp, stop_when=lambda tag, vr, length: tag > last)
        for _ in ds:
            pass
        return ds


@functools.lru_cache(maxsize=4096)
def _cached_identity(path: str, size: int, mtime_ns: int) -> tuple[str, bool]:
    ds = leading_tags(Path(path), LAST_IDENTITY_TAG)
    return str(ds.get("SeriesInstanceUID", "")), _is_level(ds)


def _identity(path: Path) -> tuple[str, bool]:
    """(SeriesInstanceUID, is a pyramid level), remembered per file version: a tile task that
    opens one file of a large folder does not read every other file's header again."""
    st = path.stat()
    return _cached_identity(str(path), st.st_size, st.st_mtime_ns)


def _sibling_identity(path: Path) -> tuple[str, bool]:
    """:func:`_identity` of a file beside the slide's: one whose header cannot be read is not a level."""
    try:
        return _identity(path)
    except Exception:
        return "", False


def series_files(path: Path) -> list[Path]:
    """The files of the pyramid levels of the series at ``path``: a folder holding one series'
    instances, or one file, which brings the levels of its series found beside it (files with
    its suffix). Labels, overviews and thumbnails are left out. A folder with no DICOM
    whole-slide image or more than one series, or a file that is not a level, is a SlideError."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and is_dicom_file(p))
        if not files:
            raise SlideError(f"folder holds no DICOM files: {path}")
        found = {p: _sibling_identity(p) for p in files}
        levels = [p for p in files if found[p][1]]
        series = {found[p][0] for p in levels}
        if not levels:
            raise SlideError(f"folder holds no tiled DICOM whole-slide image (no TotalPixelMatrixColumns): {path}")
        if len(series) > 1:
            raise SlideError(f"folder holds {len(series)} DICOM series, not one slide: {path}")
        return levels
    uid, level = _identity(path)
    if not level:
        raise SlideError(
            f"not a tiled DICOM whole-slide image level (no TotalPixelMatrixColumns, or a label/overview): {path}"
        )
    siblings = [
        p
        for p in sorted(path.parent.iterdir())
        if p != path and p.suffix.lower() == path.suffix.lower() and p.is_file() and is_dicom_file(p)
    ]
    return [path, *(p for p in siblings if uid and _sibling_identity(p) == (uid, True))]


def series_levels(path: Path) -> list[tuple[Path, Any, int]]:
    """(file, header, pixel data offset) per pyramid level of the series at ``path`` (see
    :func:`series_files`), largest first; of two instances of one size (focal planes, optical
    paths) the first by name is kept."""
    levels: dict[tuple[int, int], tuple[Path, Any, int]] = {}
    for p in series_files(path):
        ds, offset = read_header(p)
        levels.setdefault((int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)), (p, ds, offset))
    return [levels[size] for size in sorted(levels, key=lambda s: -s[0] * s[1])]


def dicom_signature(path: Path) -> FileSignature:
    """What a DICOM slide is, from its first level's leading tags: how it states where its frames
    go ('TILED_FULL' or 'TILED_SPARSE' for a pyramid level, ImageType VOLUME, whose
    DimensionOrganizationType says so, else 'unstated') and how its samples are stored; for JPEG
    frames the header calls RGB, the colour space the first frame's stream names (one fragment read)."""
    first = series_files(path)[0]
    return signature_of(first, leading_tags(first, LAST_SIGNATURE_TAG))


def signature_of(first: Path, ds: Any) -> FileSignature:
    """:func:`dicom_signature` from the first level's file and its leading tags, already read."""
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    stated = str(ds.get("DimensionOrganizationType", "")).upper()
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    syntax = str(ds.file_meta.TransferSyntaxUID)
    stream = jpeg_stream_colour(first_fragment(first)) if photometric == "RGB" and syntax in JPEG8_SYNTAXES else None
    return FileSignature(
        "dicom",
        dicom_tiling=stated if "VOLUME" in image_type and stated in ("TILED_FULL", "TILED_SPARSE") else "unstated",
        dicom_bits=int(ds.get("BitsAllocated", 8)),
        dicom_photometric=photometric,
        dicom_compressed=bool(ds.file_meta.TransferSyntaxUID.is_encapsulated),
        dicom_ycbcr_frames_called_rgb=stream == "YCbCr",
    )


def first_fragment(path: Path) -> bytes:
    """The first fragment of a level's encapsulated frames, where its first frame's JPEG header
    lies (the level's header and offset table are read, no other frame)."""
    ds, offset = read_header(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if struct.unpack("<HH", os.pread(fd, 4, offset).ljust(4, b"\0")) != PIXEL_DATA:
            raise SlideError("DICOM pixel data not found after the header")
        table = _items(fd, offset + 12, offset + 13, size)  # encapsulated: explicit VR, 12-byte element header
        fragments = _items(fd, table[0][0] + table[0][1], table[0][0] + table[0][1] + 1, size) if table else []
        return os.pread(fd, fragments[0][1], fragments[0][0]) if fragments else b""
    finally:
        os.close(fd)


def sample_range(ds: Any, name: str) -> int | None:
    """How a level's samples become RGB uint8: ``None`` for 8-bit samples, else their declared
    range (2^BitsStored − 1), scaled to 0..255 by :func:`rgb8`.

    Refused with the reason, as for TIFF: grayscale (one channel has no stain colours to
    separate; segmented, it gives 0 nuclei), palette and other colour models, samples that are not 8- or
    16-bit unsigned integers."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples < 3 or photometric.startswith("MONOCHROME") or photometric not in COLOUR_PHOTOMETRICS:
        kind = "grayscale" if samples < 3 or photometric.startswith("MONOCHROME") else photometric
        raise SlideError(
            f"{name}: {kind} DICOM ({photometric}, {samples} sample(s) per pixel): nuclei are segmented on "
            "H&E colour images stored as RGB"
        )
    bits, stored = int(ds.get("BitsAllocated", 8)), int(ds.get("BitsStored", 8))
    signed = int(ds.get("PixelRepresentation", 0)) != 0
    if bits not in (8, 16) or not 0 < stored <= bits or signed:
        kind = "signed" if signed else "unsigned"
        raise SlideError(
            f"{name}: DICOM samples of {stored} {kind} bits in {bits} are not supported (8- or 16-bit unsigned "
            "RGB expected)"
        )
    return None if bits == 8 else 2**stored - 1


JFIF_APP0, ADOBE_APP14, JPEG_SOS = 0xE0, 0xEE, 0xDA  # JPEG markers (ITU-T T.81 B.1.1.3, JFIF 1.02, Adobe TN 5116)
JPEG_SOFS = (0xC0, 0xC1, 0xC2)  # start of frame: baseline, extended, progressive
ADOBE_TRANSFORM = 11  # byte of the Adobe segment's colour transform: after 'Adobe', version, two flag words
JPEG8_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # JPEG baseline, extended (libjpeg)


def jpeg_stream_colour(data: bytes) -> str | None:
    """The colour space a JPEG stream names itself, as libjpeg reads it: a JFIF marker means
    YCbCr; else an Adobe marker's transform flag (0: RGB, else YCbCr); else components numbered
    'R', 'G', 'B' mean RGB. ``None`` when it names none (libjpeg then assumes YCbCr).

    >>> jpeg_stream_colour(bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffda"))
    'YCbCr'
    """
    jfif, adobe, ids = False, -1, b""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        body = data[position + 4 : position + 2 + length]
        if marker == JPEG_SOS:
            break
        jfif = jfif or (marker == JFIF_APP0 and body[:5] == b"JFIF\0")
        if marker == ADOBE_APP14 and body[:5] == b"Adobe" and len(body) > ADOBE_TRANSFORM:
            adobe = body[ADOBE_TRANSFORM]
        if marker in JPEG_SOFS and body[5:6] == b"\x03":
            ids = bytes(body[6 + 3 * k] for k in range(3))
        position += 2 + length
    if jfif:
        return "YCbCr"
    if adobe >= 0:
        return "RGB" if adobe == 0 else "YCbCr"
    return "RGB" if ids == b"RGB" else None


def rgb_from_ybr_full(samples: np.ndarray, top: int) -> np.ndarray:
    """RGB from uncompressed YBR_FULL samples (PS3.3 C.7.6.3.1.2: ITU-R BT.601 at full range,
    chroma centred on half the range), in the samples' own range ``0..top``.

    >>> rgb_from_ybr_full(np.array([[[76, 85, 255]]], dtype=np.uint8), 255).tolist()
    [[[254, 0, 0]]]
    """
    y, cb, cr = (samples[..., i].astype(np.float32) for i in range(3))
    middle = (top + 1) / 2
    cb, cr = cb - middle, cr - middle
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.round(rgb), 0, top).astype(samples.dtype)


Spans = list[tuple[int, int]]  # a frame's (file offset, length) pieces


def _items(fd: int, position: int, stop: int, size: int) -> Spans:
    """(value offset, length) of the encapsulated items from ``position`` up to ``stop`` or the
    sequence's end."""
    items: Spans = []
    while position < stop and position + 8 <= size:
        g, e, n = struct.unpack("<HHI", os.pread(fd, 8, position))
        if (g, e) == SEQUENCE_END:
            break
        if (g, e) != ITEM or position + 8 + n > size:
            raise SlideError(f"DICOM pixel data is truncated or corrupt (no item at byte {position})")
        items.append((position + 8, n))
        position += 8 + n
    return items


def _frame_spans(
    fd: int, offset: int, n_frames: int, ds: Any, frame_bytes: int
) -> tuple[list[Spans | None], list[int]]:
    """Where each frame's bytes lie in the file, and where each frame's first item starts.

    Uncompressed frames lie one after another. Encapsulated frames are found through the basic
    (or extended) offset table, item by item as each frame is first read (:func:`_frame_pieces`):
    opening costs a few small reads whatever the slide's size. Without a table, every fragment's
    8-byte header is read once, and each fragment is one frame."""
    syntax = ds.file_meta.TransferSyntaxUID
    native, explicit = not syntax.is_encapsulated, not syntax.is_implicit_VR
    if not syntax.is_little_endian:
        raise SlideError("big-endian DICOM pixel data is not supported")
    head = os.pread(fd, 12, offset)
    if len(head) < 12 or struct.unpack("<HH", head[:4]) != PIXEL_DATA:
        raise SlideError("DICOM pixel data not found after the header")
    length = struct.unpack("<I", head[8:12] if explicit else head[4:8])[0]
    position = offset + (12 if explicit else 8)
    if native:
        if length < n_frames * frame_bytes:
            raise SlideError(f"DICOM pixel data holds {length} bytes, {n_frames} frames need {n_frames * frame_bytes}")
        return [[(position + i * frame_bytes, frame_bytes)] for i in range(n_frames)], []
    size = os.fstat(fd).st_size
    table = _items(fd, position, position + 1, size)
    if not table:
        raise SlideError("DICOM pixel data holds no frames")
    first = table[0][0] + table[0][1]  # the first fragment's item
    relative: tuple[int, ...] = ()
    if table[0][1] >= 4 * n_frames:
        relative = struct.unpack(f"<{n_frames}I", os.pread(fd, 4 * n_frames, table[0][0]))
    elif "ExtendedOffsetTable" in ds and len(bytes(ds.ExtendedOffsetTable)) >= 8 * n_frames:
        relative = struct.unpack(f"<{n_frames}Q", bytes(ds.ExtendedOffsetTable)[: 8 * n_frames])
    starts = [first + r for r in relative]
    if starts and all(a < b for a, b in zip(starts, starts[1:], strict=False)) and starts[-1] < size:
        return [None] * n_frames, starts
    fragments = _items(fd, first, size, size)
    if len(fragments) != n_frames:
        raise SlideError(
            f"DICOM frames span {len(fragments)} fragments for {n_frames} frames and no offset table says how"
        )
    return [[f] for f in fragments], []


def _frame_positions(ds: Any, rows: int, cols: int) -> dict[tuple[int, int], int] | None:
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
        positions.setdefault((row // rows, col // cols), i)  # the first focal plane / optical path
    return positions


@dataclass
class DicomLevel:
    """One pyramid level: an instance whose frames are read from its file as regions need them."""

    path: Path
    index: int  # the level's number in the slide's pyramid (0: largest)
    width: int
    height: int
    frame_size: tuple[int, int]  # (rows, columns) of one frame
    spans: list[Spans | None]  # per frame: its (file offset, length) pieces, once known
    starts: list[int]  # per frame: where its first item starts (from the offset table), else empty
    native: bool  # uncompressed frames
    decoder: str  # the imagecodecs function that decodes an encapsulated frame
    planar: bool  # uncompressed colour planes one after another (PlanarConfiguration 1)
    samples: int
    photometric: str = "RGB"
    max_value: int | None = None  # samples deeper than 8 bits: their declared range, scaled to 0..255
    positions: dict[tuple[int, int], int] | None = None
    column_major: bool = False
    fd: int = -1
    cache: OrderedDict[int, np.ndarray] = field(default_factory=OrderedDict)
    cached_bytes: int = 0

    @property
    def grid(self) -> tuple[int, int]:
        """(frame rows, frame columns) of the level's mosaic."""
        return math.ceil(self.height / self.frame_size[0]), math.ceil(self.width / self.frame_size[1])

    def frame_index(self, r: int, c: int) -> int | None:
        if self.positions is not None:
            return self.positions.get((r, c))
        n_rows, n_cols = self.grid
        idx = c * n_rows + r if self.column_major else r * n_cols + c
        return idx if idx < len(self.spans) else None

    def pieces(self, index: int) -> Spans:
        """Frame ``index``'s bytes in the file: from the offset table, its items up to the next frame's."""
        spans = self.spans[index]
        if spans is None:
            size = os.fstat(self.fd).st_size
            stop = self.starts[index + 1] if index + 1 < len(self.starts) else size
            spans = self.spans[index] = _items(self.fd, self.starts[index], stop, size)
            if not spans:
                raise SlideError(f"{self.path.name}: frame {index} is missing (the offset table points past the data)")
        return spans

    def frame(self, index: int) -> np.ndarray:
        """RGB uint8 frame ``index``, decoded once and kept while the cache has room. A frame
        whose bytes cannot be found or decoded raises the decoder's (or the reader's) error."""
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        data = b"".join(os.pread(self.fd, n, offset) for offset, n in self.pieces(index))
        rows, cols = self.frame_size
        if self.native:
            shape = (self.samples, rows, cols) if self.planar else (rows, cols, self.samples)
            dtype = np.dtype("<u2") if self.max_value is not None else np.dtype(np.uint8)
            img = np.frombuffer(data, dtype=dtype).reshape(shape)
            img = np.moveaxis(img, 0, -1) if self.planar else img
            if self.photometric == "YBR_FULL":
                img = rgb_from_ybr_full(img, self.max_value or 255)
        else:
            import imagecodecs

            # A JPEG frame the header calls RGB holds RGB (PS3.5 8.2.1), but libjpeg takes a stream
            # that does not say so itself for YCbCr; a stream that names its colour space is
            # believed (the real fixture says RGB in its header and holds JFIF, i.e. YCbCr, frames).
            as_stored = self.decoder == "jpeg8_decode" and self.photometric == "RGB" and not jpeg_stream_colour(data)
            options = {"colorspace": "RGB", "outcolorspace": "RGB"} if as_stored else {}
            img = np.asarray(getattr(imagecodecs, self.decoder)(data, **options))
        if img.ndim != 3 or img.shape[:2] != (rows, cols) or img.shape[2] < 3:
            raise ValueError(f"frame decodes to {img.shape}, the header says {rows}×{cols}×{self.samples}")
        img = rgb8(img, self.max_value if img.dtype != np.uint8 else None)
        self.cache[index] = img
        self.cached_bytes += img.nbytes
        while self.cached_bytes > FRAME_CACHE_BYTES and len(self.cache) > 1:
            self.cached_bytes -= self.cache.popitem(last=False)[1].nbytes
        return img

    def column_major_fits_better(self) -> bool:
        """Whether frames join more smoothly read column by column than row by row."""
        n_rows, n_cols = self.grid
        if n_rows < 2 or n_cols < 2:
            return False
        score = {False: 0.0, True: 0.0}
        for major in (False, True):
            self.column_major = major
            for r in range(min(n_rows - 1, 3)):
                for c in range(min(n_cols - 1, 3)):
                    a, right, below = (self.frame_index(*p) for p in ((r, c), (r, c + 1), (r + 1, c)))
                    if a is None or right is None or below is None:
                        continue
                    try:
                        fa, fr, fb = self.frame(a).astype(np.float32), self.frame(right), self.frame(below)
                    except OSError:
                        raise
                    except Exception:  # an undecodable frame: a read covering it names it
                        continue
                    score[major] += float(np.abs(fa[:, -1] - fr[:, 0]).mean())
                    score[major] += float(np.abs(fa[-1] - fb[0]).mean())
        self.cache.clear()
        self.cached_bytes = 0
        return score[True] < score[False]

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The in-bounds window [x0, x1) × [y0, y1) from the frames it covers; frames that cannot
        be decoded raise :class:`UnreadableRegion` naming them all (I/O errors are not theirs).

        Parameters
        ----------
        x0, y0, x1, y1 : int
            The window [x0, x1) × [y0, y1), in pixels of this level (x: column, y: row), inside the
            level.

        Returns
        -------
        np.ndarray
            RGB uint8 array of shape (y1 - y0, x1 - x0, 3); glass (255) where no frame covers it
            (a sparse tiling).

        Raises
        ------
        UnreadableRegion
            When frames in the window cannot be decoded, naming them all.
        """
        fh, fw = self.frame_size
        out = np.full((y1 - y0, x1 - x0, 3), GLASS, dtype=np.uint8)
        bad: list[UnreadableTile] = []
        for r in range(y0 // fh, (y1 - 1) // fh + 1):
            for c in range(x0 // fw, (x1 - 1) // fw + 1):
                idx = self.frame_index(r, c)
                if idx is None:
                    continue
                fy0, fx0 = r * fh, c * fw
                try:
                    frame = self.frame(idx)
                except OSError:
                    raise
                except Exception as exc:
                    bad.append(UnreadableTile(self.index, fx0, fy0, fw, fh, decoder_message(exc)))
                    continue
                sy0, sx0 = max(y0, fy0), max(x0, fx0)
                sy1, sx1 = min(y1, fy0 + frame.shape[0]), min(x1, fx0 + frame.shape[1])
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0 - fy0 : sy1 - fy0, sx0 - fx0 : sx1 - fx0]
        if bad:
            raise UnreadableRegion(bad)
        return out


def _open_level(path: Path, ds: Any, offset: int, index: int) -> DicomLevel:
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 3))
    native = not ds.file_meta.TransferSyntaxUID.is_encapsulated
    max_value = sample_range(ds, path.name)
    photometric = str(ds.PhotometricInterpretation).upper()
    if native and photometric not in ("RGB", "YBR_FULL"):
        raise SlideError(f"{path.name}: uncompressed {photometric} DICOM frames are not supported")
    n_frames = int(ds.get("NumberOfFrames", 1))
    fd = os.open(path, os.O_RDONLY)
    try:
        spans, starts = _frame_spans(fd, offset, n_frames, ds, rows * cols * samples * int(ds.BitsAllocated) // 8)
    except BaseException:
        os.close(fd)
        raise
    level = DicomLevel(
        path=path,
        index=index,
        width=int(ds.TotalPixelMatrixColumns),
        height=int(ds.TotalPixelMatrixRows),
        frame_size=(rows, cols),
        spans=spans,
        starts=starts,
        native=native,
        decoder=DECODERS.get(str(ds.file_meta.TransferSyntaxUID), "imread"),
        planar=int(ds.get("PlanarConfiguration", 0)) == 1,
        samples=samples,
        photometric=photometric,
        max_value=max_value,
        positions=_frame_positions(ds, rows, cols),
        fd=fd,
    )
    if level.positions is None and str(ds.get("DimensionOrganizationType", "")).upper() != "TILED_FULL":
        # No stated order: pick the one under which neighbouring frames join smoothly.
        level.column_major = level.column_major_fits_better()
    return level


@dataclass
class DicomSlide(ClosesOnExit):
    """A DICOM WSI series (one level per instance), frames read and decoded as regions need them."""

    path: Path
    reader: str = "dicom"
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    level_downsamples: list[float] = field(default_factory=lambda: [1.0])
    mpp: float | None = None
    resolution: Resolution | None = None
    properties: dict[str, str] = field(default_factory=dict)
    levels: list[DicomLevel] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> DicomSlide:
        found = series_levels(path)
        levels: list[DicomLevel] = []
        try:
            for index, (p, ds, offset) in enumerate(found):
                levels.append(_open_level(p, ds, offset, index))
        except BaseException:
            for level in levels:
                os.close(level.fd)
            raise
        base = found[0][1]
        width, height = levels[0].width, levels[0].height
        resolution = mpp_from_dicom(base, width, height)
        return cls(
            path=path,
            level_dimensions=[(lv.width, lv.height) for lv in levels],
            level_downsamples=[width / lv.width for lv in levels],
            mpp=resolution.mpp if resolution else None,
            resolution=resolution,
            properties={"dicom.PatientID": str(base.get("PatientID", "")), "dicom.levels": str(len(levels))},
            levels=levels,
        )

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """A region of a level, read from the DICOM frames it covers.

        Parameters and result as :meth:`pipeline.io.readers.base.Slide.read_region`; raises SlideError when
        ``level`` does not exist, UnreadableRegion naming the tiles of the region that cannot be decoded.
        """
        if not 0 <= level < len(self.levels):
            raise SlideError(f"level {level} does not exist (the slide has {len(self.levels)})")
        lv = self.levels[level]
        return read_clipped(lv.read, x, y, width, height, lv.width, lv.height)

    def close(self) -> None:
        for level in self.levels:
            if level.fd >= 0:
                os.close(level.fd)
                level.fd = -1
            level.cache.clear()
        self.levels = []


READER = Reader(open=DicomSlide.open, claims=lambda sig: sig.kind == "dicom")
