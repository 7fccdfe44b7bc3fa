"""Whole-slide image readers: the only package that opens slide files.

``open_slide(path)`` reads the file's signature (its first bytes, a TIFF's tags, a DICOM
header) *before* any decoder touches it, and opens it with the first registered reader that
claims it:

* ``openslide``: OpenSlide for the scanners' own formats (MIRAX, Leica SCN, Ventana BIF,
  Hamamatsu VMS/VMU/NDPI, Sakura SVSlide, Trestle), an optional extra;
* ``cucim``: cuCIM's ``CuImage`` for tiled TIFF/SVS whose compression it decodes safely;
* ``tifffile``: every other TIFF (Deflate/LZW/uncompressed tiles, plain TIFFs);
* ``wsidicom``: DICOM VL Whole Slide Microscopy series that state their tiling;
* ``dicom``: every other DICOM WSI (pydicom, frames placed by how they join);
* ``image``: PNG/JPEG images, read as one-level slides.

A slide path is a file, or a folder holding the instances of one DICOM series (its pyramid's
levels); one file of such a series opens all its levels.

A reader is one module (a ``Slide`` class and a ``READER`` saying which files it claims) plus
one line in :data:`READERS`; vendor metadata is parsed in :mod:`pipeline.io.readers.metadata`.
Microns per pixel come from that metadata or are ``None`` (the caller then uses the manifest's
value, or the default with a warning).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from pipeline.io.readers import cucim, dicom, image, openslide, tiff, wsidicom
from pipeline.io.readers.base import (
    GLASS,
    FileSignature,
    GlassWhereUnreadable,
    Reader,
    Slide,
    SlideError,
    UnreadableRegion,
    UnreadableTile,
    low_resolution_view,
    mirrored_index,
    read_mirrored,
)
from pipeline.io.readers.image import ArraySlide

# Name → reader, in order of preference: the first that claims a file opens it.
READERS: dict[str, Reader] = {
    "openslide": openslide.READER,
    "cucim": cucim.READER,
    "tifffile": tiff.READER,
    "wsidicom": wsidicom.READER,
    "dicom": dicom.READER,
    "image": image.READER,
}
READER_CHOICES: tuple[str, ...] = ("auto", *READERS)
# Formats no reader here opens although one of them would take the file, refused by their suffix
# with what to do: a cellSens .vsi file is a TIFF holding the overview and label images, its
# pyramid lies in .ets files in the folder beside it, which neither OpenSlide nor tifffile reads
# (tifffile would read the overview as if it were the slide).
NOT_READ: dict[str, str] = {
    ".vsi": "Olympus VSI (cellSens) is not read: its pyramid lies in the .ets files of the folder beside it, "
    "which no reader here opens (OpenSlide included); convert the slide to a pyramidal OME-TIFF "
    "(e.g. with Bio-Formats' bfconvert) and give that file",
}

__all__ = [
    "GLASS",
    "NOT_READ",
    "READERS",
    "READER_CHOICES",
    "ArraySlide",
    "FileSignature",
    "GlassWhereUnreadable",
    "Slide",
    "SlideError",
    "UnreadableRegion",
    "UnreadableTile",
    "choose_reader",
    "file_signature",
    "low_resolution_view",
    "mirrored_index",
    "open_slide",
    "read_mirrored",
]


def file_signature(path: Path) -> FileSignature:
    """The file's container from its first bytes (tiff, dicom, png, jpeg or unknown) and, for a
    TIFF, its levels' compression codes, for DICOM how its frames are laid out and its samples
    stored, and the scanner format OpenSlide reads it as, if any; a TIFF whose tags cannot be
    read is a SlideError. A folder is a DICOM series or a SlideError."""
    if path.is_dir():
        return _dicom_signature(path)
    with open(path, "rb") as f:
        head = f.read(132)
    if head[:4] in openslide.TIFF_MAGIC:
        try:
            return FileSignature("tiff", tiff.tiff_compressions(path), scanner=openslide.scanner_format(path, head))
        except Exception as exc:
            raise SlideError(f"truncated or corrupt TIFF (its tags cannot be read: {exc})") from exc
    if head[128:132] == b"DICM":
        return _dicom_signature(path)
    scanner = openslide.scanner_format(path, head)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return FileSignature("png", scanner=scanner)
    if head[:3] == b"\xff\xd8\xff":
        return FileSignature("jpeg", scanner=scanner)
    return FileSignature("unknown", scanner=scanner)


def _dicom_signature(path: Path) -> FileSignature:
    try:
        return dicom.dicom_signature(path)
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"corrupt DICOM header ({type(exc).__name__}: {exc})") from exc


def _not_a_file(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _stat_slide(path: Path) -> os.stat_result:
    """``path``'s status, or a SlideError saying why there is no slide file there."""
    try:
        return path.stat()
    except UnicodeEncodeError:
        raise SlideError(
            f"the file name {str(path)!r} cannot be encoded in this process's file name encoding "
            f"({sys.getfilesystemencoding()}, from the locale): run with a UTF-8 locale (LC_ALL=C.UTF-8) "
            "or PYTHONUTF8=1"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SlideError(f"a symbolic link loop, no file: {path}") from None
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise SlideError(f"a symbolic link to a missing file: {path} → {os.readlink(path)}") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SlideError(f"file not found: {path}") from None
        raise SlideError(f"cannot be read: {path} ({exc.strerror})") from None


def _check_slide_file(path: Path, st: os.stat_result) -> None:
    """Refuse what cannot be a slide before any reader opens it: a folder without DICOM files, a
    FIFO or device (opening a FIFO would wait for a writer; a device never ends), an empty file."""
    if stat.S_ISDIR(st.st_mode):
        if not any(dicom.is_dicom_file(p) for p in path.iterdir()):
            raise SlideError(f"a folder that holds no DICOM files is not a slide: {path}")
    elif not stat.S_ISREG(st.st_mode):
        raise SlideError(f"{_not_a_file(st.st_mode)}, not a slide file: {path}")
    elif st.st_size == 0 and not openslide.scanner_format(path, b""):  # a MIRAX slide's data is in its folder
        raise SlideError(f"empty file: {path}")


def choose_reader(path: Path, preference: str = "auto") -> str:
    """Name of the reader for ``path`` (a key of :data:`READERS`).

    ``preference`` 'auto' picks the first reader that claims the file (a format in
    :data:`NOT_READ` is refused saying what to do); any other value forces that reader (for
    experts and tests).
    """
    _check_slide_file(path, _stat_slide(path))
    if preference != "auto":
        return preference
    if path.suffix.lower() in NOT_READ and not path.is_dir():
        raise SlideError(NOT_READ[path.suffix.lower()])
    signature = file_signature(path)
    for name, reader in READERS.items():
        if reader.claims(signature):
            return name
    raise SlideError(
        "unsupported file format (not TIFF/SVS, DICOM, PNG or JPEG, nor a scanner format OpenSlide reads: "
        "MIRAX, Leica SCN, Ventana BIF, Hamamatsu VMS/VMU/NDPI, Sakura SVSlide)"
    )


def open_slide(path: str | Path, reader: str = "auto") -> Slide:
    """Open a slide with the reader its own tags call for; raises SlideError with the reason."""
    p = Path(path)
    name = choose_reader(p, reader)
    if name not in READERS:
        raise SlideError(f"unknown reader {name!r}")
    try:
        slide = READERS[name].open(p)
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{name} could not open the file: {type(exc).__name__}: {exc}") from exc
    if slide.level_dimensions[0][0] < 1 or slide.level_dimensions[0][1] < 1:
        slide.close()
        raise SlideError("slide has no pixels")
    return slide
