"""The files a person hands the pipeline to read whole (the manifest, a config file, review
sheets): read with a byte limit, and only when they are regular files.

A FIFO opened for reading waits for a writer that may never come, and ``/dev/zero`` or
``/dev/urandom`` never end (the size ``stat`` reports for a device is 0, so a check of the size
alone lets them through): such a path is refused before it is opened, and the file is read no
further than its limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputFileError(ValueError):
    """An input file that cannot be used; the message names it and says why."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def read_input_file(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of the regular file ``path`` (a ``what``: "manifest", "config file", ...), at most
    ``max_bytes`` of them; :class:`InputFileError` naming the file otherwise.

    >>> try:
    ...     read_input_file(Path("/dev/zero"), 1024, "manifest")
    ... except InputFileError as exc:
    ...     print(exc)
    /dev/zero: a character device, not a regular file: give the manifest as a file
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode):
            # O_NONBLOCK: should the path become a FIFO after the check, opening it does not wait
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read(max_bytes + 1) if stat.S_ISREG(mode) else b""
    except FileNotFoundError:
        raise InputFileError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise InputFileError(f"{path}: the {what} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise InputFileError(f"{path}: {_kind(mode)}, not a regular file: give the {what} as a file")
    if len(data) > max_bytes:
        raise InputFileError(f"{path}: more than {max_bytes:,} bytes, too large for a {what}")
    return data
