"""A local Dask cluster whose scheduler and workers start no HTTP server (``--dashboard off``).

Dask's scheduler and workers start an HTTP server whatever the settings (the dashboard is one
application on it; ``/health``, ``/metrics`` and JSON routes are others), on loopback for a local
cluster. ``--dashboard off`` means no port that answers HTTP at all: these subclasses skip the
server and leave an empty application where Dask looks for one.
"""

from __future__ import annotations

from typing import Any

from distributed import LocalCluster, Nanny, Scheduler, Worker
from distributed.http.routing import RoutingApplication


class _NoHttpServer:
    http_application: RoutingApplication
    http_server: None

    def start_http_server(
        self, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None
    ) -> None:
        self.http_application = RoutingApplication([])  # nothing mounted, nothing listening
        self.http_server = None


class SchedulerWithoutHttp(_NoHttpServer, Scheduler):
    """A scheduler with no HTTP server."""


class WorkerWithoutHttp(_NoHttpServer, Worker):
    """A worker with no HTTP server."""


class NannyWithoutHttp(Nanny):
    """A nanny (it serves no HTTP itself) whose worker process starts no HTTP server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["worker_class"] = WorkerWithoutHttp
        super().__init__(*args, **kwargs)


class LocalClusterWithoutHttp(LocalCluster):
    """``LocalCluster`` of :class:`SchedulerWithoutHttp` and :class:`NannyWithoutHttp` workers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(worker_class=NannyWithoutHttp, **kwargs)

    async def _start(self) -> None:
        self.scheduler_spec = {**self.scheduler_spec, "cls": SchedulerWithoutHttp}
        await super()._start()
