"""Atomic publication: every file and folder of a run appears under its final name only when
complete. This module is the one place that writes through a temporary name and a rename.

A slide is written under ``slides/.<slide_id>.<token>.partial/`` and renamed to
``slides/<slide_id>/`` only when every file is complete, so no half-written output is ever
visible under its final name; readers and reruns ignore names that start with a dot.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.outputs.contents import fsync_dir, fsync_tree
from pipeline.io.outputs.stats import STATS_FILE

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
SCRATCH_SUFFIX = ".tiles"  # a working folder's scratch files (per-tile tables and labels), beside it

# ------------------------------------------------------------------- full disks ----

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how the OS's message reads where a library wraps it in an error of its own (pyarrow, zarr)
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


class DiskFull(Exception):
    """The disk of the output folder is full (or its quota spent): no slide's fault, so the run
    stops rather than fail every slide after it; a rerun once space is freed goes on."""


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, says the disk is full.

    >>> disk_full(OSError(errno.ENOSPC, "No space left on device")), disk_full(OSError(errno.EACCES, "x"))
    (True, False)
    >>> disk_full(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    True
    """
    for _ in range(8):  # the chain of causes is short; a cycle cannot hold the check
        if exc is None:
            return False
        if isinstance(exc, OSError) and (exc.errno in _DISK_FULL_ERRNOS or says_disk_full(str(exc))):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def says_disk_full(text: str) -> bool:
    """Whether an error's text (its message, or its repr as a Dask worker logs it) says the disk
    is full.

    >>> says_disk_full("OSError(28, 'No space left on device')"), says_disk_full("OSError(13, 'Permission denied')")
    (True, False)
    """
    return any(w in text for w in _DISK_FULL_WORDS)


class SpaceReserve:
    """A hidden file of ``size`` bytes kept in ``folder`` while a run writes there, given back
    when the disk fills so that the run's final record (run.json) can still be written.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> reserve = SpaceReserve(folder, 4096)
    >>> [(p.name, p.stat().st_size) for p in folder.iterdir()]
    [('.run.json.reserve', 4096)]
    >>> reserve.release(); list(folder.iterdir())
    []
    """

    NAME = ".run.json.reserve"

    def __init__(self, folder: Path, size: int) -> None:
        self.path = folder / self.NAME
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except (AttributeError, OSError) as exc:  # a file system without fallocate: written out
                if disk_full(exc):
                    raise
                os.write(fd, bytes(size))
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------ atomic files ----


