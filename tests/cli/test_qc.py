"""``python -m pipeline.qc``: a folder that is no run's output, bad options end with exit 2 and one
line; the QC of a run still being written, or one that stopped, says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.qc import main as qc_main
from pipeline.testing.qc_cohorts import synthetic_stats_cohort
from tests.conftest import bounded_cli, qc_cli


def test_qc_of_a_folder_that_is_not_a_run_is_refused_with_one_line(tmp_path: Path, qc_cohort: Path) -> None:
    code, err = qc_cli(tmp_path / "nowhere")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and "nowhere" in err
    (qc_cohort / "qc").write_text("a file where the qc folder goes")
    code, err = qc_cli(qc_cohort)
    assert code == 2 and err.startswith("error:") and "Traceback" not in err and str(qc_cohort / "qc") in err, err
    for option, value in (("--n-patches", "1.5"), ("--n-patches", "0"), ("--outer-percent", "200"), ("--workers", "0")):
        code, err = qc_cli(qc_cohort, option, value)
        assert code == 2 and err.startswith("error:") and option in err and len(err.strip().splitlines()) == 1, err


def test_qc_refuses_a_folder_that_is_no_runs_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with a slides/ but no run.json is not a run's output: nothing is built there."""
    (tmp_path / "slides" / "x").mkdir(parents=True)
    assert qc_main([str(tmp_path), "--patches", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path} is not the output folder of a run"), err
    assert "run.json" in err
    assert not (tmp_path / "qc").exists()


def test_qc_says_when_the_run_is_still_being_written(tmp_path: Path) -> None:
    """The QC of a folder a live run holds covers the slides finished so far, and says so; that of a
    run that stopped before it finished says that too."""
    synthetic_stats_cohort(tmp_path, {"BRCA": 3}, n_failed=0)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from pipeline.io.outputs.lock import lock_output; "
            f"lock = lock_output(Path({str(tmp_path)!r})); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = bounded_cli("pipeline.qc", str(tmp_path), "--patches", "none", "--no-report")
    finally:
        holder.communicate("")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "still being written" in warning[0] and f"pid {holder.pid}" in warning[0], warning
    run = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**run, "status": "running"}))  # a run killed outright
    result = bounded_cli("pipeline.qc", str(tmp_path), "--patches", "none", "--no-report")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "did not finish" in warning[0] and "rerun" in warning[0], warning
