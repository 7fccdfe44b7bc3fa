"""The Dask graph: slides → tile batches → label bands → one reduction per slide.

Slides are submitted progressively: at most ``slides_in_flight`` slides have tasks on the
cluster at once, so the scheduler holds a few hundred tasks whatever the manifest's length.
Each slide's sub-graph is built when its plan (tissue tiles) is known:

    plan-slide ─► segment-tiles × ⌈tiles / tiles_per_task⌉ ─► assemble-labels × bands ─► reduce-slide
              └► check-scale ──────────────────────────────────────────────────────────┘

(a slide of at most ``tiles_per_task`` tiles is finished inside its plan-slide task). The scale
check (the estimate from the nuclei against a stated resolution) cannot change what the tiles
compute, so it runs beside them instead of before them.

Task keys carry these names and the slide id, so the dashboard shows what runs where.
A slide whose tasks fail (an exception, or workers that died ``max_attempts`` times on it)
is recorded as failed with its reason; the others go on. A full disk is no slide's fault: the
run stops (``DiskFull``) and no slide is recorded as failed by it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from distributed import WorkerPlugin

from pipeline.cluster import GPU_RESOURCE, release_freed_heap, tune_allocator
from pipeline.config import Config
from pipeline.io.outputs.contents import check_published
from pipeline.io.outputs.publish import (
    DiskFull,
    disk_full,
    final_slide_dir,
    publish_failure,
    read_published_stats,
    says_disk_full,
)
from pipeline.io.outputs.stats import failure_stats
from pipeline.io.outputs.status import SlideStatus
from pipeline.manifest import SlideEntry
from pipeline.slide import (
    SlidePlan,
    assemble_labels,
    assembly_bands,
    batches,
    check_slide_scale,
    model_for,
    reduce_slide,
    segment_tiles,
    start_slide,
)
from pipeline.slide.inputs import changed_inputs

TRIM_EVERY_S = 1.0  # a worker hands its freed heap back after a task at most this often
BAND_ROWS = 8  # tile rows per label-assembly task (rounded up to whole rows of maps.zarr shards)


class ModelPreload(WorkerPlugin):
    """Worker plugin: loads the model into the worker process once, when the worker starts
    (or joins later), so no task pays for it and no task ships it; sets the process's malloc
    thresholds for tile-sized arrays (``cluster.tune_allocator``) and hands the heap a task freed
    back to the system when it ends (``cluster.release_freed_heap``)."""

    name = "nuclei-model"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.trimmed = -math.inf  # when the heap was last handed back (time.monotonic)

    def setup(self, worker: Any) -> None:
        tune_allocator()
        model_for(self.config)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Distributed's hook on every task state change in this worker: when a task starts
        executing, hand freed heap back to the system (at most once per ``TRIM_EVERY_S``).

        Parameters
        ----------
        key : Any
            The task's key.
        start, finish : str
            The states the task leaves and enters (``"executing"`` when it starts to run).
        **kwargs : Any
            What distributed passes besides (unused).
        """
        # on the worker's event loop: a trim takes milliseconds, so at most one per TRIM_EVERY_S
        now = time.monotonic()
        if start == "executing" and now - self.trimmed >= TRIM_EVERY_S:
            release_freed_heap()
            self.trimmed = now

    def teardown(self, worker: Any) -> None:
        pass


class WorkerConsole(WorkerPlugin):
    """Worker plugin: what workers print is for a person reading the run's console.

    - A warning is one line, ``warning: <message>`` (the package's messages start with the
      slide's id), without the Python source line that the default format echoes under it.
    - A task that fails with a ``SlideError`` (a slide's own fault: missing, truncated,
      unsupported) or a ``ModelError`` (a model whose output is no probability) is not logged by
      the worker ("Compute Failed" with its traceback, seven lines): the driver reports it in one
      line and records it in run.json and the slide's stats.json. Nor is a full disk, which stops
      the run with one error line. Any other exception is logged as before, its traceback included.
    - A task still running when the driver closes the cluster (a run stopping on a full disk) is
      not noted as "ended with CancelledError": the driver's error line says why the run stopped."""

    name = "nuclei-worker-console"

    def setup(self, worker: Any) -> None:
        self._showwarning = warnings.showwarning
        warnings.showwarning = one_line_warning
        logging.getLogger("distributed.worker").addFilter(_not_reported_by_the_driver)
        logging.getLogger("distributed.worker.state_machine").addFilter(_not_a_task_cancelled_on_close)

    def teardown(self, worker: Any) -> None:
        warnings.showwarning = getattr(self, "_showwarning", warnings.showwarning)
        logging.getLogger("distributed.worker").removeFilter(_not_reported_by_the_driver)
        logging.getLogger("distributed.worker.state_machine").removeFilter(_not_a_task_cancelled_on_close)


