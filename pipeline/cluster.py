"""Starting the Dask cluster a run uses: a running scheduler, or one started on this machine.

:func:`connect` gives the run its client: to an existing ``dask-scheduler`` when one is
configured; else a ``LocalCUDACluster`` (one worker per GPU) when GPUs and dask-cuda are
present; else a local cluster of worker processes sized to this machine.

One machine with GPUs: a ``dask_cuda.LocalCUDACluster`` sized for the nucleus pipeline.

    from pipeline.cluster import local_cuda_cluster
    cluster = local_cuda_cluster()            # None where dask-cuda or a GPU is missing
    client = distributed.Client(cluster)

One worker process per visible GPU (dask-cuda pins each to its GPU through
``CUDA_VISIBLE_DEVICES``, so inside a worker the GPU is always device 0: pass ``device_id=0`` to
the model), an RMM memory pool per GPU that cupy and torch both allocate from (no fragmentation
from thousands of tile-sized buffers, no two allocators fighting over one device; where RMM is
not installed the cluster starts without a pool, since dask-cuda refuses one), and host
threads per worker for the work that stays on the CPU (slide decoding, polygon tracing, Parquet
and Zarr writes) while the GPU runs the next tile. The workers advertise ``GPU=1`` so the
pipeline's tile tasks go to them (``GPU_RESOURCE``). ``pipeline.run`` starts this cluster by
itself when GPUs are visible; it only says how to start things, no pipeline logic.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import Config

GPU_RESOURCE = "GPU"  # the worker resource pipeline.graph sends tile tasks to
# Share of each GPU's memory taken up front by the RMM pool. Half leaves room for the CUDA
# context, cuDNN workspaces and TensorRT engines; a 2048-px tile needs ~0.5 GiB all stages together.
RMM_POOL_SHARE = 0.5
# Libraries whose device allocations go through the RMM pool (dask-cuda ≥ 24.12).
RMM_LIBRARIES = ["cupy", "torch"]
RMM_POOL_ENV = "NUCLEI_RMM_POOL"  # overrides RMM_POOL_SHARE; read only where a pool is set up


# glibc's malloc in a worker: Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which
# also fixes glibc's mmap threshold at 128 KiB, so every tile-sized temporary (a window's labels,
# masks, maps: 1–30 MB) is mapped fresh and faulted in page by page, then unmapped: the features
# stage ran 1.8× slower than in a plain process (benchmarks/RESULTS-pipeline.md). Arrays up to
# 32 MiB (glibc's largest mmap threshold) come from the heap instead, and up to 64 MiB of freed heap
# is kept for the next tile rather than handed back after every free. The trim threshold only ever
# returns the top of a heap: what a task freed below a block still live stays resident, and a
# worker grew from tile to tile (1.8 to 2.6 GB over an 8192² slide), so the worker hands its freed
# heap back after its tasks, at most once a second (``release_freed_heap``, ``graph.TRIM_EVERY_S``).
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 64 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def tune_allocator(mmap_threshold: int = MALLOC_MMAP_THRESHOLD, trim_threshold: int = MALLOC_TRIM_THRESHOLD) -> bool:
    """Set this process's glibc malloc thresholds for tile-sized arrays (see ``MALLOC_MMAP_THRESHOLD``);
    False, changing nothing, where the C library is not glibc."""
    mallopt = glibc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def release_freed_heap() -> bool:
    """Hand the pages of this process's freed heap back to the system (glibc's ``malloc_trim``):
    after a task, so that what one tile freed does not stay resident beside the next. False where
    the C library is not glibc."""
    malloc_trim = glibc_function("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))


@functools.cache
def glibc_function(name: str) -> Any | None:
    """A function of this process's glibc (``mallopt``, ``malloc_trim``), or None where the C
    library is not glibc (looked up once per process)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def rmm_pool_share_from(environ: Mapping[str, str]) -> float:
    """The RMM pool's share of each GPU's memory: ``NUCLEI_RMM_POOL`` when set, else
    ``RMM_POOL_SHARE``. ValueError naming the variable when it is not a share in (0, 1].

    >>> rmm_pool_share_from({"NUCLEI_RMM_POOL": "0.8"}), rmm_pool_share_from({})
    (0.8, 0.5)
    """
    text = environ.get(RMM_POOL_ENV)
    if text is None:
        return RMM_POOL_SHARE
    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0 < share <= 1:  # NaN fails too
        raise ValueError(f"{RMM_POOL_ENV}={text!r} must be a share of each GPU's memory in (0, 1], such as 0.5")
    return share


