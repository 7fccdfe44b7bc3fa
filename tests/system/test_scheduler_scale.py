"""A long manifest keeps the scheduler's task count bounded: slides are submitted progressively."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.graph import run_slides
from pipeline.testing import tiny_cohort

pytestmark = pytest.mark.slow
N_SLIDES = 2000


def test_two_thousand_tiny_slides_bounded_scheduler(tmp_path: Path, blob_model: Path) -> None:
    from distributed import Client, LocalCluster

    entries = tiny_cohort(tmp_path, N_SLIDES)
    counts: list[int] = []
    stop = threading.Event()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:

            def sample() -> None:
                while not stop.is_set():
                    counts.append(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            outcomes = run_slides(client, entries, tmp_path / "out", Config(model=str(blob_model)))
            stop.set()
            sampler.join()
    assert len(outcomes) == N_SLIDES and all(o.status == "ok" for o in outcomes)
    # default: at most max(4, 3 × 2 threads) = 6 slides in flight, each a handful of tasks
    assert 0 < max(counts) <= 6 * 8
    assert len(list((tmp_path / "out" / "slides").iterdir())) == N_SLIDES
