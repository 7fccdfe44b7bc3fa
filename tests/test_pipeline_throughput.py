"""The throughput benchmark's worker memory is the worker's own: a process started from the
driver inherits the driver's high-water mark in ``ru_maxrss`` (Linux keeps it across exec), so a
driver that had generated a large slide made its workers look as large (an 8192² slide's worker
read 4.4 GB while it never held more than 2.7)."""

from __future__ import annotations

import importlib
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the spawned process imports it by name
    return importlib.import_module("pipeline_throughput")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited high-water mark is Linux's")
def test_a_worker_peak_is_its_own_not_its_parents(bench: Any) -> None:
    held = np.ones(2**30 // 8)  # 1 GiB touched in this (the parent) process
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peak = pool.apply(bench.peak_rss_bytes)
    assert held.sum() > 0
    assert 0 < peak < 512 * 2**20, f"{peak / 2**20:.0f} MiB: the parent's 1 GiB counted as the child's"
