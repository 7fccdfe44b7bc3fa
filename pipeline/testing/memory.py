"""A process's own peak memory, for the tests and benchmarks that bound it."""

from __future__ import annotations

import platform
import resource


def own_peak_rss_bytes() -> int:
    """This process's own peak resident memory (bytes): Linux's ``VmHWM``. Not ``ru_maxrss``
    alone: a process started by fork and exec (``subprocess``, Dask's spawned workers) keeps its
    parent's high-water mark there (Linux folds it in at exec), so a child of a large parent would
    count the parent's peak as its own. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB otherwise)."""
    own = proc_status_bytes("VmHWM")
    if own is not None:
        return own
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if platform.system() == "Darwin" else int(peak) * 1024


def current_rss_bytes() -> int:
    """This process's resident memory now (bytes): Linux's ``VmRSS``; 0 where there is none."""
    return proc_status_bytes("VmRSS") or 0


def proc_status_bytes(field: str) -> int | None:
    """A memory field of Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``…) in bytes; None
    where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
