"""The Dask graph (pipeline.graph.run_slides) when workers, publication or the model preload fail:
a slide fails alone, a published slide is kept, the others finish."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from pipeline.graph import _not_a_task_cancelled_on_close, _not_reported_by_the_driver
from pipeline.io.readers.base import SlideError
from pipeline.manifest import SlideEntry
from pipeline.runtime.session import ModelOutputError


@pytest.mark.slow
def test_failure_that_cannot_be_published_fails_only_its_slide(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    """An OSError while publishing a failure (here: a name too long for the file system) becomes
    that slide's failure; the driver goes on and the other slides finish."""
    from distributed import Client, LocalCluster

    from pipeline.config import load_config
    from pipeline.graph import run_slides

    config = load_config(None, {"model": str(blob_model), "tile_px": 256, "progress": False}, environ={})
    entries = [
        SlideEntry("g" + "x" * 260, cohort / "missing.svs"),  # fails, and its failure cannot be published
        SlideEntry("s0", cohort / "s0.svs"),
        SlideEntry("s1", cohort / "s1.svs"),
    ]
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            outcomes = run_slides(client, entries, out, config)
    status = {o.entry.slide_id: o.status for o in outcomes}
    assert status == {entries[0].slide_id: "failed", "s0": "ok", "s1": "ok"}
    failed = next(o for o in outcomes if o.status == "failed")
    assert "missing.svs" in failed.error and "could not be recorded" in failed.error
    assert (out / "slides" / "s0" / "nuclei.parquet").exists()
    assert not [p for p in (out / "slides").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_reduction_lost_after_publication_keeps_the_published_slide(
    cohort: Path, blob_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dies after a slide's reduction published it but before the driver fetched its
    result: the scheduler recomputes the reduction, whose tiles' working folder is gone, and that
    fails (seen in benchmarks/chaos.py: the driver crashed with a traceback). The driver neither
    crashes nor replaces the published slide with a failure record: its folder checks out, so the
    slide is ok. A reduction that fails before publishing still fails its slide alone."""
    from distributed import Client, LocalCluster

    import pipeline.graph as graph
    from pipeline.config import load_config

    publish_and_fail = graph.reduce_slide

    def recomputed_after_publication(plan, segs, assembled, *check):  # type: ignore[no-untyped-def]
        if plan.slide_id == "s1":
            raise OSError(5, "Input/output error")  # nothing published (a full disk would stop the run)
        publish_and_fail(plan, segs, assembled, *check)
        raise FileNotFoundError(2, "No such file or directory", str(Path(plan.work_dir) / "tiles" / "r0.labels.zst"))

    monkeypatch.setattr(graph, "reduce_slide", recomputed_after_publication)
    config = load_config(None, {"model": str(blob_model), "tile_px": 128, "progress": False}, environ={})
    out = tmp_path / "out"
    entries = [SlideEntry("s0", cohort / "s0.svs"), SlideEntry("s1", cohort / "s1.svs")]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            outcomes = graph.run_slides(client, entries, out, config)
    status = {o.entry.slide_id: o for o in outcomes}
    assert status["s0"].status == "ok" and status["s0"].stats["n_tiles"] > config.tiles_per_task
    published = json.loads((out / "slides" / "s0" / "stats.json").read_text())
    assert published["status"] == "ok" and published == status["s0"].stats
    assert (out / "slides" / "s0" / "nuclei.parquet").stat().st_size > 0
    assert status["s1"].status == "failed" and "Input/output error" in (status["s1"].error or "")
    assert json.loads((out / "slides" / "s1" / "stats.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_worker_lost_while_the_model_preload_is_registered_costs_nothing(
    cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    """A worker that dies while the driver registers the model preload (benchmarks/chaos.py: the
    driver crashed with CommClosedError): the preload is an optimisation, the slides still run."""
    from distributed import Client, LocalCluster
    from distributed.comm.core import CommClosedError

    from pipeline.config import load_config
    from pipeline.graph import run_slides

    config = load_config(None, {"model": str(blob_model), "tile_px": 256, "progress": False}, environ={})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:

            def worker_died(*args: object, **kwargs: object) -> None:
                raise CommClosedError("in <TCP (closed) ConnectionPool.register_worker_plugin>: Stream is closed")

            client.register_plugin = worker_died  # type: ignore[method-assign]
            with pytest.warns(UserWarning, match="model preload could not be registered"):
                outcomes = run_slides(client, [SlideEntry("s0", cohort / "s0.svs")], tmp_path / "out", config)
    assert [o.status for o in outcomes] == ["ok"]


def _compute_failed(exc: BaseException) -> logging.LogRecord:
    """The record a Dask worker logs for a task that raised ``exc`` (distributed's format and
    arguments: key, state, task, exception text, traceback text)."""
    message = "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\nException: %r\nTraceback: %r\n"
    args = ("reduce-slide-s0-1", "executing", "<Task 'reduce-slide-s0-1'>", repr(exc), "  File ...\n")
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, args, None)


@pytest.mark.parametrize(
    ("exc", "logged"),
    [
        (SlideError("file not found: /data/a.svs"), False),  # the slide's own fault: the driver's line
        (OSError(errno.ENOSPC, "No space left on device"), False),  # a full disk: the run's one error line
        (OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"), False),  # pyarrow's
        (ModelOutputError("nan.onnx: the model's output 'prob' holds NaN"), False),  # the driver names the model
        (ValueError("a bug"), True),  # anything else keeps its traceback
        (OSError(errno.EACCES, "Permission denied"), True),
    ],
)
def test_workers_log_no_failure_the_driver_reports_in_one_line(exc: BaseException, logged: bool) -> None:
    """A worker's "Compute Failed" block (its traceback included) is left out for the failures the
    driver reports in one line: a slide's own fault, a full disk (before: seven lines and a
    traceback above the run's one error line) and a model whose output is no probability (before:
    the same, for every slide)."""
    assert _not_reported_by_the_driver(_compute_failed(exc)) is logged


def test_workers_do_not_note_the_tasks_cancelled_as_they_close() -> None:
    """A run stopping on a full disk closes its cluster under running tasks: the workers' note of
    each (one line per task, before the run's error line) is left out; their other notes are not."""

    def note(message: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker.state_machine", logging.WARNING, __file__, 1, message, None, None)

    cancelled = (
        "Async instruction for <Task cancelled name=\"execute('segment-tiles-d1-2-86712b')\"> ended with CancelledError"
    )
    assert not _not_a_task_cancelled_on_close(note(cancelled))
    assert _not_a_task_cancelled_on_close(note("Compute Failed"))
