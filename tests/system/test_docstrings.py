"""Every public function or method of ``pipeline`` with more than three parameters says what they
are: a numpydoc docstring with a ``Parameters`` section and, unless it returns None, a
``Returns`` section (``Yields`` for a generator).

Read with :mod:`ast`, not imported, so that optional packages (torch, ...) need not be installed.
"Public": the name does not start with ``_``, the function is at module level or a method of a
public class, and no part of the module's path starts with ``_`` (``__init__.py`` and
``__main__.py`` do not make a module private). A method that implements a documented method of a
``Protocol`` (the readers' ``read_region`` of ``Slide``) takes that documentation, as Sphinx's
inherited docstrings do, and names it instead of repeating it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
MAX_PARAMETERS = 3  # more than this many (self and cls not counted; *args and **kwargs are) need a docstring


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_private(path: Path) -> bool:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return any(part.startswith("_") and part not in ("__init__", "__main__") for part in parts)


def public_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(qualified name, node, is a method) of the module's public functions and public methods."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and not node.name.startswith("_"):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, functions) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item, True


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if method and names and names[0] in ("self", "cls"):
        names = names[1:]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return names


def own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not descending into nested functions, classes or lambdas."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield child
        yield from own_nodes(child)


def sections(doc: str) -> set[str]:
    """The numpydoc section headings of a docstring: a line followed by a line of dashes."""
    lines = [line.strip() for line in doc.splitlines()]
    return {
        line for line, under in zip(lines, lines[1:], strict=False) if line and len(under) >= 3 and set(under) == {"-"}
    }


def missing_sections(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    found = sections(ast.get_docstring(node) or "")
    body = list(own_nodes(node))
    generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in body)
    returns_value = any(isinstance(n, ast.Return) and n.value is not None for n in body)
    annotated_none = isinstance(node.returns, ast.Constant) and node.returns.value is None
    needed = ["Parameters"]
    if generator:
        needed.append("Yields")
    elif not annotated_none and (returns_value or node.returns is not None):
        needed.append("Returns")
    return [name for name in needed if name not in found]


def protocol_methods() -> set[str]:
    """Names of the methods that a ``Protocol`` class of ``pipeline`` documents with Parameters."""
    names = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "Protocol" for b in node.bases):
                names |= {
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef) and "Parameters" in sections(ast.get_docstring(item) or "")
                }
    return names


def undocumented() -> dict[str, list[str]]:
    """``module:function`` of every public function with more than MAX_PARAMETERS parameters whose
    docstring lacks a section it needs, with the sections it lacks."""
    found = {}
    inherited = protocol_methods()
    for path in sorted(PACKAGE.rglob("*.py")):
        if is_private(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, node, method in public_functions(tree):
            if method and node.name in inherited:
                continue
            if len(parameters(node, method)) > MAX_PARAMETERS:
                missing = missing_sections(node)
                if missing:
                    found[f"{module_name(path)}:{name}"] = missing
    return found


def test_protocol_methods_are_found() -> None:
    assert "read_region" in protocol_methods()


def test_public_functions_with_many_parameters_document_them() -> None:
    found = undocumented()
    offenders = [f"{name} (no {', no '.join(missing)})" for name, missing in found.items()]
    assert not offenders, "numpydoc sections missing:\n" + "\n".join(offenders)
