"""What every benchmark script records beside its figures: the machine, the UTC date, the command
line, and each figure's ratio to a baseline measured in the same run; written as JSON and as a
markdown table a RESULTS file can quote."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["machine", "ratio", "record", "write_results"]


def machine() -> str:
    """The host, its architecture, its cores and the Python that ran the benchmark."""
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def ratio(figure: float, baseline: float) -> float | None:
    """``figure / baseline`` to 3 significant digits; None when the baseline is 0.

    >>> ratio(30.0, 20.0), ratio(1.0, 0.0)
    (1.5, None)
    """
    return None if baseline == 0 else float(f"{figure / baseline:.3g}")


def record(figures: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """The figures with the machine, the UTC date and the command line that measured them."""
    command = shlex.join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"python {command}",
        **figures,
    }


def markdown(results: dict[str, Any]) -> str:
    """A two-column table of the top-level values (nested ones as JSON)."""
    rows = ["| | |", "|---|---|"]
    for key, value in results.items():
        text = value if isinstance(value, str) else json.dumps(value)
        rows.append(f"| {key} | {text} |")
    return "\n".join(rows) + "\n"


def write_results(results: dict[str, Any], out: Path | None, name: str) -> str:
    """Print the JSON; with ``out``, write ``<name>.json`` and ``<name>.md`` there (each by a rename)."""
    text = json.dumps(results, indent=1)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for path, body in ((out / f"{name}.json", text + "\n"), (out / f"{name}.md", markdown(results))):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(body)
            tmp.replace(path)
    return text
