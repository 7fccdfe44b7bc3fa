"""One run at a time owns an output folder.

A run holds an exclusive POSIX record lock (``fcntl.lockf``) on ``DIR/.run.lock`` from before it
looks at the folder until it exits. A second run on the same folder is refused at once, naming
the holder (host, pid, start time) that the lock file records. There is no stale-lock rule to
get wrong: the kernel drops the lock when the holding process ends, however it ends (SIGKILL
included), so the file left behind by a dead run locks nothing. POSIX locks work across the
machines of a cluster on NFS (v4, or v3 with lockd); they are not inherited by the worker
processes a run starts, so a worker that outlives its driver does not keep the folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

LOCK_FILE = ".run.lock"


class OutputInUse(RuntimeError):
    """Another live run holds the output folder; the message names it."""


class OutputLock:
    """The held lock on one output folder; released by :meth:`release` or when the process ends."""

    def __init__(self, out_dir: Path, fd: int, holder: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.holder = holder
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that is just starting (it has not written its name yet)"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        return dict(json.loads(os.pread(fd, 65536, 0).decode()))
    except (OSError, ValueError, TypeError):
        return None


def lock_output(out_dir: Path) -> OutputLock:
    """Take ``out_dir`` for this process, or raise :class:`OutputInUse` naming the run that has it."""
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise OutputInUse(
            f"{out_dir} is in use by another run ({describe_holder(holder)}); wait for it to end or stop it "
            "(a run that has died releases the folder by itself)"
        ) from None
    holder = {
        "host": platform.node(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return OutputLock(out_dir, fd, holder)


def output_holder(out_dir: Path) -> dict[str, Any] | None:
    """The live run that holds ``out_dir`` (its host, pid and start, possibly empty while it
    starts), or None when no run does. Takes nothing and writes nothing: a reader's look."""
    try:
        fd = os.open(out_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no run has held the folder
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds its exclusive lock
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return _read_holder(fd) or {}
    finally:
        os.close(fd)  # closing drops the shared lock, if taken
    return None
