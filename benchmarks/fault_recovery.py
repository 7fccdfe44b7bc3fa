"""Time lost to a worker killed mid-run: the same cohort on a real ``dask scheduler`` with two
``dask worker`` processes, once uninterrupted and once with one worker SIGKILLed (nanny and
all) shortly after the first tiles start.

    python benchmarks/fault_recovery.py [--model FILE.onnx]   (run from the repository root)
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.testing.bench import ratio, record, write_results
from pipeline.testing.cluster import ExternalCluster, run_args, wait_until

ROOT = Path(__file__).resolve().parents[1]


def timed_run(manifest: Path, out: Path, model: Path, kill_after: float | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = ExternalCluster(Path(tmp), 2)
        try:
            t0 = time.perf_counter()
            driver = subprocess.Popen(
                run_args(manifest, out, model, cluster.file),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if kill_after is not None:
                wait_until(lambda: (out / "slides").exists())
                time.sleep(kill_after)
                cluster.kill_worker(0)
            driver.wait(timeout=900)
            if driver.returncode != 0:
                raise RuntimeError(f"run failed with exit status {driver.returncode}")
            return time.perf_counter() - t0
        finally:
            cluster.close()


def main() -> None:
    from pipeline.runtime.session import resolve_model_path
    from pipeline.testing import synthetic_slide_cohort

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--out", type=Path, default=None, help="also write fault_recovery.json and .md here")
    args = p.parse_args()
    model = resolve_model_path(args.model or None)
    with tempfile.TemporaryDirectory(prefix="fault-") as tmp:
        folder = Path(tmp)
        manifest = synthetic_slide_cohort(folder, 6, 1024, 1024, seed=60, prefix="f")
        clean = timed_run(manifest, folder / "clean", model, None)
        killed = timed_run(manifest, folder / "killed", model, kill_after=2.0)
    figures = {
        "model": str(model),
        "slides": 6,
        "uninterrupted_s": round(clean, 1),
        "one_worker_killed_s": round(killed, 1),
        "time_lost_s": round(killed - clean, 1),
        "killed_to_uninterrupted": ratio(killed, clean),
    }
    write_results(record(figures), args.out, "fault_recovery")


if __name__ == "__main__":
    main()
