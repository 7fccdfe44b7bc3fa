"""A Dask cluster of real processes for fault tests and benchmarks: a ``dask scheduler`` and
``dask worker`` processes on loopback, each in its own process group so that one can be killed
with a real signal; and the ``pipeline.run`` command line that drives a run on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["ExternalCluster", "run_args", "wait_until"]

BIN = Path(sys.executable).parent  # the dask command line of this environment


class ExternalCluster:
    """A dask-scheduler and worker processes (each a nanny + worker, in its own process group)."""

    def __init__(self, folder: Path, n_workers: int) -> None:
        self.folder = folder
        self.file = folder / "scheduler.json"
        env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="2")
        self.env = env
        with open(folder / "scheduler.log", "w") as log:  # the child keeps its own descriptor
            self.scheduler = self._start(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--scheduler-file",
                    str(self.file),
                    "--host",
                    "127.0.0.1",  # nothing listens beyond this machine (the project's network default)
                    "--port",
                    "0",
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                log,
            )
        deadline = time.time() + 60
        while not self.file.exists() and time.time() < deadline:
            time.sleep(0.1)
        self.workers = [self.start_worker(i) for i in range(n_workers)]
        self.wait_for_workers(n_workers)

    def _start(self, args: list[str], log: IO[str]) -> subprocess.Popen:
        return subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

    def start_worker(self, i: int) -> subprocess.Popen:
        with open(self.folder / f"worker{i}.log", "a") as log:  # the child keeps its own descriptor
            return self._start(
                [
                    str(BIN / "dask"),
                    "worker",
                    "--scheduler-file",
                    str(self.file),
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--memory-limit",
                    "3GiB",
                    "--host",
                    "127.0.0.1",
                    # a worker's HTTP server (health, metrics) runs even with --no-dashboard, on all
                    # interfaces unless placed
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--name",
                    f"w{i}-{time.time_ns()}",
                ],
                log,
            )

    def client(self):  # type: ignore[no-untyped-def]
        from distributed import Client

        return Client(scheduler_file=str(self.file), timeout=30)

    def wait_for_workers(self, n: int) -> None:
        with self.client() as c:
            c.wait_for_workers(n, timeout=120)

    def kill_worker(self, i: int) -> None:
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run_args(manifest: Path, out: Path, model: Path, scheduler: Path | None = None, *extra: str) -> list[str]:
    """The command line of ``python -m pipeline.run`` as the tests start it: 256 px tiles, no progress bars, no QC.

    Parameters
    ----------
    manifest : Path
        The manifest.
    out : Path
        The output folder.
    model : Path
        The model file.
    scheduler : Path or None, optional
        A Dask scheduler file to connect to; None: a local cluster of one single-threaded worker.
    *extra : str
        More arguments, added before the scheduler's.

    Returns
    -------
    list of str
        The command, starting with this Python interpreter.
    """
    args = [
        sys.executable,
        "-m",
        "pipeline.run",
        str(manifest),
        "--out",
        str(out),
        "--model",
        str(model),
        "--tile-px",
        "256",
        "--no-progress",
        "--no-qc",
        *extra,
    ]
    if scheduler:
        args += ["--scheduler", str(scheduler)]
    else:
        args += ["--workers", "1", "--threads", "1"]
    return args


def wait_until(predicate: Callable[[], bool], timeout: float = 300) -> None:
    """Poll ``predicate`` every 50 ms until it holds; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError
