"""Scheduler load for a long manifest: many tiny generated slides through ``run_slides`` on a
local cluster, sampling the scheduler's task count and memory while it runs.

    python benchmarks/scheduler_scale.py [--slides 2000] [--workers 2]

Reports wall time, overhead per slide (wall × workers / slides: the per-slide cost of planning,
scheduling, writing and publishing when the slide itself is trivial), the largest number of
tasks the scheduler held at once, and the scheduler's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def measure(n_slides: int, workers: int, model: str, folder: Path) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from pipeline.config import Config
    from pipeline.graph import run_slides
    from pipeline.testing import tiny_cohort

    entries = tiny_cohort(folder, n_slides)
    config = Config(model=model, progress=False)
    samples: list[tuple[int, int]] = []
    stop = threading.Event()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:

            def sample() -> None:
                while not stop.is_set():
                    try:
                        samples.append(client.run_on_scheduler(_scheduler_load))
                    except Exception:
                        pass
                    time.sleep(0.5)

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            t0 = time.perf_counter()
            outcomes = run_slides(client, entries, folder / "out", config)
            wall = time.perf_counter() - t0
            stop.set()
            thread.join()
    failed = [o for o in outcomes if o.status != "ok"]
    return {
        "slides": n_slides,
        "workers": workers,
        "ok": len(outcomes) - len(failed),
        "failed": len(failed),
        "wall_s": round(wall, 1),
        "overhead_s_per_slide": round(wall * workers / n_slides, 4),
        "max_scheduler_tasks": max((s[0] for s in samples), default=0),
        "scheduler_peak_rss_mb": round(max((s[1] for s in samples), default=0) / 2**20, 1),
    }


def _scheduler_load(dask_scheduler: Any) -> tuple[int, int]:
    import psutil

    return len(dask_scheduler.tasks), psutil.Process().memory_info().rss


def main() -> None:
    from pipeline.runtime.session import resolve_model_path

    p = argparse.ArgumentParser()
    p.add_argument("--slides", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", default="")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        result = measure(args.slides, args.workers, str(resolve_model_path(args.model or None)), Path(tmp))
    result["machine"] = f"{platform.node()} {platform.machine()}, python {platform.python_version()}"
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
