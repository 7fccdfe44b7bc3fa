"""The throughput benchmark's worker memory is the worker's own: a process started from the
driver inherits the driver's high-water mark in ``ru_maxrss`` (Linux keeps it across exec), so a
driver that had generated a large slide made its workers look as large (an 8192² slide's worker
read 4.4 GB while it never held more than 2.7)."""

from __future__ import annotations

import multiprocessing
import sys

import numpy as np
import pytest

from pipeline.testing.memory import own_peak_rss_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited high-water mark is Linux's")
def test_a_worker_peak_is_its_own_not_its_parents() -> None:
    held = np.ones(2**30 // 8)  # 1 GiB touched in this (the parent) process
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peak = pool.apply(own_peak_rss_bytes)
    assert held.sum() > 0
    assert 0 < peak < 512 * 2**20, f"{peak / 2**20:.0f} MiB: the parent's 1 GiB counted as the child's"
