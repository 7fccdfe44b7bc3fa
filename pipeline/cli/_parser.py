"""The argument parser of every entry point: a bad argument is one ``error:`` line and exit 2,
as any other unusable input is (README, "Exit status")."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``error: ...``) on stderr, exit 2,
    without the usage block (``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def number_in(kind: type, low: float, high: float | None = None, *, high_open: bool = False) -> Any:
    """An argparse ``type`` for a number of ``kind`` (int or float) in [low, high] (or [low, high)
    with ``high_open``); a value out of range or NaN is an argument error naming it.

    >>> number_in(float, 0, 50, high_open=True)("4")
    4.0
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        top = "" if high is None else f", {high}{')' if high_open else ']'}"
        above = high is not None and (value >= high if high_open else value > high)
        if not value >= low or above:  # NaN fails the first test
            raise argparse.ArgumentTypeError(f"{text} is not in [{low}{top or ', ∞)'}")
        return value

    return parse
