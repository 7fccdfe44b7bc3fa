"""pipeline/cluster.py: the LocalCUDACluster options here; the cluster itself where dask-cuda and
a GPU are present."""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import pytest

from pipeline import cluster as cluster_module
from pipeline.cluster import GPU_RESOURCE, cuda_cluster_options, local_cuda_cluster, visible_gpu_count


def test_one_worker_per_gpu_with_host_threads_and_a_pool() -> None:
    opts = cuda_cluster_options(n_gpus=4, cpu_cores=64)
    assert opts["n_workers"] == 4 and opts["threads_per_worker"] == 16
    assert opts["rmm_pool_size"] == 0.5 and opts["resources"] == {GPU_RESOURCE: 1}
    assert opts["rmm_allocator_external_lib_list"] == ["cupy", "torch"]
    assert cuda_cluster_options(n_gpus=8, cpu_cores=4)["threads_per_worker"] == 2  # never fewer than 2
    assert cuda_cluster_options(1, 16, threads_per_worker=3)["threads_per_worker"] == 3
    assert "rmm_allocator_external_lib_list" not in cuda_cluster_options(1, 16, rmm_libraries=False)
    no_rmm = cuda_cluster_options(1, 16, rmm=False)
    assert "rmm_pool_size" not in no_rmm and "rmm_allocator_external_lib_list" not in no_rmm
    assert no_rmm["resources"] == {GPU_RESOURCE: 1} and no_rmm["n_workers"] == 1
    with pytest.raises(ValueError):
        cuda_cluster_options(0, 16)
    with pytest.raises(ValueError):
        cuda_cluster_options(1, 16, rmm_pool_share=1.5)


def test_tile_tasks_ask_for_the_resource_the_cuda_workers_advertise() -> None:
    from pipeline.graph import tile_task_resources

    advertised = cuda_cluster_options(2, 16)["resources"]
    gpu_cluster = {"tcp://a": {"resources": advertised}, "tcp://b": {"resources": advertised}}
    asked = tile_task_resources(gpu_cluster)
    assert asked is not None and set(asked) <= set(advertised)
    assert all(asked[k] <= advertised[k] for k in asked)  # one GPU worker can run a tile task
    cpu_cluster = {"tcp://c": {"resources": {}}, "tcp://d": {}}
    assert tile_task_resources(cpu_cluster) is None  # CPU workers run tiles without asking


class _RecordingLocalCUDACluster:
    """Stands in for ``dask_cuda.LocalCUDACluster`` and, like it, refuses a pool when rmm does not import."""

    def __init__(self, *, rmm_pool_size: Any = None, rmm_allocator_external_lib_list: Any = None, **kwargs: Any):
        if rmm_pool_size is not None:
            try:
                import rmm  # noqa: F401
            except ImportError as exc:
                raise ValueError("RMM pool or managed memory requested but module 'rmm' is not available") from exc
        self.options = dict(kwargs, rmm_pool_size=rmm_pool_size, rmm_libs=rmm_allocator_external_lib_list)


@pytest.fixture
def stand_in_dask_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dask_cuda module whose cluster records its options, and one visible GPU."""
    module = types.ModuleType("dask_cuda")
    module.LocalCUDACluster = _RecordingLocalCUDACluster  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_cuda", module)
    monkeypatch.setattr(cluster_module, "visible_gpu_count", lambda: 1)


def test_no_pool_where_rmm_does_not_import(stand_in_dask_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """dask-cuda without rmm (carried without the RMM wheels, say): the cluster starts, without a pool."""
    monkeypatch.setitem(sys.modules, "rmm", None)  # `import rmm` raises ImportError, as where it is absent
    assert not cluster_module.rmm_available()
    started = local_cuda_cluster(rmm_pool_share=0.25)
    assert isinstance(started, _RecordingLocalCUDACluster)
    assert started.options["rmm_pool_size"] is None and started.options["rmm_libs"] is None
    assert started.options["resources"] == {GPU_RESOURCE: 1} and started.options["n_workers"] == 1


def test_pool_where_rmm_imports(stand_in_dask_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rmm", types.ModuleType("rmm"))  # an importable rmm
    monkeypatch.setattr(cluster_module, "rmm_available", lambda: True)
    started = local_cuda_cluster(rmm_pool_share=0.25)
    assert started.options["rmm_pool_size"] == 0.25
    assert started.options["rmm_libs"] == ["cupy", "torch"]


def test_rmm_that_fails_to_import_counts_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed rmm whose CUDA libraries are missing raises at import: no pool then either."""
    import builtins

    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "rmm":
            raise OSError("librmm.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "rmm" else None)
    monkeypatch.delitem(sys.modules, "rmm", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    assert not cluster_module.rmm_available()


def test_no_cluster_without_dask_cuda_or_gpu() -> None:
    if importlib.util.find_spec("dask_cuda") is not None and visible_gpu_count() > 0:
        pytest.skip("dask-cuda and a GPU are present")
    assert local_cuda_cluster() is None


@pytest.mark.gpu
def test_local_cuda_cluster_runs_device_work() -> None:
    pytest.importorskip("dask_cuda")
    from distributed import Client

    cluster = local_cuda_cluster(rmm_pool_share=0.1)
    assert cluster is not None
    with cluster, Client(cluster) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == visible_gpu_count()
        assert all(w["resources"] == {GPU_RESOURCE: 1} for w in workers)

        def device_sum() -> float:
            import cupy

            return float(cupy.arange(10, dtype=cupy.float32).sum())

        assert client.submit(device_sum, resources={GPU_RESOURCE: 1}).result() == 45.0


def test_rmm_pool_is_parsed_where_it_is_used_and_named_when_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """NUCLEI_RMM_POOL sizes the RMM pool of a local CUDA cluster: a wrong value there is refused
    naming the variable; where no such cluster is started (no GPU, no dask-cuda, no RMM) it is
    not read at all."""
    import types

    from pipeline import cluster
    from pipeline.cluster import RMM_POOL_SHARE, local_cuda_cluster, rmm_pool_share_from

    assert rmm_pool_share_from({}) == RMM_POOL_SHARE
    assert rmm_pool_share_from({"NUCLEI_RMM_POOL": " 0.8 "}) == 0.8
    for bad in ("lots", "0", "1.5", "-0.2", "nan", "inf"):
        with pytest.raises(ValueError, match=rf"NUCLEI_RMM_POOL={bad!r} must be a share"):
            rmm_pool_share_from({"NUCLEI_RMM_POOL": bad})

    started: list[dict] = []

    class LocalCUDACluster:  # records what it was asked for; dask-cuda is not installed here
        def __init__(self, **options: object) -> None:
            started.append(options)

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=LocalCUDACluster))
    monkeypatch.setenv("NUCLEI_RMM_POOL", "lots")
    monkeypatch.setattr(cluster, "visible_gpu_count", lambda: 0)
    assert local_cuda_cluster() is None  # no GPU: no cluster, the variable is not read
    monkeypatch.setattr(cluster, "visible_gpu_count", lambda: 1)
    monkeypatch.setattr(cluster, "rmm_available", lambda: False)
    assert isinstance(local_cuda_cluster(), LocalCUDACluster)  # no RMM: no pool to size
    assert "rmm_pool_size" not in started[-1]
    monkeypatch.setattr(cluster, "rmm_available", lambda: True)
    with pytest.raises(ValueError, match="NUCLEI_RMM_POOL='lots'"):
        local_cuda_cluster()
    monkeypatch.setenv("NUCLEI_RMM_POOL", "0.3")
    local_cuda_cluster()
    assert started[-1]["rmm_pool_size"] == 0.3
