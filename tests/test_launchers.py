"""cluster/ launchers render valid job scripts without a batch system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("dask_jobqueue")
sys.path.insert(0, str(ROOT / "cluster"))
import hpc  # noqa: E402


@pytest.mark.parametrize("system", ["slurm", "pbs"])
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_job_scripts_render_with_lifetime_and_resources(system: str, profile: str) -> None:
    cluster = hpc.make_cluster(system, hpc.load_profile(system, profile), {"account": "proj42"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert script.startswith("#!/usr/bin/env bash")
    assert "--lifetime 225m" in script and "--lifetime-stagger 10m" in script
    assert ("#SBATCH" if system == "slurm" else "#PBS") in script
    assert "proj42" in script
    if system == "slurm":
        assert "-t 04:00:00" in script
    else:
        assert "walltime=04:00:00" in script
    if profile == "gpu":
        assert "dask_cuda.cli worker" in script and "--resources GPU=1" in script
    else:
        assert "distributed.cli.dask_worker" in script


def test_cli_prints_job_script() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "cluster" / "hpc.py"), "slurm", "--print-job-script", "--queue", "short"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "#SBATCH -p short" in out.stdout


@pytest.mark.parametrize("script", ["local.sh", "slurm/scheduler_and_workers.sbatch", "pbs/scheduler_and_workers.pbs"])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "cluster" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
