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
from pathlib import Path
from typing import Any, Protocol

from distributed import WorkerPlugin

from pipeline.cluster import GPU_RESOURCE, release_freed_heap, tune_allocator
from pipeline.config import Config
from pipeline.io.outputs.contents import check_published
from pipeline.io.outputs.publish import DiskFull, disk_full, final_slide_dir, publish_failure, read_published_stats
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
      unsupported) is not logged by the worker ("Compute Failed" with its traceback, seven lines):
      the driver reports it in one line and records it in run.json and the slide's stats.json. Any
      other exception is logged as before, its traceback included."""

    name = "nuclei-worker-console"

    def setup(self, worker: Any) -> None:
        self._showwarning = warnings.showwarning
        warnings.showwarning = one_line_warning
        logging.getLogger("distributed.worker").addFilter(_not_a_slide_failure)

    def teardown(self, worker: Any) -> None:
        warnings.showwarning = getattr(self, "_showwarning", warnings.showwarning)
        logging.getLogger("distributed.worker").removeFilter(_not_a_slide_failure)


def one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` as one line: ``warning: <message>`` for the package's own
    warnings, ``warning: <category>: <message> (<file>:<line>)`` for another package's."""
    own = Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent)
    text = f"warning: {message}" if own else f"warning: {category.__name__}: {message} ({filename}:{lineno})"
    stream = file if file is not None else sys.stderr
    try:
        stream.write(text + "\n")
    except (OSError, ValueError):  # a closed or broken stream: a warning never fails the run
        pass


