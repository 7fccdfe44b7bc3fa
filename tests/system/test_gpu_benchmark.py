"""The GPU benchmark's phases on the CPU (``--device cpu``: the device loop on numpy arrays),
run as its command line: every phase runs and is written, and the CPU path infers on the CPU. A
tiny slide and the blob model keep it to seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu" / "gpu_benchmark.py"
TINY = ["--device", "cpu", "--model", "blob", "--side", "768", "--tile-px", "256", "--write-procs", "1"]
TINY += ["--read-threads", "1", "--cpu-tiles", "1", "--device-tiles", "3"]
PHASES = ("setup", "cpu", "device_stages", "writes_after", "device_full")


@pytest.mark.slow
def test_every_phase_runs_and_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), *TINY, "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_benchmark.json").read_text())
    assert [p for p in PHASES if results["phases"][p]["status"] == "ok"] == list(PHASES)
    assert results["inference_device"] == "cpu" and results["slide"]["touching_pairs_in_block"] > 0
    assert results["device_stages"]["tiles"] == 3 and results["device_full"]["tiles"] == 3
    seeds = results["device_stages"]["multi_seed_components"]
    assert len(seeds["per_tile"]) == 3
    assert all(n <= c for n, c in zip(seeds["per_tile"], seeds["components_per_tile"], strict=True))
    shared = results["nuclei_on_shared_tiles"]  # the same nuclei on the tile every path ran
    assert shared["tiles"] == 1 and shared["cpu"] == shared["device"] == shared["device_full"] > 0
    assert "| device_full | ok |" in (out / "gpu_benchmark.md").read_text()
