"""The GPU benchmark's phases on the CPU (``--device cpu``: the device loop on numpy arrays):
every phase runs and is written, a failing phase is recorded and the others still run, and the
CPU path infers on the CPU. A tiny slide and the blob model keep it to seconds."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
TINY = ["--device", "cpu", "--model", "blob", "--side", "768", "--tile-px", "256", "--write-procs", "1"]
TINY += ["--read-threads", "1", "--cpu-tiles", "1", "--device-tiles", "3"]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    # importable by name, so that the spawned write processes can unpickle its functions
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu_benchmark")


def read_results(out: Path) -> dict[str, Any]:
    return json.loads((out / "gpu_benchmark.json").read_text())


@pytest.mark.slow
def test_every_phase_runs_and_is_written(bench: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert bench.main([*TINY, "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    results = read_results(out)
    assert [p for p in bench.PHASES if results["phases"][p]["status"] == "ok"] == list(bench.PHASES)
    assert results["inference_device"] == "cpu" and results["slide"]["touching_pairs_in_block"] > 0
    assert results["device_stages"]["tiles"] == 3 and results["device_full"]["tiles"] == 3
    seeds = results["device_stages"]["multi_seed_components"]
    assert len(seeds["per_tile"]) == 3
    assert all(n <= c for n, c in zip(seeds["per_tile"], seeds["components_per_tile"], strict=True))
    shared = results["nuclei_on_shared_tiles"]  # the same nuclei on the tile every path ran
    assert shared["tiles"] == 1 and shared["cpu"] == shared["device"] == shared["device_full"] > 0
    assert "| device_full | ok |" in (out / "gpu_benchmark.md").read_text()


@pytest.mark.slow
def test_a_failing_phase_is_recorded_and_the_rest_run(bench: Any, tmp_path: Path, monkeypatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("no data transfer registered")

    monkeypatch.setattr(bench, "cpu_path", broken)
    out = tmp_path / "out"
    assert bench.main([*TINY, "--device-tiles", "1", "--out", str(out)]) == 1
    results = read_results(out)
    cpu = results["phases"]["cpu"]
    assert cpu["status"] == "failed" and "no data transfer registered" in cpu["error"]
    assert all(results["phases"][p]["status"] == "ok" for p in ("device_stages", "writes_after", "device_full"))


def test_the_device_loop_stops_at_its_deadline(bench: Any, tmp_path: Path) -> None:
    """No tile after the deadline but the first: a budget that holds on a slow machine too."""

    class Loop(bench.DeviceLoop):
        def __init__(self) -> None:
            self.read_threads = 2

        def read(self, tile: Any) -> tuple[Any, Any]:
            return tile, None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert [t for t, _ in Loop().prefetched(pool, list(range(10)), deadline=0.0)] == [0]
        assert len(list(Loop().prefetched(pool, list(range(10)), deadline=float("inf")))) == 10