def visible_gpu_count() -> int:
    """GPUs this process may use (NVML through pynvml, which dask-cuda needs anyway; else cupy)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            count = min(count, len([d for d in visible.split(",") if d.strip()]))
        return count
    except Exception:
        pass
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def cuda_cluster_options(
    n_gpus: int,
    cpu_cores: int,
    rmm_pool_share: float = RMM_POOL_SHARE,
    threads_per_worker: int | None = None,
    rmm_libraries: bool = True,
    rmm: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for ``LocalCUDACluster``: one worker per GPU, the host cores shared
    among them (at least 2 threads each: one feeds the GPU while the other decodes or writes).

    ``rmm``: whether RMM is installed. Without it there is no pool (dask-cuda refuses
    ``rmm_pool_size`` when it cannot import rmm), and cupy and torch keep their own allocators.

    Parameters
    ----------
    n_gpus : int
        Number of GPUs, one worker each.
    cpu_cores : int
        Host cores shared among the workers.
    rmm_pool_share : float, optional
        Share of each GPU's memory taken by the RMM pool, in (0, 1].
    threads_per_worker : int or None, optional
        Threads per worker; None: ``cpu_cores // n_gpus``, at least 2.
    rmm_libraries : bool, optional
        Whether cupy and torch allocate from the RMM pool too.
    rmm : bool, optional
        Whether RMM is installed (no pool without it).

    Returns
    -------
    dict
        Keyword arguments for ``dask_cuda.LocalCUDACluster``.

    Raises
    ------
    ValueError
        When ``n_gpus`` is below 1 or ``rmm_pool_share`` is outside (0, 1].
    """
    if n_gpus < 1:
        raise ValueError("a CUDA cluster needs at least one GPU")
    if not 0 < rmm_pool_share <= 1:
        raise ValueError(f"rmm_pool_share is a share of each GPU's memory in (0, 1], got {rmm_pool_share}")
    threads = threads_per_worker or max(2, cpu_cores // n_gpus)
    options: dict[str, Any] = {
        "n_workers": n_gpus,
        "threads_per_worker": threads,
        "resources": {GPU_RESOURCE: 1},
        "memory_limit": "auto",
    }
    if rmm:
        options["rmm_pool_size"] = rmm_pool_share
        if rmm_libraries:
            options["rmm_allocator_external_lib_list"] = list(RMM_LIBRARIES)
    return options


def rmm_available() -> bool:
    """Whether RMM (the pool allocator dask-cuda sets up) imports here, as dask-cuda imports it
    before it accepts a pool: installed is not enough when its CUDA libraries are missing."""
    if importlib.util.find_spec("rmm") is None:
        return False
    try:
        import rmm  # noqa: F401
    except Exception:
        return False
    return True


def local_cuda_cluster(
    rmm_pool_share: float | None = None, threads_per_worker: int | None = None, **kwargs: Any
) -> Any | None:
    """A started ``LocalCUDACluster``, or None when dask-cuda is not installed or no GPU is
    visible (the caller then starts its CPU cluster). Without RMM the cluster starts without a
    pool. ``rmm_pool_share``: the pool's share of each GPU's memory, None = ``NUCLEI_RMM_POOL`` or the
    default, read only when there is a pool to size (ValueError naming the variable when it is
    wrong). ``kwargs`` go to ``LocalCUDACluster``."""
    try:
        import dask_cuda
    except ImportError:
        return None
    n_gpus = visible_gpu_count()
    if n_gpus == 0:
        return None
    import inspect

    supports_libs = "rmm_allocator_external_lib_list" in inspect.signature(dask_cuda.LocalCUDACluster).parameters
    rmm = rmm_available()
    share = RMM_POOL_SHARE  # without RMM there is no pool to size
    if rmm:
        share = rmm_pool_share if rmm_pool_share is not None else rmm_pool_share_from(os.environ)
    options = cuda_cluster_options(
        n_gpus,
        os.cpu_count() or 1,
        share,
        threads_per_worker,
        rmm_libraries=supports_libs,
        rmm=rmm,
    )
    options.update(kwargs)
    return dask_cuda.LocalCUDACluster(**options)


LOOPBACK = "127.0.0.1"


def scheduler_file_address(path: str) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file``); ValueError naming
    the file when it holds none."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            address = json.load(f).get("address")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a scheduler file (JSON with an address): {exc}") from None
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"{path} is not a scheduler file: it has no scheduler address")
    return address


