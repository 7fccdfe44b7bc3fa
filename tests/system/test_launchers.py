"""cluster/ launchers render valid job scripts without a batch system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("dask_jobqueue")


def job_script(*args: str) -> str:
    """The job script ``cluster/hpc.py`` renders (it talks to no batch system to do so)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "cluster" / "hpc.py"), *args, "--print-job-script"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("system", ["slurm", "pbs"])
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_job_scripts_render_with_lifetime_and_resources(system: str, profile: str) -> None:
    script = job_script(system, "--profile", profile, "--account", "proj42")
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


def test_the_queue_reaches_the_job_script() -> None:
    assert "#SBATCH -p short" in job_script("slurm", "--queue", "short")


@pytest.mark.parametrize("script", ["local.sh", "slurm/scheduler_and_workers.sbatch", "pbs/scheduler_and_workers.pbs"])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "cluster" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_batch_cluster_binds_to_the_given_interface_and_requires_tls(tmp_path: Path) -> None:
    import shutil

    pytest.importorskip("dask_jobqueue")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    subprocess.run(  # a self-signed certificate serves as its own CA
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nuclei"]
        + ["-keyout", str(tmp_path / "node.key"), "-out", str(tmp_path / "node.pem")],
        check=True,
        capture_output=True,
    )
    shutil.copy(tmp_path / "node.pem", tmp_path / "ca.pem")
    out = subprocess.run(
        [sys.executable, str(ROOT / "cluster" / "hpc.py"), "slurm", "--print-job-script"]
        + ["--interface", "lo", "--tls-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--interface lo" in out.stdout and f"--tls-ca-file {tmp_path}/ca.pem" in out.stdout
    assert "--protocol tls://" in out.stdout or "tls://" in out.stdout
    for script in ("slurm/scheduler_and_workers.sbatch", "pbs/scheduler_and_workers.pbs"):
        text = (ROOT / "cluster" / script).read_text()
        assert "--interface" in text and "--tls-ca-file" in text and "REQUIRE_ENCRYPTION" in text, script
