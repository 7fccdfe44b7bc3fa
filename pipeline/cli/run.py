"""Command line: ``python -m pipeline.run manifest.csv --out DIR``.

Segments every nucleus in every slide of the manifest on a Dask cluster (a local one by
default, or an existing ``dask-scheduler`` with ``--scheduler``), writes the outputs
(docs/outputs.md), builds the QC tables, prints a summary, and exits 0 only when every slide
succeeded. Rerunning the same command skips slides that are already complete.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import platform
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline._version import __version__
from pipeline.cli._console import safe_console
from pipeline.cli._parser import CommandLineParser
from pipeline.cluster import connect, dashboard_link, dashboard_message
from pipeline.config import CHOICES, Config, load_config
from pipeline.graph import SlideOutcome, one_line_warning, run_slides
from pipeline.io.outputs.contents import check_published
from pipeline.io.outputs.lock import OutputInUse, lock_output
from pipeline.io.outputs.publish import (
    DiskFull,
    SpaceReserve,
    atomic_write_json,
    disk_full,
    final_slide_dir,
    read_published_stats,
    remove_stale_partials,
    slides_dir,
)
from pipeline.io.outputs.status import RunStatus, SlideStatus
from pipeline.manifest import ManifestError, SlideEntry, read_manifest
from pipeline.qc import build_qc
from pipeline.runtime import ModelError, model_summary
from pipeline.slide.inputs import changed_inputs, slide_inputs
from pipeline.slide.plausibility import IMPLAUSIBLE_FLAG

EXIT_OK, EXIT_SLIDES_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Failing slides whose reasons are printed as they fail and again under the summary; those beyond
# are counted by kind (a manifest of 2,000 missing files is a screenful, not 20,000 lines).
FAILURES_SHOWN = 20
FAILURE_KINDS_SHOWN = 5
PACKAGES = [
    "numpy",
    "scipy",
    "scikit-image",
    "dask",
    "distributed",
    "zarr",
    "numcodecs",
    "onnxruntime",
    "onnxruntime-gpu",
    "tifffile",
    "imagecodecs",
    "pydicom",
    "pyarrow",
    "cucim-cu12",
    "cucim-cu13",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "dask-cuda",
]


class SetupError(RuntimeError):
    """The run cannot start its work (an output folder in use or not writable, a scheduler that
    cannot be reached, ...): exit 2."""


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the driver: the run stops as it does on Ctrl-C (SIGINT)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# What ``kill``, ``timeout`` and a batch system at its time limit send (SIGTERM), and what a closed
# terminal sends (SIGHUP): both end the run as Ctrl-C does, with run.json final and a rerun resuming.
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


# After a stop signal was dropped where Python cannot raise (below), how long until it is sent
# again: long enough for the interpreter to have left the callback that dropped it.
REDELIVER_SECONDS = 0.05


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP raise :class:`StopSignal` in the main thread. A second one while the
    run winds down is ignored, so that run.json is still written (SIGKILL stops it at once).

    Python runs a signal's handler in the main thread at its next instruction, which may be in a
    garbage-collector callback or a finaliser (the Dask driver has both); an exception raised there
    is reported as unraisable and dropped, and the run would go on with the signals ignored. Such a
    dropped :class:`StopSignal` re-arms the handlers and sends the signal again a moment later,
    silently, so that it is raised where the run can act on it."""

    def stop(signum: int, frame: object) -> None:
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise StopSignal(signal.Signals(signum).name)

    def arm() -> None:
        for name in STOP_SIGNALS:
            if hasattr(signal, name):  # POSIX
                signal.signal(getattr(signal, name), stop)

    previous_hook = sys.unraisablehook

    def redeliver_dropped(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, StopSignal):
            previous_hook(unraisable)
            return
        arm()
        signum = getattr(signal, unraisable.exc_value.name)
        threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signum)).start()

    if not getattr(previous_hook, "redelivers_stop_signals", False):  # once per process
        redeliver_dropped.redelivers_stop_signals = True  # type: ignore[attr-defined]
        sys.unraisablehook = redeliver_dropped
    arm()