@contextmanager
def atomic_path(path: Path, durable: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; renamed onto ``path`` when the block ends
    without an exception, removed when it raises. ``durable`` flushes the file to disk before
    the rename (scratch files that a crash discards anyway skip that).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "table.csv") as tmp:
    ...     _ = tmp.write_text("a,b\\n")
    ...     (folder / "table.csv").exists()
    False
    >>> sorted(p.name for p in folder.iterdir())
    ['table.csv']
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if durable and tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file_from(path: Path) -> Iterator[Path]:
    """A scratch folder (a hidden sibling of ``path``) for a writer that writes
    ``<folder>/<path.name>``; that file is renamed onto ``path`` (flushed first) when the block
    ends without an exception. The scratch folder goes either way.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_file_from(folder / "nuclei.csv") as scratch:
    ...     _ = (scratch / "nuclei.csv").write_text("a,b\\n")
    ...     (folder / "nuclei.csv").exists()
    False
    >>> sorted(p.name for p in folder.iterdir())
    ['nuclei.csv']
    """
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.scratch")
    scratch.mkdir()
    try:
        yield scratch
        with atomic_path(path) as tmp:
            os.replace(scratch / path.name, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename (see :func:`atomic_path`)."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, obj: Any, *, indent: int = 2, sort_keys: bool = False, durable: bool = True) -> None:
    """``obj`` as JSON (numpy scalars and paths as plain values), ending in a newline, published
    whole under ``path`` or not at all. The project's one JSON writer: slide records keep their
    keys in the order written, the QC's files sort theirs.

    Parameters
    ----------
    path : Path
        The file to write.
    obj : Any
        The value to write.
    indent : int, optional
        Indentation of the JSON.
    sort_keys : bool, optional
        Sort the keys of objects.
    durable : bool, optional
        Flush the file to disk before the rename (scratch files a crash discards anyway skip it).
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode(), durable)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ------------------------------------------------------------- slide folders ----


def slides_dir(out_dir: Path) -> Path:
    return out_dir / "slides"


def final_slide_dir(out_dir: Path, slide_id: str) -> Path:
    return slides_dir(out_dir) / slide_id


def new_partial_dir(out_dir: Path, slide_id: str) -> Path:
    """A fresh, uniquely named working folder for one attempt at a slide."""
    path = slides_dir(out_dir) / f".{slide_id}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
    path.mkdir(parents=True)
    return path


def scratch_dir(work: Path) -> Path:
    """The scratch folder of a working folder (``.<id>.<token>.tiles`` beside
    ``.<id>.<token>.partial``): outside it, so publishing the working folder does not need the
    scratch files dropped first, and a publication interrupted before its rename can be redone.

    >>> scratch_dir(Path("slides/.S1.0123456789ab.partial")).name
    '.S1.0123456789ab.tiles'
    """
    return work.with_name(work.name.removesuffix(PARTIAL_SUFFIX) + SCRATCH_SUFFIX)


def stale_work_pattern(slide_id: str) -> re.Pattern[str]:
    """The names of ``slide_id``'s own working folders: the id, exactly, then one token; and of
    the earlier folder that :func:`publish_slide` moves aside (a crash between its two renames
    leaves it behind).

    Slide ids may contain dots, so a glob such as ``.S1.*.partial`` would also match the live
    folders of ``S1.rescan``; this pattern does not.

    >>> p = stale_work_pattern("S1")
    >>> bool(p.fullmatch(".S1.0123456789ab.partial")), bool(p.fullmatch(".S1.rescan.0123456789ab.partial"))
    (True, False)
    >>> bool(p.fullmatch(".S1.0123abcd.old")), bool(p.fullmatch(".S1.rescan.0123abcd.old"))
    (True, False)
    >>> bool(p.fullmatch(".S1.0123456789ab.tiles")), bool(p.fullmatch(".S1.rescan.0123456789ab.tiles"))
    (True, False)
    """
    partial = rf"[0-9a-f]{{12}}(?:{re.escape(PARTIAL_SUFFIX)}|{re.escape(SCRATCH_SUFFIX)})"
    return re.compile(rf"\.{re.escape(slide_id)}\.(?:{partial}|[0-9a-f]{{8}}{re.escape(OLD_SUFFIX)})")


def remove_stale_partials(out_dir: Path, slide_id: str) -> int:
    """Delete working folders left by an interrupted attempt at ``slide_id``, and the earlier
    folder an interrupted publication left aside (only ``slide_id``'s own)."""
    removed = 0
    root = slides_dir(out_dir)
    if not root.is_dir():
        return 0
    pattern = stale_work_pattern(slide_id)
    for p in root.iterdir():
        if pattern.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


def read_published_stats(out_dir: Path, slide_id: str) -> dict[str, Any] | None:
    """The stats.json of a published slide folder, or None when there is none."""
    path = final_slide_dir(out_dir, slide_id) / STATS_FILE
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def publish_slide(partial: Path, final: Path) -> None:
    """Make a complete slide folder visible under its final name (one rename).

    An existing final folder (an earlier failure being retried) is moved aside first and
    deleted after the new one is in place.
    """
    fsync_tree(partial)  # every byte on disk before the name says the folder is complete
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{OLD_SUFFIX}")
        os.replace(final, old)
    os.replace(partial, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_failure(out_dir: Path, slide_id: str, stats: dict[str, Any]) -> None:
    """Publish a folder holding only the failed slide's stats.json (status + reason)."""
    partial = new_partial_dir(out_dir, slide_id)
    try:
        atomic_write_json(partial / STATS_FILE, stats)
        publish_slide(partial, final_slide_dir(out_dir, slide_id))
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when published
    remove_stale_partials(out_dir, slide_id)
