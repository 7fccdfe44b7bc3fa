"""The argument parser of every entry point: a bad argument is one ``error:`` line and exit 2,
as any other unusable input is (README, "Exit status")."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``error: ...``) on stderr, exit 2,
    without the usage block (``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
