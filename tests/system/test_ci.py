"""CI runs the README's test command, and the README's light install leaves PyTorch out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    tests = [c for c in commands if "python -m pytest -q" in c and "python3 -m venv" in c]
    assert len(tests) == 1, "the README has one venv-to-tests command"
    return tests[0].strip()


def test_ci_runs_the_readme_test_command() -> None:
    steps = [s.strip() for s in readme_test_command().split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    for step in steps:
        quiet = step.replace("pip install ", "pip install -q ", 1)
        assert step in ci or quiet in ci, f"CI does not run the README's step {step!r}"
    order = [ci.index(step if step in ci else step.replace("pip install ", "pip install -q ", 1)) for step in steps]
    assert order == sorted(order), "CI runs the README's steps in the README's order"


def test_the_readme_test_install_leaves_pytorch_out() -> None:
    command = readme_test_command()
    assert "torch" not in command and "train" not in command


def test_tests_refuse_to_start_without_pytorch_when_ci_requires_it(tmp_path: Path) -> None:
    """NUCLEI_REQUIRE_TORCH=1 with PyTorch hidden: pytest stops with a usage error, not a skip."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class _Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = dict(os.environ, NUCLEI_REQUIRE_TORCH="1", PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_config.py", "--co"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NUCLEI_REQUIRE_TORCH=1 but PyTorch is not installed" in proc.stdout + proc.stderr