def one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` as one line: ``warning: <message>`` for the package's own
    warnings, ``warning: <category>: <message> (<file>:<line>)`` for another package's.

    Parameters
    ----------
    message : Warning or str
        The warning.
    category : type of Warning
        Its class.
    filename : str
        The file that warned: within this package, only the message is printed.
    lineno : int
        The line that warned.
    file : file-like or None
        Where to write; None = standard error. A closed or broken stream is ignored.
    line : str or None
        The source line, which the default format echoes and this one leaves out.
    """
    own = Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent)
    text = f"warning: {message}" if own else f"warning: {category.__name__}: {message} ({filename}:{lineno})"
    stream = file if file is not None else sys.stderr
    try:
        stream.write(text + "\n")
    except (OSError, ValueError):  # a closed or broken stream: a warning never fails the run
        pass


def _not_a_task_cancelled_on_close(record: logging.LogRecord) -> bool:
    """False for the worker's note that a task was cancelled as the worker closed."""
    return not record.getMessage().endswith("ended with CancelledError")


# How the failures the driver reports in one line start, as a worker logs them (the exception's repr).
_REPORTED_FAILURES = ("SlideError(", "ModelError(", "ModelOutputError(")


def _not_reported_by_the_driver(record: logging.LogRecord) -> bool:
    """False for the worker's "Compute Failed" record of a task that raised ``SlideError`` or
    ``ModelError``, or found the disk full (its arguments: key, state, task, exception text,
    traceback text)."""
    args = record.args if isinstance(record.args, tuple) else ()
    if not (isinstance(record.msg, str) and record.msg.startswith("Compute Failed") and len(args) > 3):
        return True
    text = str(args[3])
    return not (text.startswith(_REPORTED_FAILURES) or says_disk_full(text))


@dataclass
class SlideOutcome:
    entry: SlideEntry
    status: SlideStatus
    stats: dict[str, Any]
    error: str | None = None


class Progress(Protocol):
    def tiles_planned(self, n: int) -> None: ...
    def tiles_done(self, n: int) -> None: ...
    def slide_done(self, outcome: SlideOutcome) -> None: ...


class NoProgress:
    def tiles_planned(self, n: int) -> None:
        pass

    def tiles_done(self, n: int) -> None:
        pass

    def slide_done(self, outcome: SlideOutcome) -> None:
        pass


@dataclass
class _InFlight:
    entry: SlideEntry
    started: float
    futures: list[Any] = field(default_factory=list)
    plan: SlidePlan | None = None  # known once the slide is planned (not for a slide finished in its plan task)


def published_as_planned(out_dir: Path, plan: SlidePlan) -> dict[str, Any] | None:
    """The stats of the slide's published folder when it is a complete result of ``plan``: ok,
    this slide's, every file it must hold present with its recorded size and checksum and its
    nuclei counted right, made from the plan's inputs. None otherwise.

    A reduction's result can be lost after it published the slide (its worker dies before the
    driver fetches it); the scheduler then recomputes it, and the recomputation fails, its working
    folder having become the published one. The published folder is then the slide's result."""
    stats = read_published_stats(out_dir, plan.slide_id)
    if stats is None or stats.get("status") != SlideStatus.OK or stats.get("slide_id") != plan.slide_id:
        return None
    if check_published(final_slide_dir(out_dir, plan.slide_id), stats, plan.config, checksums=True):
        return None
    if changed_inputs(stats.get("inputs"), plan.inputs):
        return None
    return stats


def describe_failure(exc: BaseException, entry: SlideEntry, attempts: int) -> str:
    """A reason a user can act on, naming the slide."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (
            f"{entry.slide_path.name}: the worker process died {attempts} time(s) while processing this slide "
            f"(task {exc.task}): the reader or decoder may crash on this file, or workers were being ended "
            "(memory limit, preemption); --retry-failed tries it again"
        )
    return f"{entry.slide_path.name}: {type(exc).__name__}: {exc}"


def tile_task_resources(workers: dict[str, Any]) -> dict[str, int] | None:
    """What a tile task asks of its worker: one GPU where the cluster has GPU workers (dask-cuda
    workers advertise ``GPU_RESOURCE``), nothing on a CPU cluster (any worker may run it)."""
    gpu_workers = any(GPU_RESOURCE in (w.get("resources") or {}) for w in workers.values())
    return {GPU_RESOURCE: 1} if gpu_workers else None


class _TaskKind(Enum):
    """What a watched task of a slide does: the driver acts on its result by kind."""

    PLAN = "plan"  # plan-slide: a SlidePlan, or the stats of a slide finished within it
    TILES = "tiles"  # segment-tiles: a batch's summaries (counted in the progress)
    REDUCE = "reduce"  # reduce-slide: the slide's stats


@dataclass(frozen=True)
class _Watched:
    """A future the driver waits on: what kind of task it is, and whose."""

    kind: _TaskKind
    slide_id: str


class _SlideDriver:
    """The driver's side of a run: keeps at most ``limit`` slides in flight, builds each one's
    sub-graph once its plan is known, and turns each slide's last result (or its failure) into
    its outcome. One object rather than closures over shared state, so that each step is a
    method with its own name."""

    def __init__(
        self, client: Any, entries: list[SlideEntry], out_dir: Path, config: Config, progress: Progress
    ) -> None:
        from distributed import as_completed

        self.client = client
        self.out_dir = out_dir
        self.config = config
        self.progress = progress
        workers = client.scheduler_info().get("workers", {})
        self.tile_resources = tile_task_resources(workers)
        self._register_plugins()
        threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
        # enough slides in flight to hide the driver round trip between a slide's plan and its
        # tiles, few enough that the scheduler holds a few hundred tasks at most
        self.limit = config.slides_in_flight or max(4, 3 * threads)
        self.queue = list(reversed(entries))
        self.run_token = uuid.uuid4().hex[:6]
        self.flights: dict[str, _InFlight] = {}
        self.watched: dict[str, _Watched] = {}  # future key → what it is
        self.outcomes: list[SlideOutcome] = []
        self.done_stream = as_completed()

    def _register_plugins(self) -> None:
        """Load the model on every worker once, and make what workers print one line each."""
        try:
            self.client.register_plugin(ModelPreload(self.config), name=ModelPreload.name)
            self.client.register_plugin(WorkerConsole(), name=WorkerConsole.name)
        except OSError as exc:  # a worker lost during the broadcast (CommClosedError): tasks load the model themselves
            # stacklevel 4: the warning names the caller of run_slides, as it did before this class
            message = f"the model preload could not be registered on every worker ({exc}); going on"
            warnings.warn(message, stacklevel=4)

    def _watch(self, future: Any, kind: _TaskKind, slide_id: str) -> None:
        self.watched[future.key] = _Watched(kind, slide_id)
        self.done_stream.add(future)

    def start_next(self) -> None:
        """Submit the plans of queued slides while fewer than ``limit`` are in flight."""
        while self.queue and len(self.flights) < self.limit:
            entry = self.queue.pop()
            key = f"plan-slide-{entry.slide_id}-{self.run_token}"
            fut = self.client.submit(start_slide, entry, str(self.out_dir), self.config, key=key, pure=False)
            self.flights[entry.slide_id] = _InFlight(entry, time.time(), [fut])
            self._watch(fut, _TaskKind.PLAN, entry.slide_id)

    def finish(self, slide_id: str, outcome: SlideOutcome) -> None:
        """Record a slide's outcome and cancel what is left of its tasks."""
        flight = self.flights.pop(slide_id)
        for f in flight.futures:
            self.watched.pop(f.key, None)
        self.client.cancel([f for f in flight.futures if not f.done()])
        self.outcomes.append(outcome)
        self.progress.slide_done(outcome)

    def fail(self, slide_id: str, exc: BaseException, attempts: int) -> None:
        """Record a slide as failed, publishing its stats.json with the reason. A full disk stops
        the run; any other error recording it only adds to the reason (the next run retries a slide
        it finds no record of)."""
        flight = self.flights[slide_id]
        reason = describe_failure(exc, flight.entry, attempts)
        entry = flight.entry
        stats = failure_stats(
            entry.slide_id, entry.cancer_type, str(entry.slide_path), reason, time.time() - flight.started
        )
        try:
            publish_failure(self.out_dir, slide_id, stats)
        except OSError as publish_error:
            if disk_full(publish_error):
                raise DiskFull(f"{self.out_dir}: {publish_error} (recording the failure of slide {slide_id})") from None
            # the slide stays failed (and is retried by the next run, which finds no record of
            # it); the driver goes on with the other slides
            reason = f"{reason}; the failure could not be recorded in {self.out_dir}: {publish_error}"
            stats = {**stats, "error": reason}
        self.finish(slide_id, SlideOutcome(flight.entry, SlideStatus.FAILED, stats, reason))

    def slide_error(self, slide_id: str, exc: BaseException) -> None:
        """A slide's task failed, or its result could not be fetched: the slide fails, unless its
        published folder is already the complete result of its plan."""
        plan = self.flights[slide_id].plan
        stats = published_as_planned(self.out_dir, plan) if plan is not None else None
        if stats is not None:
            self.finish(slide_id, SlideOutcome(self.flights[slide_id].entry, SlideStatus.OK, stats))
        else:
            self.fail(slide_id, exc, self.config.max_attempts)

    def build_slide_graph(self, plan: SlidePlan) -> None:
        """Submit a planned slide's tasks: its scale check, its tile batches, the label bands
        assembled from them and the reduction that publishes the slide."""
        sid = plan.slide_id
        flight = self.flights[sid]
        flight.plan = plan
        self.progress.tiles_planned(len(plan.tiles))
        # tile tasks carry the plan without its tile list (their own batch is enough), so the
        # bytes sent per slide grow with its tiles, not with their square
        light = dataclasses.replace(plan, tiles=())
        # the planning work left, submitted first so that it does not wait behind the tiles
        check = (
            self.client.submit(check_slide_scale, light, key=f"check-scale-{sid}-{self.run_token}", pure=False)
            if plan.scale_check_view is not None
            else None
        )
        segs = []
        for i, batch in enumerate(batches(plan.tiles, self.config.tiles_per_task)):
            f = self.client.submit(
                segment_tiles,
                light,
                batch,
                key=f"segment-tiles-{sid}-{i}-{self.run_token}",
                pure=False,
                resources=self.tile_resources,
            )
            self._watch(f, _TaskKind.TILES, sid)
            segs.append(f)
        assembled = [
            self.client.submit(
                assemble_labels, plan, band, segs, key=f"assemble-labels-{sid}-{b}-{self.run_token}", pure=False
            )
            for b, band in enumerate(assembly_bands(plan, BAND_ROWS))
        ]
        reduce = self.client.submit(
            reduce_slide, plan, segs, assembled, check, key=f"reduce-slide-{sid}-{self.run_token}", pure=False
        )
        flight.futures += ([check] if check is not None else []) + segs + assembled + [reduce]
        self._watch(reduce, _TaskKind.REDUCE, sid)

    def task_failed(self, watched: _Watched, exc: BaseException) -> None:
        """A watched task raised (or its result was lost and its recomputation failed). A full disk
        stops the run: every slide after it would fail the same way."""
        if disk_full(exc):
            raise DiskFull(f"{self.out_dir}: {exc} (writing slide {watched.slide_id})") from None
        if watched.kind is not _TaskKind.TILES:  # a tile batch's error reaches the slide's reduction too
            self.slide_error(watched.slide_id, exc)

    def task_done(self, watched: _Watched, result: Any) -> None:
        """Act on a watched task's result: build a planned slide's graph, count finished tiles,
        record a finished slide."""
        sid = watched.slide_id
        if watched.kind is _TaskKind.PLAN:
            if isinstance(result, SlidePlan):
                self.build_slide_graph(result)
            else:  # a small slide, finished within its planning task
                self.progress.tiles_planned(result["n_tiles"])
                self.progress.tiles_done(result["n_tiles"])
                self.finish(sid, SlideOutcome(self.flights[sid].entry, SlideStatus.OK, result))
        elif watched.kind is _TaskKind.TILES:
            self.progress.tiles_done(len(result))
        elif watched.kind is _TaskKind.REDUCE:
            self.finish(sid, SlideOutcome(self.flights[sid].entry, SlideStatus.OK, result))

    def run(self) -> list[SlideOutcome]:
        """Wait on the watched futures as they complete, starting queued slides as others end."""
        self.start_next()
        for fut in self.done_stream:
            watched = self.watched.get(fut.key)
            if watched is None or watched.slide_id not in self.flights:
                continue  # a future of a slide that already finished or failed
            if fut.status == "cancelled":
                continue
            try:
                # a finished future's result can still be lost (its worker died before it was fetched)
                # and be recomputed, and fail: result() raises then, as it does for a failed task
                result = fut.result()
            except Exception as exc:
                self.task_failed(watched, exc)
                self.start_next()
                continue
            self.task_done(watched, result)
            fut.release()
            self.start_next()
        return self.outcomes


def run_slides(
    client: Any,
    entries: list[SlideEntry],
    out_dir: Path,
    config: Config,
    progress: Progress | None = None,
) -> list[SlideOutcome]:
    """Process ``entries`` on the cluster with a bounded number of slides in flight.

    Parameters
    ----------
    client : distributed.Client
        The cluster's client (a local cluster's, or one connected to a running scheduler).
    entries : list of SlideEntry
        The slides still to process (those already complete are not passed).
    out_dir : Path
        The run's output folder; each slide publishes under ``slides/<slide_id>/``.
    config : Config
        The run's settings (``slides_in_flight`` bounds the slides planned at once).
    progress : Progress or None
        Told of tiles planned and done and of slides finished; None = nothing shown.

    Returns
    -------
    list of SlideOutcome
        One per entry, in the order they finished: ``ok`` with its stats, or ``failed`` with
        the reason (a bad slide fails alone).
    """
    return _SlideDriver(client, entries, out_dir, config, progress or NoProgress()).run()