def _not_a_slide_failure(record: logging.LogRecord) -> bool:
    """False for the worker's "Compute Failed" record of a task that raised ``SlideError`` (its
    arguments: key, state, task, exception text, traceback text)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (
        isinstance(record.msg, str)
        and record.msg.startswith("Compute Failed")
        and len(args) > 3
        and str(args[3]).startswith("SlideError(")
    )


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


def run_slides(
    client: Any,
    entries: list[SlideEntry],
    out_dir: Path,
    config: Config,
    progress: Progress | None = None,
) -> list[SlideOutcome]:
    """Process ``entries`` on the cluster with a bounded number of slides in flight."""
    from distributed import as_completed

    progress = progress or NoProgress()
    workers = client.scheduler_info().get("workers", {})
    tile_resources = tile_task_resources(workers)
    try:
        client.register_plugin(ModelPreload(config), name=ModelPreload.name)
        client.register_plugin(WorkerConsole(), name=WorkerConsole.name)
    except OSError as exc:  # a worker lost during the broadcast (CommClosedError): tasks load the model themselves
        warnings.warn(f"the model preload could not be registered on every worker ({exc}); going on", stacklevel=2)
    threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
    # enough slides in flight to hide the driver round trip between a slide's plan and its
    # tiles, few enough that the scheduler holds a few hundred tasks at most
    limit = config.slides_in_flight or max(4, 3 * threads)
    queue = list(reversed(entries))
    run_token = uuid.uuid4().hex[:6]
    flights: dict[str, _InFlight] = {}
    role: dict[str, tuple[str, str]] = {}  # future key → (kind, slide_id)
    outcomes: list[SlideOutcome] = []
    done_stream = as_completed()

    def start_next() -> None:
        while queue and len(flights) < limit:
            entry = queue.pop()
            key = f"plan-slide-{entry.slide_id}-{run_token}"
            fut = client.submit(start_slide, entry, str(out_dir), config, key=key, pure=False)
            flights[entry.slide_id] = _InFlight(entry, time.time(), [fut])
            role[fut.key] = ("plan", entry.slide_id)
            done_stream.add(fut)

    def finish(slide_id: str, outcome: SlideOutcome) -> None:
        flight = flights.pop(slide_id)
        for f in flight.futures:
            role.pop(f.key, None)
        client.cancel([f for f in flight.futures if not f.done()])
        outcomes.append(outcome)
        progress.slide_done(outcome)

    def fail(slide_id: str, exc: BaseException, attempts: int) -> None:
        flight = flights[slide_id]
        reason = describe_failure(exc, flight.entry, attempts)
        entry = flight.entry
        stats = failure_stats(
            entry.slide_id, entry.cancer_type, str(entry.slide_path), reason, time.time() - flight.started
        )
        try:
            publish_failure(out_dir, slide_id, stats)
        except OSError as publish_error:
            if disk_full(publish_error):
                raise DiskFull(f"{out_dir}: {publish_error} (recording the failure of slide {slide_id})") from None
            # the slide stays failed (and is retried by the next run, which finds no record of
            # it); the driver goes on with the other slides
            reason = f"{reason}; the failure could not be recorded in {out_dir}: {publish_error}"
            stats = {**stats, "error": reason}
        finish(slide_id, SlideOutcome(flight.entry, SlideStatus.FAILED, stats, reason))

    def slide_error(slide_id: str, exc: BaseException) -> None:
        """A slide's task failed, or its result could not be fetched: the slide fails, unless its
        published folder is already the complete result of its plan."""
        plan = flights[slide_id].plan
        stats = published_as_planned(out_dir, plan) if plan is not None else None
        if stats is not None:
            finish(slide_id, SlideOutcome(flights[slide_id].entry, SlideStatus.OK, stats))
        else:
            fail(slide_id, exc, config.max_attempts)

    def build_slide_graph(plan: SlidePlan) -> None:
        sid = plan.slide_id
        flight = flights[sid]
        flight.plan = plan
        progress.tiles_planned(len(plan.tiles))
        # tile tasks carry the plan without its tile list (their own batch is enough), so the
        # bytes sent per slide grow with its tiles, not with their square
        light = dataclasses.replace(plan, tiles=())
        # the planning work left, submitted first so that it does not wait behind the tiles
        check = (
            client.submit(check_slide_scale, light, key=f"check-scale-{sid}-{run_token}", pure=False)
            if plan.scale_check_view is not None
            else None
        )
        segs = []
        for i, batch in enumerate(batches(plan.tiles, config.tiles_per_task)):
            f = client.submit(
                segment_tiles,
                light,
                batch,
                key=f"segment-tiles-{sid}-{i}-{run_token}",
                pure=False,
                resources=tile_resources,
            )
            role[f.key] = ("tiles", sid)
            segs.append(f)
            done_stream.add(f)
        assembled = [
            client.submit(assemble_labels, plan, band, segs, key=f"assemble-labels-{sid}-{b}-{run_token}", pure=False)
            for b, band in enumerate(assembly_bands(plan, BAND_ROWS))
        ]
        reduce = client.submit(
            reduce_slide, plan, segs, assembled, check, key=f"reduce-slide-{sid}-{run_token}", pure=False
        )
        role[reduce.key] = ("reduce", sid)
        flight.futures += ([check] if check is not None else []) + segs + assembled + [reduce]
        done_stream.add(reduce)

    start_next()
    for fut in done_stream:
        kind, sid = role.get(fut.key, ("", ""))
        if sid not in flights:
            continue  # a future of a slide that already finished or failed
        if fut.status == "cancelled":
            continue
        try:
            # a finished future's result can still be lost (its worker died before it was fetched)
            # and be recomputed, and fail: result() raises then, as it does for a failed task
            result = fut.result()
        except Exception as exc:
            if disk_full(exc):  # every slide after it would fail the same way: the run stops
                raise DiskFull(f"{out_dir}: {exc} (writing slide {sid})") from None
            if kind != "tiles":  # a tile batch's error reaches the slide's reduction too
                slide_error(sid, exc)
            start_next()
            continue
        if kind == "plan":
            if isinstance(result, SlidePlan):
                build_slide_graph(result)
            else:  # a small slide, finished within its planning task
                progress.tiles_planned(result["n_tiles"])
                progress.tiles_done(result["n_tiles"])
                finish(sid, SlideOutcome(flights[sid].entry, SlideStatus.OK, result))
        elif kind == "tiles":
            progress.tiles_done(len(result))
        elif kind == "reduce":
            finish(sid, SlideOutcome(flights[sid].entry, SlideStatus.OK, result))
        fut.release()
        start_next()
    return outcomes
