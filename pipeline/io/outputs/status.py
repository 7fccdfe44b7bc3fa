"""The states a slide and a run are recorded in (stats.json, run.json, the QC tables).

Both are ``str``-valued enums: a member is the text it stands for (it compares equal to it, hashes
like it, and JSON, CSV and Parquet writers write that text), so records written with a member are
byte for byte those written with the word, and a record read back (plain text) compares equal to
the member.
"""

from __future__ import annotations

from enum import Enum


class _TextEnum(str, Enum):
    """A member prints as its value (``str``, ``format`` and f-strings alike), on every Python
    this package supports: a mixed-in ``str`` enum prints as ``Class.NAME`` otherwise."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class SlideStatus(_TextEnum):
    """A slide's result: segmented, or failed with its reason (stats.json ``status``).

    >>> SlideStatus.OK == "ok", f"{SlideStatus.FAILED:<7}|", SlideStatus("failed") is SlideStatus.FAILED
    (True, 'failed |', True)
    """

    OK = "ok"
    FAILED = "failed"


class RunStatus(_TextEnum):
    """Where a run stands (run.json ``status``): running until it ends; then ok (every slide ok),
    failed slides (some slides failed, the others are done), error (the run stopped: a setup
    problem, a full disk, an unexpected exception) or interrupted (stopped by the user)."""

    RUNNING = "running"
    OK = "ok"
    FAILED_SLIDES = "failed slides"
    ERROR = "error"
    INTERRUPTED = "interrupted"
