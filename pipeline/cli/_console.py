"""The console of every entry point: printing never fails a run.

Under a locale whose encoding cannot hold a slide's name or a µ (``LC_ALL=C`` without Python's
UTF-8 mode: ASCII), a print would raise ``UnicodeEncodeError`` in the middle of a run. Characters
the console cannot show are written as escapes (``\\xe9``) instead.
"""

from __future__ import annotations

import io
import sys


def safe_console() -> None:
    """Make stdout and stderr write what their encoding cannot hold as backslash escapes."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