def interrupted_message(exc: KeyboardInterrupt) -> str:
    """What run.json and the console say of a run stopped by a signal (Ctrl-C is SIGINT)."""
    name = exc.name if isinstance(exc, StopSignal) else "SIGINT"
    return f"interrupted by {name}: rerun the same command to resume (finished slides are kept)"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "nuclei-pipeline": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# Space held back for run.json's last writes (SpaceReserve), given back when the disk fills: its
# size with every slide recorded (~300 bytes a slide, indented JSON) and room for the config.
RECORD_RESERVE_BYTES = 64 * 1024
RECORD_RESERVE_BYTES_PER_SLIDE = 512


class RunRecord:
    """run.json: config, versions, model, timings and per-slide status, rewritten atomically.

    It holds space for its own last writes (a hidden reserve file beside it): a run that fills
    the disk still ends with a final run.json."""

    def __init__(self, out_dir: Path, config: Config, manifest: str, model: dict[str, Any], n_slides: int = 0) -> None:
        self.path = out_dir / "run.json"
        try:
            self.reserve: SpaceReserve | None = SpaceReserve(
                out_dir, RECORD_RESERVE_BYTES + RECORD_RESERVE_BYTES_PER_SLIDE * n_slides
            )
        except OSError as exc:
            if disk_full(exc):
                raise DiskFull(f"{out_dir}: {exc} (before any slide was started)") from None
            self.reserve = None  # a file system that cannot hold it: the run goes on without
        self.started = time.time()
        self.data: dict[str, Any] = {
            "manifest": manifest,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "finished": None,
            "status": RunStatus.RUNNING,
            "config": config.as_dict(),
            "versions": package_versions(),
            "model": model,
            "host": platform.node(),
            "slides": {},
        }
        self._last_write = 0.0

    def slide(
        self, slide_id: str, status: SlideStatus, stats: dict[str, Any] | None, error: str | None, skipped: bool = False
    ) -> None:
        """A slide's line in run.json (written with the next :meth:`write`).

        Parameters
        ----------
        slide_id : str
            The slide's id.
        status : str
            Its status, ``"ok"`` or ``"failed"``.
        stats : dict or None
            Its stats.json (``n_nuclei``, ``tissue_mm2`` and ``seconds`` are taken from it); None when
            there are none.
        error : str or None
            Why it failed; None when it did not.
        skipped : bool, optional
            Whether it was complete before this run and was skipped.
        """
        stats = stats or {}
        self.data["slides"][slide_id] = {
            "status": status,
            "error": error,
            "skipped_complete": skipped,
            "n_nuclei": stats.get("n_nuclei"),
            "tissue_mm2": stats.get("tissue_mm2"),
            "seconds": stats.get("seconds"),
        }

    def write(self, force: bool = False) -> None:
        if force or time.time() - self._last_write > 2.0:
            self.data["elapsed_seconds"] = round(time.time() - self.started, 2)
            try:
                atomic_write_json(self.path, self.data)
            except OSError as exc:
                if disk_full(exc):
                    raise DiskFull(f"{self.path}: {exc}") from None
                raise
            self._last_write = time.time()

    def finish(self, status: RunStatus, error: str | None = None) -> None:
        """The final record; on a full disk, written into the space held back for it."""
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.data["status"] = status
        if error is not None:
            self.data["error"] = error
        try:
            self.write(force=True)
        except DiskFull:
            if self.reserve is None:
                raise
            self.reserve.release()
            self.reserve = None
            self.write(force=True)
        if self.reserve is not None:
            self.reserve.release()