def dashboard_address(config: Config) -> str | None:
    """Where a local cluster's dashboard listens (None: no dashboard); loopback unless the
    config opens it deliberately (``dashboard: 0.0.0.0:8787``, ``--dashboard``)."""
    return None if config.dashboard == "off" else config.dashboard


def dashboard_link(client: Any) -> str | None:
    """The dashboard's address as the client sees it (``http://host:port/status``): a local
    cluster's, or a running scheduler's own; None when the scheduler serves none (``--dashboard
    off``, or bokeh missing where the scheduler runs)."""
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError, TypeError, ValueError):  # no HTTP server among its services
        return None
    try:  # the HTTP server runs either way; the dashboard is the bokeh application mounted on it
        if not client.run_on_scheduler(_serves_dashboard):
            return None
    except Exception:  # cannot ask (an older or locked-down scheduler): report the address anyway
        pass
    return link or None


def _serves_dashboard(dask_scheduler: Any = None) -> bool:
    """On the scheduler: whether its HTTP server carries the dashboard (bokeh present and the
    dashboard not switched off)."""
    return bool(getattr(getattr(dask_scheduler, "http_application", None), "applications", None))


def dashboard_message(link: str | None, config: Config, hostname: str | None = None) -> str:
    """The line a run prints about its dashboard: where it is and how to reach it from another
    machine (an SSH tunnel to a loopback dashboard), or why there is none."""
    if link is None:
        if config.scheduler:
            return "dask dashboard: none (the scheduler serves none: bokeh>=3.1 must be installed where it runs)"
        if config.dashboard == "off":
            return "dask dashboard: none (--dashboard off)"
        return "dask dashboard: none (bokeh>=3.1 is not installed)"
    parsed = urlsplit(link)
    host, port = parsed.hostname or "localhost", parsed.port or 8787
    local = f"http://localhost:{port}{parsed.path or '/status'}"
    if config.scheduler:
        return (
            f"dask dashboard: {link} (the scheduler's; where it listens on its node's loopback, as cluster/ starts "
            f"it: ssh -L {port}:localhost:{port} {host}, then open {local})"
        )
    if host in ("127.0.0.1", "localhost", "::1"):
        where = hostname or socket.gethostname()
        return (
            f"dask dashboard: {link} (this machine only; from another: ssh -L {port}:localhost:{port} {where}, "
            f"then open {local})"
        )
    return f"dask dashboard: {link}"


def connect(config: Config) -> Any:
    """A distributed Client: to ``config.scheduler`` (address or scheduler file) when given;
    else a ``LocalCUDACluster`` (one worker per GPU) when GPUs and dask-cuda are present;
    else a local cluster of worker processes sized to this machine.

    A local cluster listens on 127.0.0.1 only, dashboard included (``config.dashboard`` opens
    the dashboard deliberately): a Dask scheduler runs whatever pickled code reaches it."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.scheduler.allowed-failures": max(0, config.max_attempts - 1)})
    if config.scheduler:
        if os.path.exists(config.scheduler):
            return Client(scheduler_file_address(config.scheduler))
        return Client(config.scheduler)
    cuda = local_cuda_cluster(
        threads_per_worker=config.threads_per_worker or None,
        host=LOOPBACK,
        dashboard_address=dashboard_address(config),
    )
    if cuda is not None:
        return Client(cuda)
    cores = os.cpu_count() or 1
    workers = config.n_workers or max(1, cores // 4)
    threads = config.threads_per_worker or max(1, cores // workers)
    cluster_class: type[LocalCluster] = LocalCluster
    if config.dashboard == "off":  # not even the HTTP server the dashboard would be mounted on
        from pipeline.cluster_without_http import LocalClusterWithoutHttp

        cluster_class = LocalClusterWithoutHttp
    cluster = cluster_class(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        memory_limit=config.memory_limit,
        host=LOOPBACK,  # scheduler, nannies and workers: only this machine can reach them
        dashboard_address=dashboard_address(config),
    )
    return Client(cluster)
