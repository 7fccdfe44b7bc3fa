"""Fault tolerance with real processes: a ``dask-scheduler`` and ``dask-worker`` processes,
and ``pipeline.run --scheduler`` as the driver; the clusters started outside a run (the tests',
cluster/local.sh) listen on this machine only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.io.readers.cucim import cucim_available
from pipeline.testing import synthetic_slide_cohort
from pipeline.testing.cluster import ExternalCluster, run_args, wait_until
from tests.conftest import ROOT, WSI_FIXTURES, listening_addresses, need_shared, output_digest, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster2(tmp_path: Path) -> Iterator[ExternalCluster]:
    c = ExternalCluster(tmp_path, 2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    synthetic_slide_cohort(folder, 5, 768, 640, seed=40, prefix="c")
    return folder


@pytest.fixture(scope="module")
def reference(cohort: Path, blob_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Outputs of an uninterrupted run with one local worker."""
    out = tmp_path_factory.mktemp("reference")
    result = subprocess.run(
        run_args(cohort / "manifest.csv", out, blob_model), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {p.name: output_digest(p) for p in (out / "slides").iterdir()}


def published(out: Path) -> set[str]:
    slides = out / "slides"
    return {p.name for p in slides.iterdir() if not p.name.startswith(".")} if slides.exists() else set()


def test_killed_worker_costs_only_its_tasks(cluster2, cohort, blob_model, reference, tmp_path) -> None:
    out = tmp_path / "out"
    driver = subprocess.Popen(
        run_args(cohort / "manifest.csv", out, blob_model, cluster2.file),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: (out / "slides").exists() and any(p.name.startswith(".") for p in (out / "slides").iterdir()))
    time.sleep(1.0)  # tiles in progress on both workers
    cluster2.kill_worker(0)
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-3000:]
    assert {p: output_digest(out / "slides" / p) for p in published(out)} == reference


