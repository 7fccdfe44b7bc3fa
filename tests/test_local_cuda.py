"""pipeline/cluster.py: the LocalCUDACluster options here; the cluster itself where dask-cuda and
a GPU are present."""

from __future__ import annotations

import importlib.util

import pytest

from pipeline.cluster import GPU_RESOURCE, cuda_cluster_options, local_cuda_cluster, visible_gpu_count


def test_one_worker_per_gpu_with_host_threads_and_a_pool() -> None:
    opts = cuda_cluster_options(n_gpus=4, cpu_cores=64)
    assert opts["n_workers"] == 4 and opts["threads_per_worker"] == 16
    assert opts["rmm_pool_size"] == 0.5 and opts["resources"] == {GPU_RESOURCE: 1}
    assert opts["rmm_allocator_external_lib_list"] == ["cupy", "torch"]
    assert cuda_cluster_options(n_gpus=8, cpu_cores=4)["threads_per_worker"] == 2  # never fewer than 2
    assert cuda_cluster_options(1, 16, threads_per_worker=3)["threads_per_worker"] == 3
    assert "rmm_allocator_external_lib_list" not in cuda_cluster_options(1, 16, rmm_libraries=False)
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


def test_no_cluster_without_dask_cuda_or_gpu() -> None:
    if importlib.util.find_spec("dask_cuda") is not None and visible_gpu_count() > 0:
        pytest.skip("dask-cuda and a GPU are present")
    assert local_cuda_cluster() is None


@pytest.mark.gpu
def test_local_cuda_cluster_runs_device_work() -> None:
    pytest.importorskip("dask_cuda")
    pytest.importorskip("rmm")
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