class ConsoleProgress:
    """Progress bars over slides and tiles: ``bar`` is a tqdm class (default: tqdm, to stderr;
    ``tqdm.auto.tqdm`` draws them as notebook widgets where it can)."""

    def __init__(self, n_slides: int, enabled: bool, record: RunRecord, bar: Any = None) -> None:
        if bar is None:
            from tqdm import tqdm

            bar = tqdm
        self.record = record
        self.failed = 0
        self.slides = bar(total=n_slides, desc="slides", unit="slide", disable=not enabled, position=0)
        self.tiles = bar(total=0, desc="tiles ", unit="tile", disable=not enabled, position=1)

    def tiles_planned(self, n: int) -> None:
        self.tiles.total = (self.tiles.total or 0) + n
        self.tiles.refresh()

    def tiles_done(self, n: int) -> None:
        self.tiles.update(n)

    def slide_done(self, outcome: SlideOutcome) -> None:
        self.slides.update(1)
        if outcome.status != SlideStatus.OK:
            self.failed += 1
            if self.failed <= FAILURES_SHOWN:
                self.slides.write(f"FAILED {outcome.entry.slide_id}: {one_line(outcome.error)}")
            elif self.failed == FAILURES_SHOWN + 1:
                self.slides.write(
                    "... more slides failed: their reasons are not printed as they fail (the summary counts "
                    "them; run.json and each slide's stats.json hold every reason)"
                )
        self.record.slide(outcome.entry.slide_id, outcome.status, outcome.stats, outcome.error)
        self.record.write()

    def close(self) -> None:
        self.tiles.close()
        self.slides.close()


def summary_table(rows: list[dict[str, Any]], elapsed: float) -> str:
    ok = [r for r in rows if r.get("status") == SlideStatus.OK]
    failed = [r for r in rows if r.get("status") != SlideStatus.OK]
    lines = [
        f"{'slide':<34} {'status':<7} {'nuclei':>10} {'tissue mm²':>11} {'seconds':>8}",
        "-" * 74,
    ]
    for r in rows:
        nuclei = f"{r['n_nuclei']:,}" if r.get("n_nuclei") is not None else "-"
        tissue = f"{r['tissue_mm2']:.2f}" if r.get("tissue_mm2") is not None else "-"
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        lines.append(f"{r['slide_id'][:34]:<34} {r['status']:<7} {nuclei:>10} {tissue:>11} {secs:>8}")
    lines.append("-" * 74)
    total_nuclei = sum(r.get("n_nuclei") or 0 for r in ok)
    total_tissue = sum(r.get("tissue_mm2") or 0 for r in ok)
    implausible = [r for r in ok if IMPLAUSIBLE_FLAG in (r.get("flags") or [])]
    lines.append(
        f"{len(ok)} ok ({len(implausible)} with implausible nuclei), {len(failed)} failed; "
        if implausible
        else f"{len(ok)} ok, {len(failed)} failed; "
    )
    lines[-1] += f"{total_nuclei:,} nuclei over {total_tissue:.2f} mm² of tissue in {elapsed:.1f} s"
    for r in failed[:FAILURES_SHOWN]:
        lines.append(f"  failed {r['slide_id']}: {one_line(r.get('error'))}")
    if len(failed) > FAILURES_SHOWN:
        kinds = Counter(failure_kind(r.get("error")) for r in failed[FAILURES_SHOWN:])
        listed = "; ".join(f"{n:,} {kind}" for kind, n in kinds.most_common(FAILURE_KINDS_SHOWN))
        others = sum(kinds.values()) - sum(n for _, n in kinds.most_common(FAILURE_KINDS_SHOWN))
        lines.append(
            f"  ... and {len(failed) - FAILURES_SHOWN:,} more failed: {listed}"
            + (f"; {others:,} other" if others else "")
            + " (each slide's reason is in run.json and its stats.json)"
        )
    for r in implausible:
        reason = next((w for w in r.get("warnings") or [] if "no H&E tissue yields this" in w), IMPLAUSIBLE_FLAG)
        lines.append(f"  implausible {r['slide_id']}: {reason}")
    return "\n".join(lines)