def test_killed_driver_resumes_without_recomputing(cluster2, cohort, blob_model, reference, tmp_path) -> None:
    out = tmp_path / "out"
    driver = subprocess.Popen(
        run_args(cohort / "manifest.csv", out, blob_model, cluster2.file),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until(lambda: len(published(out)) >= 2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {p: (out / "slides" / p / "stats.json").stat().st_mtime_ns for p in published(out)}
    assert 2 <= len(before) < 5
    result = subprocess.run(
        run_args(cohort / "manifest.csv", out, blob_model, cluster2.file),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(before)} already complete" in result.stderr
    for p, mtime in before.items():
        assert (out / "slides" / p / "stats.json").stat().st_mtime_ns == mtime  # not recomputed
    assert {p: output_digest(out / "slides" / p) for p in published(out)} == reference
    assert not [p for p in (out / "slides").iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not cucim_available(), reason="the poison slide needs cuCIM (it crashes on Deflate tiles)")
def test_poison_slide_fails_after_bounded_attempts(cluster2, cohort, blob_model, tmp_path) -> None:
    need_shared("boxes.tiff")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"slide_path,slide_id\n{cohort / 'c0.svs'},c0\n{WSI_FIXTURES / 'boxes.tiff'},boxes\n{cohort / 'c1.svs'},c1\n"
    )
    out = tmp_path / "out"
    # forcing cuCIM makes it read the Deflate-compressed TIFF it crashes on: a real worker-killing slide
    result = subprocess.run(
        run_args(manifest, out, blob_model, cluster2.file, "--reader", "cucim"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["slides"]["c0"]["status"] == "ok" and run["slides"]["c1"]["status"] == "ok"
    assert run["slides"]["boxes"]["status"] == "failed"
    assert "worker process died" in run["slides"]["boxes"]["error"]
    assert "died" in json.loads((out / "slides" / "boxes" / "stats.json").read_text())["error"]


def test_same_outputs_with_one_and_two_workers(cluster2, cohort, blob_model, reference, tmp_path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        run_args(cohort / "manifest.csv", out, blob_model, cluster2.file),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: output_digest(out / "slides" / p) for p in published(out)} == reference


def test_the_test_cluster_listens_on_loopback_only(tmp_path: Path) -> None:
    """The scheduler and workers the tests and the chaos benchmark start are reachable from this
    machine only, as the pipeline's own local cluster is."""
    import psutil

    cluster = ExternalCluster(tmp_path, 1)
    try:
        pids = {cluster.scheduler.pid} | {w.pid for w in cluster.workers}
        processes = [psutil.Process(p) for p in pids]
        processes += [c for p in list(processes) for c in p.children(recursive=True)]
        listening = [
            conn.laddr.ip
            for p in processes
            for conn in p.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening and all(ip in ("127.0.0.1", "::1") for ip in listening), listening
    finally:
        cluster.close()


def tile_array_is_mapped_apart() -> bool:
    """Whether a tile-sized array (16 MiB) is mapped on its own (glibc's ``mallinfo2``: bytes in
    mmapped chunks), to be unmapped at its free and faulted in afresh by the next one, rather
    than taken from the heap that the previous tile's arrays left free."""
    import ctypes

    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd")] + [
            (name, ctypes.c_size_t) for name in ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
        ]

    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    before = mallinfo2().hblkhd
    tile = np.ones(2**21)
    mapped = mallinfo2().hblkhd - before >= tile.nbytes
    del tile
    return bool(mapped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_workers_take_tile_arrays_from_the_heap(blob_model: Path) -> None:
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap
    threshold at 128 KiB: every tile-sized temporary was mapped and faulted in afresh (the features
    stage 1.8× slower in a worker than alone). The pipeline's worker plugin sets the thresholds for
    tile-sized arrays: they come from the heap, whose freed pages serve the next tile."""
    from distributed import Client, LocalCluster

    from pipeline.config import Config
    from pipeline.graph import ModelPreload

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            (untuned,) = client.run(tile_array_is_mapped_apart).values()
            client.register_plugin(ModelPreload(Config(model=str(blob_model))), name=ModelPreload.name)
            (tuned,) = client.run(tile_array_is_mapped_apart).values()
    assert untuned  # the nanny's environment: every tile-sized array mapped and faulted in afresh
    assert not tuned


_KEPT: list = []


def leave_freed_heap_behind(mib: int) -> int:
    """Allocate ``mib`` 1-MiB arrays (tile-sized temporaries, from the heap), keep one more block
    allocated after them, and free the rest: the freed MiB lie below a live block, where glibc's
    trim threshold (which returns only the top of a heap) never reaches them."""
    import numpy as np

    arrays = [np.ones(2**17) for _ in range(mib)]
    _KEPT.append(np.ones(2**17))
    del arrays
    return mib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_worker_hands_back_the_heap_a_finished_task_freed(blob_model: Path) -> None:
    """A worker's resident memory grew from tile to tile (1.8 GB to 2.6 GB over the 64 tiles of an
    8192² slide, none of it live: each tile's freed arrays left holes between the next tile's).
    After each task the worker hands its freed heap pages back to the system."""
    from distributed import Client, LocalCluster

    from pipeline.config import Config
    from pipeline.graph import ModelPreload
    from pipeline.testing.memory import current_rss_bytes

    mib = 256
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.register_plugin(ModelPreload(Config(model=str(blob_model))), name=ModelPreload.name)
            (before,) = client.run(current_rss_bytes).values()
            assert client.submit(leave_freed_heap_behind, mib, pure=False).result() == mib
            (after,) = client.run(current_rss_bytes).values()
    grew = (after - before) / 2**20
    assert grew < mib / 4, f"the worker kept {grew:.0f} MiB of the {mib} MiB its task freed"


@pytest.mark.slow
def test_local_launcher_listens_on_loopback_only(tmp_path: Path) -> None:
    """cluster/local.sh: the scheduler, its dashboard and the workers bind to 127.0.0.1 unless told."""
    import signal
    import time

    import psutil

    sched = tmp_path / "sched.json"
    env = {**os.environ, "SCHED": str(sched), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["bash", str(ROOT / "cluster" / "local.sh"), "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # the scheduler writes its file in place: wait until it is whole, not only there
        wait_for(lambda: sched.exists() and sched.read_text().rstrip().endswith("}"), timeout=60)
        deadline = time.time() + 60
        while True:  # until the worker has registered with the scheduler
            info = json.loads(sched.read_text())
            group = [p.pid for p in psutil.process_iter() if p.pid > 1 and _group(p.pid) == proc.pid]
            addresses = listening_addresses(group)
            if len(group) >= 4 and len(_listening_ports(group)) >= 4 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert addresses == {"127.0.0.1"}, addresses
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _listening_ports(pids: list[int]) -> set[int]:
    import psutil

    return {
        c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
    }
