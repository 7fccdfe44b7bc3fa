"""The layout's rules, checked: the import layers (import-linter's contracts in pyproject.toml),
a run that loads no torch and no training code, and choices declared once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_import_layers_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module", ["pipeline.run", "pipeline.predict", "pipeline.qc", "pipeline.graph", "pipeline.api"]
)
def test_the_runtime_path_loads_no_torch_and_no_training_code(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'pipeline.training', 'pipeline.evaluation', 'pipeline.testing')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_choices_are_declared_once_and_validated() -> None:
    from pipeline.cli.run import parse_args
    from pipeline.config import CHOICES, load_config
    from pipeline.io.readers import READERS
    from pipeline.runtime import BACKENDS

    assert CHOICES["reader"] == ("auto", *READERS) and CHOICES["runtime"] == ("auto", *BACKENDS)
    for name, choices in CHOICES.items():
        with pytest.raises(ValueError, match=f"{name}='nonsense' must be one of"):
            load_config(None, {name: "nonsense"}, environ={})
        with pytest.raises(SystemExit):  # argparse refuses it too, from the same tuple
            parse_args(["m.csv", f"--{name}", "nonsense"])
        assert getattr(parse_args(["m.csv", f"--{name}", choices[-1]]), name) == choices[-1]


def import_cycles(package: str) -> list[list[str]]:
    """Groups of modules of ``package`` that import one another, directly or through others,
    counting imports inside functions too (Tarjan's strongly connected components over grimp's
    import graph)."""
    import grimp

    graph = grimp.build_graph(package, include_external_packages=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(root: str) -> None:  # iterative, so that deep import chains need no recursion
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles_in_the_package() -> None:
    """No module of the package imports, even from inside a function, a module that imports it
    back: each layer's modules form a tree a reader can follow from the bottom up."""
    assert import_cycles("pipeline") == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import c\n")
    (package / "c.py").write_text("import cyclic.a\n")
    (package / "d.py").write_text("import cyclic.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("cyclic") == [["cyclic.a", "cyclic.b", "cyclic.c"]]


def test_every_package_names_its_public_api() -> None:
    """Each package's __init__ says what is public (``__all__``), and every name there exists: a
    name the __init__ defines or imports, or one of its modules (read from the source, so that
    packages needing an optional extra, as training needs PyTorch, are checked too)."""
    import ast

    root = ROOT / "pipeline"
    inits = sorted(root.rglob("__init__.py"))
    assert len(inits) > 5
    for init in inits:
        tree = ast.parse(init.read_text())
        defined: set[str] = set()
        public: list[str] | None = None
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                try:
                    public = list(ast.literal_eval(node.value))
                except ValueError:  # built from other names (the package root's lazy API): present
                    public = []
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        if init.parent.name == "weights":
            continue
        assert public is not None, f"{init.relative_to(root.parent)} has no __all__"
        lazy = "def __getattr__" in init.read_text()  # names loaded on first use (the package root)
        for name in public:
            module = init.parent / f"{name}.py"
            package = init.parent / name / "__init__.py"
            assert name in defined or module.exists() or package.exists() or lazy, f"{init}: {name}"