def one_line(text: str | None, limit: int = 400) -> str:
    """A reason on one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def failure_kind(error: str | None) -> str:
    """What a failure reason says, without the slide's own name and path: the reason with its
    leading file name taken off, up to the next colon ("file not found", "SlideError: truncated ...").

    >>> failure_kind("m7.svs: SlideError: file not found: /data/m7.svs")
    'file not found'
    """
    parts = [p.strip() for p in (error or "").split(":")]
    if len(parts) > 1 and "." in parts[0] and " " not in parts[0]:  # the file name describe_failure puts first
        parts = parts[1:]
    if len(parts) > 1 and parts[0].endswith(("Error", "Exception", "Worker")) and " " not in parts[0]:
        parts = parts[1:]  # the exception's class
    return parts[0][:80] or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandLineParser(
        prog="python -m pipeline.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("manifest", type=Path, nargs="?", help="CSV with slide_path [, slide_id, cancer_type, mpp]")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./nuclei_out)")
    p.add_argument(
        "--example",
        action="store_true",
        help="run on the built-in example slide (CMU-1-Small-Region.svs, CC0; downloaded once)",
    )
    p.add_argument("--config", type=Path, help="YAML file with config values")
    p.add_argument("--model", help="ONNX model (default: the shipped model)")
    p.add_argument("--scheduler", help="address (tcp://host:8786) or scheduler file of a running dask-scheduler")
    p.add_argument(
        "--dashboard",
        help="local cluster: where the dashboard listens (default 127.0.0.1:8787, this machine only; "
        "0.0.0.0:8787 opens it to the network on purpose; off: none)",
    )
    p.add_argument("--workers", type=int, dest="n_workers", help="local cluster: worker processes")
    p.add_argument("--threads", type=int, dest="threads_per_worker", help="local cluster: threads per worker")
    p.add_argument(
        "--tile-px",
        type=int,
        help="tile core side at model resolution (multiple of 16; default: 1024 on CPU workers, larger on GPUs)",
    )
    p.add_argument("--halo-px", type=int, help="tile halo at model resolution (default: derived from the model)")
    p.add_argument("--stain", choices=CHOICES["stain"])
    p.add_argument("--save-probabilities", action="store_true", default=None)
    p.add_argument("--write-csv", action="store_true", default=None, help="also write nuclei.csv (the paper's format)")
    p.add_argument(
        "--write-geojson", action="store_true", default=None, help="also write nuclei.geojson (QuPath detections)"
    )
    p.add_argument("--reader", choices=CHOICES["reader"])
    p.add_argument("--max-attempts", type=int, help="worker deaths tolerated per slide before it is failed")
    p.add_argument("--device", choices=CHOICES["device"], help="where stages after the read run")
    p.add_argument("--runtime", choices=CHOICES["runtime"], help="inference runtime")
    p.add_argument("--half", action="store_true", default=None, help="fp16 inference on the GPU")
    p.add_argument("--max-mpp", type=float, help="refuse slides coarser than this many µm/px (default 2.0)")
    p.add_argument(
        "--prefer-estimate",
        action="store_true",
        default=None,
        help="where metadata and the nuclei's estimate disagree beyond scale_tolerance (3×), run at the estimate",
    )
    p.add_argument("--retry-failed", action="store_true", help="reprocess slides whose earlier attempt failed")
    p.add_argument(
        "--verify-checksums",
        action="store_true",
        help="before skipping a finished slide, check the sha256 of every file it holds (reads them all); "
        "without it, presence and sizes are checked",
    )
    p.add_argument("--no-qc", action="store_true", help="skip building the QC tables at the end")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return p.parse_args(argv)


def split_done(
    entries: list[SlideEntry],
    out_dir: Path,
    retry_failed: bool,
    model_sha256: str = "",
    config: Config | None = None,
    checksums: bool = False,
) -> tuple[list[SlideEntry], list[dict[str, Any]]]:
    """Slides still to do, and the stats of those already published (skipped).

    A finished slide is skipped only while its folder still holds what every finished slide holds
    (``required_outputs``) and what its stats.json says was published, its nucleus table as many
    nuclei as its stats.json counts, and the inputs it was made from are still those of its
    manifest row; otherwise it is redone, with a line saying why. A slide whose file has gone since keeps its results.

    Parameters
    ----------
    entries : list of SlideEntry
        The slides of the manifest.
    out_dir : Path
        The output folder.
    retry_failed : bool
        Whether slides that failed before are done again.
    model_sha256 : str, optional
        SHA-256 of the model file, compared with the one a slide was made with.
    config : Config or None, optional
        The run's settings (None: the defaults).
    checksums : bool, optional
        Whether the published files' checksums are verified too (reads every file).

    Returns
    -------
    todo : list of SlideEntry
        The slides to process, in manifest order.
    done : list of dict
        The stats.json of each slide skipped.
    """
    config = config or Config()
    todo, done = [], []
    for e in entries:
        remove_stale_partials(out_dir, e.slide_id)
        stats = read_published_stats(out_dir, e.slide_id)
        if stats is not None and stats.get("slide_id") != e.slide_id:  # not this slide's record: redone
            named = stats.get("slide_id")
            print(
                f"redoing {e.slide_id}: its stats.json " + (f"names {named!r}" if named else "has no slide_id"),
                file=sys.stderr,
            )
            stats = None
        if stats is None or (stats.get("status") != SlideStatus.OK and retry_failed):
            todo.append(e)
            continue
        reason = None
        if stats.get("status") == SlideStatus.OK:
            reason = check_published(final_slide_dir(out_dir, e.slide_id), stats, config, checksums)
            try:
                current = slide_inputs(e.slide_path, e.mpp, model_sha256, config)
            except OSError:
                current = None  # nothing to redo it from: the results stay
            if reason is None and current is not None:
                reason = changed_inputs(stats.get("inputs"), current)
        if reason:
            print(f"redoing {e.slide_id}: {reason}", file=sys.stderr)
            todo.append(e)
        else:
            done.append(stats)
    return todo, done


def main(argv: list[str] | None = None) -> int:
    # A crash inside a native library (a reader, ONNX Runtime) then says where it happened.
    faulthandler.enable()
    safe_console()
    stop_on_signals()
    warnings.showwarning = one_line_warning  # the driver's own warnings, as the workers' (WorkerConsole)
    args = parse_args(argv)
    if args.example:
        from pipeline.cli.example import ExampleUnavailable, example_manifest

        out_dir = args.out or Path("example_out")
        try:
            manifest = example_manifest(out_dir)
        except (OSError, ExampleUnavailable) as exc:
            print(f"error: the example slide could not be fetched: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    elif args.manifest is None:
        print("error: give a manifest CSV (or --example)", file=sys.stderr)
        return EXIT_BAD_INPUT
    else:
        manifest = args.manifest
        out_dir = args.out or Path("nuclei_out")
    overrides = {k: getattr(args, k, None) for k in OPTION_SETTINGS}
    try:
        config = load_config(args.config, overrides)
        entries = read_manifest(manifest)
        model = model_summary(config.model or None, check=True)
    except (ManifestError, ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    in_the_way = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        print(f"error: --out {out_dir} cannot be the output folder: {in_the_way} is a file", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = run_cohort(
            entries,
            str(manifest),
            out_dir,
            config,
            model,
            retry_failed=args.retry_failed,
            verify_checksums=args.verify_checksums,
            qc=not args.no_qc,
        )
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(interrupted_message(exc), file=sys.stderr)
        return EXIT_SLIDES_FAILED
    print(summary_table(result.slides, result.seconds))
    if result.error is not None:
        print(f"error: {result.error}", file=sys.stderr)
    return result.exit_code


# The settings the command line sets through its own options (the rest come from --config or NUCLEI_*).
OPTION_SETTINGS = (
    "model",
    "scheduler",
    "dashboard",
    "n_workers",
    "threads_per_worker",
    "tile_px",
    "halo_px",
    "stain",
    "save_probabilities",
    "write_csv",
    "write_geojson",
    "reader",
    "max_attempts",
    "progress",
    "device",
    "runtime",
    "half",
    "max_mpp",
    "prefer_estimate",
)


@dataclass
class CohortResult:
    """How a run ended: its exit status, run.json's final state, and each slide's stats.json
    (in manifest order; ``skipped``: the ids of those already complete before the run)."""

    exit_code: int
    status: RunStatus
    slides: list[dict[str, Any]]
    skipped: frozenset[str]
    seconds: float
    error: str | None = None  # why the run ended in error after its slides (its QC could not be written)


def run_cohort(
    entries: list[SlideEntry],
    source: str,
    out_dir: Path,
    config: Config,
    model: dict[str, Any],
    *,
    retry_failed: bool = False,
    verify_checksums: bool = False,
    qc: bool = True,
    client: Any = None,
    bar: Any = None,
) -> CohortResult:
    """The run of ``python -m pipeline.run`` once its settings, slides and model are known: take
    ``out_dir`` (one run at a time), skip the slides already complete, segment the others on
    ``client`` (None: a cluster started for the run and closed after it; a client given is left
    open), record everything in run.json, build the QC tables.

    ``source`` names where the slides came from (the manifest) in run.json and the first line;
    ``bar`` is the tqdm class of the progress bars (default: tqdm on stderr).

    Raises :class:`SetupError` (exit 2) when the folder cannot be used or the cluster cannot be
    reached; a KeyboardInterrupt goes on up, run.json saying ``interrupted``.

    Parameters
    ----------
    entries : list of SlideEntry
        The slides of the manifest, in its order.
    source : str
        Where the slides came from (the manifest's path), named in run.json and the first line.
    out_dir : Path
        The output folder.
    config : Config
        The run's settings.
    model : dict
        The model's record for run.json; its ``sha256`` is part of each slide's inputs.
    retry_failed : bool, optional
        Process again the slides that failed before.
    verify_checksums : bool, optional
        Verify the published files' checksums before skipping a slide.
    qc : bool, optional
        Build the QC tables at the end.
    client : distributed.Client or None, optional
        The Dask client to run on; None starts a cluster for the run.
    bar : Any, optional
        The progress bar class (tqdm's interface); None: tqdm on stderr.

    Returns
    -------
    CohortResult
        The exit code, the run's status, one row per slide (manifest order), the slides skipped,
        the seconds taken and the QC's error, if any.

    Raises
    ------
    SetupError
        When the output folder cannot be used (or is in use by another run), or the cluster
        cannot be reached.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_output(out_dir)
        slides_dir(out_dir).mkdir(exist_ok=True)
    except OutputInUse as exc:
        raise SetupError(str(exc)) from None
    except OSError as exc:
        raise SetupError(f"{out_dir} cannot be used as the output folder: {exc}") from None
    with lock:
        return run_locked(entries, source, out_dir, config, model, retry_failed, verify_checksums, qc, client, bar)


def run_locked(
    entries: list[SlideEntry],
    source: str,
    out_dir: Path,
    config: Config,
    model: dict[str, Any],
    retry_failed: bool,
    verify_checksums: bool,
    qc: bool,
    client: Any,
    bar: Any,
) -> CohortResult:
    """The run, once this process owns ``out_dir``.

    Parameters
    ----------
    entries : list of SlideEntry
        The slides of the manifest, in its order.
    source : str
        Where the slides came from (the manifest's path), named in run.json and the first line.
    out_dir : Path
        The output folder.
    config : Config
        The run's settings.
    model : dict
        The model's record for run.json; its ``sha256`` is part of each slide's inputs.
    retry_failed : bool
        Process again the slides that failed before.
    verify_checksums : bool
        Verify the published files' checksums before skipping a slide.
    qc : bool
        Build the QC tables at the end.
    client : distributed.Client or None
        The Dask client to run on; None starts a cluster for the run.
    bar : Any
        The progress bar class (tqdm's interface); None: tqdm on stderr.

    Returns
    -------
    CohortResult
        The exit code, the run's status, one row per slide (manifest order), the slides skipped,
        the seconds taken and the QC's error, if any.

    Raises
    ------
    SetupError
        When the disk is full or the cluster cannot be used; run.json records the error.
    """
    todo, done = split_done(entries, out_dir, retry_failed, model["sha256"], config, verify_checksums)
    try:
        record = RunRecord(out_dir, config, source, model, len(entries))
    except DiskFull as exc:
        raise SetupError(disk_full_message(exc)) from None
    for stats in done:
        record.slide(stats["slide_id"], stats.get("status", SlideStatus.OK), stats, stats.get("error"), skipped=True)
    print(
        f"{len(entries)} slides in {source}: {len(done)} already complete, {len(todo)} to process "
        f"→ {out_dir.resolve()}",
        file=sys.stderr,
    )
    started = time.time()
    try:
        record.write(force=True)
        outcomes = process(todo, out_dir, config, record, client, bar)
    except DiskFull as exc:
        for e in todo:  # their working folders hold space, and show nothing finished
            remove_stale_partials(out_dir, e.slide_id)
        record.finish(RunStatus.ERROR, disk_full_message(exc))
        raise SetupError(disk_full_message(exc)) from None
    except SetupError as exc:
        record.finish(RunStatus.ERROR, str(exc))
        raise
    except KeyboardInterrupt as exc:
        record.finish(RunStatus.INTERRUPTED, interrupted_message(exc))
        raise
    except BaseException as exc:  # run.json never stays at "running"; the traceback still shows
        record.finish(RunStatus.ERROR, f"{type(exc).__name__}: {exc}")
        raise
    rows = done + [o.stats for o in outcomes]
    any_failed = any(r.get("status") != SlideStatus.OK for r in rows)
    status = RunStatus.FAILED_SLIDES if any_failed else RunStatus.OK
    record.finish(status)
    qc_error = None
    if qc:
        try:
            build_qc_tables(out_dir)
        except DiskFull as exc:
            qc_error = f"the QC tables could not be written: {disk_full_message(exc)}"
            status = RunStatus.ERROR
            record.finish(status, qc_error)
    order = {e.slide_id: i for i, e in enumerate(entries)}
    rows.sort(key=lambda r: order.get(r["slide_id"], 0))
    return CohortResult(
        EXIT_BAD_INPUT if qc_error else EXIT_SLIDES_FAILED if any_failed else EXIT_OK,
        status,
        rows,
        frozenset(s["slide_id"] for s in done),
        time.time() - started,
        qc_error,
    )


def disk_full_message(exc: DiskFull) -> str:
    return (
        f"the disk is full: {exc}; free space there and rerun the same command (finished slides are kept, "
        "the others are done then)"
    )


def process(
    todo: list[SlideEntry],
    out_dir: Path,
    config: Config,
    record: RunRecord,
    client: Any = None,
    bar: Any = None,
) -> list[SlideOutcome]:
    """Run the slides still to do on ``client``, or on a cluster started here and closed after
    (none started when there are none).

    Parameters
    ----------
    todo : list of SlideEntry
        The slides to process.
    out_dir : Path
        The output folder.
    config : Config
        The run's settings.
    record : RunRecord
        run.json, updated as slides finish.
    client : distributed.Client or None, optional
        The Dask client to run on (left open); None starts a cluster (closed after).
    bar : Any, optional
        The progress bar class (tqdm's interface); None: tqdm on stderr.

    Returns
    -------
    list of SlideOutcome
        One per slide processed; empty when ``todo`` is.

    Raises
    ------
    SetupError
        When the scheduler or the local cluster cannot be used.
    """
    if not todo:
        return []
    own_client = client is None
    if own_client:
        try:
            client = connect(config)
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            where = f"the scheduler {config.scheduler}" if config.scheduler else "a local cluster"
            raise SetupError(f"{where} cannot be used: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    link = dashboard_link(client)
    if own_client or link:  # a client given without a dashboard: its owner knows
        print(dashboard_message(link, config), file=sys.stderr, flush=True)
    progress = ConsoleProgress(len(todo), config.progress, record, bar)
    try:
        return run_slides(client, todo, out_dir, config, progress)
    except DiskFull:
        # the workers of a cluster started here stop before the slides' working folders are removed
        cluster = getattr(client, "cluster", None) if own_client else None
        if cluster is not None:
            with scheduler_quiet():
                cluster.close()
        raise
    finally:
        progress.close()
        if own_client:
            # a client made on a cluster object leaves that cluster open when it closes: a
            # notebook calling segment_slides again would keep one cluster of workers per call
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()


@contextmanager
def scheduler_quiet() -> Iterator[None]:
    """The local scheduler's warnings left out while a cluster closes under running tasks: that
    it loses their results is no news, the run's error line says why it stopped."""
    log = logging.getLogger("distributed.scheduler")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def build_qc_tables(out_dir: Path) -> None:
    """Cohort QC tables, review sheets and report (pipeline.qc) over everything in ``out_dir``."""
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:  # a stats.json left out: one line each
            warnings.simplefilter("always", UserWarning)
            qc_dir = build_qc(out_dir, workers=min(4, os.cpu_count() or 1))
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        print(f"QC tables and report: {qc_dir}", file=sys.stderr)
    except Exception as exc:  # QC must never cost the run its results
        if disk_full(exc):  # nor be reported built when its files could not be written
            raise DiskFull(f"{out_dir / 'qc'}: {exc}") from None
        print(f"warning: QC tables could not be built: {type(exc).__name__}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
