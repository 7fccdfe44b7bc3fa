"""Write docs/api.md from the docstrings of ``pipeline.api`` (numpydoc sections → Markdown).

    python docs/api_reference.py          # rewrites docs/api.md

tests/test_api.py checks that docs/api.md is what this writes, so the page follows the code.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

SECTIONS = ("Attributes", "Parameters", "Returns", "Raises")
PAGE = Path(__file__).with_name("api.md")


def _blocks(text: str) -> list[str]:
    """Docstring text with ``::`` literal blocks as fenced code."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(head + ":")
            i += 1
            body: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            while body and not body[0].strip():
                body.pop(0)
            out += ["```python", *body, "```", ""]
            continue
        out.append(line)
        i += 1
    return out


def _markdown(doc: str) -> str:
    """A numpydoc docstring as Markdown: its sections as bold headings, their entries as a list."""
    lines = _blocks(re.sub(r":\w+:`([^`]+)`", r"`\1`", inspect.cleandoc(doc)))
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip() or "x")
        if underline:
            section = line.strip()
            out += ["", f"**{section}**", ""]
            i += 2
            continue
        if section in SECTIONS and line and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            entry = f"- `{name.strip()}`" + (f" ({kind.strip()})" if kind else "")
            description: list[str] = []
            i += 1
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                if lines[i].strip():
                    description.append(lines[i].strip())
                i += 1
            out.append(entry + (": " + " ".join(description) if description else ""))
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip() + "\n"


def _signature(name: str, obj: object) -> str:
    if inspect.isclass(obj):
        return f"class {name}"
    # the module's annotations are strings (postponed evaluation): shown without their quotes
    # (no parameter of the API has a string default)
    text = re.sub(r"'([^']*)'", r"\1", str(inspect.signature(obj)))  # type: ignore[arg-type]
    return f"{name}{text}"


def reference() -> str:
    """The page: the module's introduction, then each public name of ``pipeline.api``."""
    import pipeline.api as api

    parts = ["# Python API (`pipeline.api`)", "", _markdown(api.__doc__ or "")]
    for name in api.__all__:
        obj = getattr(api, name)
        own = getattr(obj, "__module__", "") == api.__name__
        parts += [f"## `{name}`", ""]
        if own:
            parts += ["```python", _signature(name, obj), "```", "", _markdown(obj.__doc__ or "")]
        else:
            first = inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            parts += [f"`{obj.__module__}.{name}`, raised by `segment_slides`: {first}", ""]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.write_text(reference(), encoding="utf-8")
    print(f"wrote {PAGE}")
