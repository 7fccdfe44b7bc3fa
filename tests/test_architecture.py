"""The layout's rules, checked: the import layers (import-linter's contracts in pyproject.toml),
a run that loads no torch and no training code, and choices declared once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
