"""Fault injection: hostile but realistic input and crashes. Nothing is lost, nothing
hangs, nothing listens beyond this machine, and every bad input ends with exit 2 and one line
saying what and where; run.json always ends in a final state.

Faults that are about processes (two runs on one folder, a killed driver, a cluster) run real
processes; they are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import MAX_ID_LENGTH, ManifestError, SlideEntry, read_manifest
from pipeline.testing import synthetic_slide_cohort
from tests.conftest import ROOT


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, small: bool = True
) -> subprocess.CompletedProcess:
    """``python -m pipeline.run`` in a fresh process (``small``: one worker of one thread), no progress bars."""
    defaults = ["--workers", "1", "--threads", "1"] if small and "--workers" not in args else []
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args, "--no-progress", *defaults],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The run refused with exit 2 and one ``error:`` line, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small generated slides (one tile each at --tile-px 256) and their manifest."""
    folder = tmp_path_factory.mktemp("fault_cohort")
    synthetic_slide_cohort(folder, 3, 300, 300, seed=40, prefix="s")
    return folder


def manifest_of(tmp_path: Path, rows: list[str], header: str = "slide_path,slide_id,cancer_type") -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# ------------------------------------------------------------------- over-long slide ids ----


def test_overlong_slide_id_is_a_manifest_error_naming_the_row(tmp_path: Path) -> None:
    long_id = "L" * 240
    path = manifest_of(tmp_path, ["a.svs,g1,BRCA", f"b.svs,{long_id},BRCA", f"c.svs,{'x' * MAX_ID_LENGTH},BRCA"])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    message = str(err.value)
    assert "row 3" in message and "240 characters" in message and f"at most {MAX_ID_LENGTH}" in message
    assert "row 4" not in message  # the longest allowed id is fine
    # a default id (the file's stem) is held to the same limit
    path = manifest_of(tmp_path, [f"{'s' * 250}.svs,,BRCA"])
    with pytest.raises(ManifestError, match="row 2"):
        read_manifest(path)


def test_overlong_slide_id_run_refuses_with_exit_2(tmp_path: Path, blob_model: Path) -> None:
    manifest = manifest_of(tmp_path, ["a.svs,g1,BRCA", f"b.svs,{'L' * 240},BRCA"])
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model))
    line = one_line_error(result)
    assert "row 3" in line or "row 3" in result.stderr
    assert not (tmp_path / "out").exists()


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


def test_reduction_ended_before_publication_can_run_again(
    cohort: Path, blob_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed during a slide's reduction, before the rename that publishes it: the
    scheduler runs the reduction again (with its tile batches, whose results died with the worker),
    and that must find the tiles' scratch files still there (benchmarks/chaos.py: it failed with
    FileNotFoundError, the first attempt having dropped them). The result equals an uninterrupted one."""
    import pipeline.slide.reduce as reduce_module
    from pipeline.config import load_config
    from pipeline.slide import (
        assemble_labels,
        batches,
        check_slide_scale,
        chunks_to_assemble,
        plan_slide,
        reduce_slide,
        segment_tiles,
    )
    from tests.conftest import output_digest

    config = load_config(None, {"model": str(blob_model), "tile_px": 128}, environ={})

    def stages(out: Path):  # type: ignore[no-untyped-def]
        plan = plan_slide(SlideEntry("s0", cohort / "s0.svs"), str(out), config)
        segs = [segment_tiles(plan, b) for b in batches(plan.tiles, config.tiles_per_task)]
        return plan, segs, [assemble_labels(plan, chunks_to_assemble(plan), segs)], check_slide_scale(plan)

    (tmp_path / "clean" / "slides").mkdir(parents=True)
    reduce_slide(*stages(tmp_path / "clean"))
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    plan, segs, assembled, check = stages(out)
    publish = reduce_module.publish_slide

    class WorkerKilled(Exception):
        pass

    def killed_before_the_rename(partial: Path, final: Path) -> None:
        raise WorkerKilled

    monkeypatch.setattr(reduce_module, "publish_slide", killed_before_the_rename)
    with pytest.raises(WorkerKilled):
        reduce_slide(plan, segs, assembled, check)
    monkeypatch.setattr(reduce_module, "publish_slide", publish)
    segs = [segment_tiles(plan, b) for b in batches(plan.tiles, config.tiles_per_task)]  # recomputed
    assembled = [assemble_labels(plan, chunks_to_assemble(plan), segs)]
    reduce_slide(plan, segs, assembled, check)
    assert output_digest(out / "slides" / "s0") == output_digest(tmp_path / "clean" / "slides" / "s0")
    assert [p.name for p in (out / "slides").iterdir()] == ["s0"]  # no scratch left behind


def test_run_json_ends_in_a_final_state_when_the_driver_breaks(
    cohort: Path, blob_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks in the driver, run.json is not left at ``running``."""
    import pipeline.cli.run as cli

    class Client:
        dashboard_link = "http://127.0.0.1:8787/status"

        def close(self) -> None:
            pass

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the driver broke")

    monkeypatch.setattr(cli, "connect", lambda config: Client())
    monkeypatch.setattr(cli, "run_slides", broken)
    manifest = manifest_of(tmp_path, [f"{cohort}/s0.svs,s0,BRCA"])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the driver broke"):
        cli.main([str(manifest), "--out", str(out), "--model", str(blob_model), "--no-progress", "--no-qc"])
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "error" and run["finished"] and "the driver broke" in run["error"]


# ---------------------------------------------------- clean-up never touches other slides ----


def test_stale_work_cleanup_matches_exactly_one_slide(tmp_path: Path) -> None:
    """Cleaning ``S1`` leaves ``S1.rescan``'s live working folder (and every other name) alone."""
    from pipeline.io.outputs.publish import new_partial_dir, remove_stale_partials, slides_dir

    mine = [new_partial_dir(tmp_path, "S1"), new_partial_dir(tmp_path, "S1")]
    others = [new_partial_dir(tmp_path, "S1.rescan"), new_partial_dir(tmp_path, "S1.2"), new_partial_dir(tmp_path, "S")]
    keep = [slides_dir(tmp_path) / "S1", slides_dir(tmp_path) / ".S1.notes.partial"]
    for p in keep:
        p.mkdir()
    assert remove_stale_partials(tmp_path, "S1") == 2
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in others + keep)
    assert remove_stale_partials(tmp_path, "S1.rescan") == 1 and others[1].exists() and others[2].exists()


# --------------------------------------------------------------- one run per output folder ----


def start_run(manifest: Path, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", str(manifest), "--out", str(out), "--model", str(model)]
        + ["--tile-px", "256", "--no-progress", "--no-qc", "--workers", "1", "--threads", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers share its process group: one signal reaches them all
    )


def wait_for(predicate, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_on_one_folder_is_refused_and_a_killed_holder_releases_it(
    cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    import platform
    import signal

    out = tmp_path / "out"
    first = start_run(cohort / "manifest.csv", out, blob_model)
    try:
        wait_for(lambda: (out / "run.json").exists())
        os.killpg(first.pid, signal.SIGSTOP)  # a live run that holds the folder (hung, or just slow)
        partials_before = sorted(p.name for p in (out / "slides").glob(".*")) if (out / "slides").exists() else []
        second = run_cli(str(cohort / "manifest.csv"), "--out", str(out), "--model", str(blob_model), "--no-qc")
        line = one_line_error(second)
        assert str(out) in line and f"pid {first.pid}" in line and platform.node() in line and "started" in line
        # the refused run touched nothing of the holder's
        after = sorted(p.name for p in (out / "slides").glob(".*")) if (out / "slides").exists() else []
        assert after == partials_before
        assert json.loads((out / "run.json").read_text())["status"] == "running"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies without cleaning up: the kernel drops its lock
        first.wait()
    third = run_cli(
        str(cohort / "manifest.csv"), "--out", str(out), "--model", str(blob_model), "--tile-px", "256", "--no-qc"
    )
    assert third.returncode == 0, third.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "ok" and {s["status"] for s in run["slides"].values()} == {"ok"}
    assert not [p for p in (out / "slides").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------- resume verifies what a slide holds ----


def slide_digest(slide_dir: Path) -> dict[str, str]:
    from tests.conftest import output_digest

    digest = output_digest(slide_dir)
    digest.pop("stats")  # it records the slide file's identity, which some steps change on purpose
    return digest


@pytest.mark.slow
def test_resume_redoes_slides_whose_outputs_or_inputs_changed(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.io.outputs.stats import STATS_FIELDS

    out = tmp_path / "out"
    manifest = manifest_of(tmp_path, [f"{cohort}/s{i}.svs,s{i},BRCA" for i in range(3)])
    args = ["--out", str(out), "--model", str(blob_model), "--tile-px", "256", "--no-qc", "--write-csv"]
    first = run_cli(str(manifest), *args)
    assert first.returncode == 0, first.stderr[-3000:]
    slides = out / "slides"
    reference = {s: slide_digest(slides / s) for s in ("s0", "s1", "s2")}
    stats = json.loads((slides / "s0" / "stats.json").read_text())
    assert list(stats) == list(STATS_FIELDS)  # the one schema, new keys at its end
    assert {"nuclei.csv", "nuclei.parquet", "maps.zarr"} <= set(stats["outputs"])
    assert stats["outputs"]["nuclei.csv"]["bytes"] == (slides / "s0" / "nuclei.csv").stat().st_size
    assert stats["inputs"]["slide_bytes"] == (cohort / "s0.svs").stat().st_size
    assert stats["inputs"]["model_sha256"] == stats["model_sha256"]

    # outputs lost or damaged after publication; a crash between the two renames left an .old folder
    (slides / "s0" / "nuclei.parquet").unlink()
    (slides / "s1" / "nuclei.csv").write_text("")
    shutil.rmtree(slides / "s2" / "maps.zarr")
    (slides / ".s0.0123abcd.old").mkdir()
    second = run_cli(str(manifest), *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 already complete, 3 to process" in second.stderr
    assert "redoing s0: nuclei.parquet is missing" in second.stderr
    assert "redoing s1: nuclei.csv" in second.stderr and "bytes" in second.stderr
    assert "redoing s2: maps.zarr" in second.stderr
    assert {s: slide_digest(slides / s) for s in reference} == reference
    assert not [p.name for p in slides.iterdir() if p.name.startswith(".")]

    # nothing changed: nothing redone
    third = run_cli(str(manifest), *args)
    assert "3 already complete, 0 to process" in third.stderr and "redoing" not in third.stderr
    # a table made on request (the CSV) and no longer asked for: the folders hold more, nothing redone
    fewer = run_cli(str(manifest), *[a for a in args if a != "--write-csv"])
    assert "3 already complete, 0 to process" in fewer.stderr and "redoing" not in fewer.stderr
    # another tiling gives the same nuclei (tiles sample one slide-wide grid): nothing redone
    retiled = run_cli(str(manifest), *[a if a != "256" else "384" for a in args])
    assert "3 already complete, 0 to process" in retiled.stderr and "redoing" not in retiled.stderr
    # published by an earlier revision of the segmentation (same slide, model and settings, other
    # nuclei): redone, saying so, rather than kept beside this revision's in one cohort
    s0_stats = slides / "s0" / "stats.json"
    recorded = json.loads(s0_stats.read_text())
    del recorded["inputs"]["segmentation_revision"]  # as the versions before the revision was recorded
    s0_stats.write_text(json.dumps(recorded))
    revised = run_cli(str(manifest), *args)
    assert revised.returncode == 0, revised.stderr[-3000:]
    assert "2 already complete, 1 to process" in revised.stderr
    assert "redoing s0: its nuclei were made by an earlier revision of the segmentation" in revised.stderr
    assert slide_digest(slides / "s0") == reference["s0"]

    # same size, other bytes: caught by the checksums when asked for
    csv = slides / "s0" / "nuclei.csv"
    data = bytearray(csv.read_bytes())
    data[-5] = ord("9") if data[-5] != ord("9") else ord("8")
    csv.write_bytes(bytes(data))
    assert "3 already complete" in run_cli(str(manifest), *args).stderr
    fourth = run_cli(str(manifest), *args, "--verify-checksums")
    assert "redoing s0: nuclei.csv" in fourth.stderr and "checksum" in fourth.stderr
    assert slide_digest(slides / "s0") == reference["s0"]

    # the inputs changed: another file under the same id, another mpp, another model, other settings
    shutil.copy(cohort / "s2.svs", tmp_path / "other.svs")
    manifest.write_text(
        "slide_path,slide_id,cancer_type,mpp\n"
        f"{tmp_path}/other.svs,s0,BRCA,\n{cohort}/s1.svs,s1,BRCA,0.3\n{cohort}/s2.svs,s2,BRCA,\n"
    )
    fifth = run_cli(str(manifest), *args)
    assert fifth.returncode == 0, fifth.stderr[-3000:]
    assert "redoing s0: the slide file" in fifth.stderr
    assert "redoing s1: the manifest's mpp" in fifth.stderr
    assert "redoing s2" not in fifth.stderr
    assert json.loads((slides / "s1" / "stats.json").read_text())["mpp"] == 0.3
    other_model = tmp_path / "other.onnx"
    import onnx

    model = onnx.load(blob_model)
    model.metadata_props.add(key="note", value="retrained")  # same graph, another file: another model
    onnx.save(model, other_model)
    sixth = run_cli(str(manifest), *args[:3], str(other_model), *args[4:], "--stain", "macenko")
    assert "redoing s2: the model" in sixth.stderr and "stain" in sixth.stderr

    # a finished slide whose file has since been moved away keeps its results
    (tmp_path / "other.svs").unlink()
    seventh = run_cli(str(manifest), *args[:3], str(other_model), *args[4:], "--stain", "macenko")
    assert "redoing s0" not in seventh.stderr and seventh.returncode == 0
    assert (slides / "s0" / "nuclei.csv").exists()


# ------------------------------------------------------------- settings validated up front ----


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--workers", "-1"], {}, "n_workers"),
        ([], {"NUCLEI_N_WORKERS": "-3"}, "n_workers"),
        (["--threads", "-2"], {}, "threads_per_worker"),
        ([], {"NUCLEI_N_WORKERS": "two"}, "NUCLEI_N_WORKERS"),
        ([], {"NUCLEI_HALF": "maybe"}, "NUCLEI_HALF"),
        ([], {"NUCLEI_TILE_PX": "512.5"}, "NUCLEI_TILE_PX"),
        ([], {"NUCLEI_DEFAULT_MPP": "-1"}, "default_mpp"),
        ([], {"NUCLEI_MEMORY_LIMIT": "lots"}, "memory_limit"),
    ],
)
def test_bad_settings_refuse_with_one_line(
    args: list[str], env: dict[str, str], named: str, tmp_path: Path, blob_model: Path
) -> None:
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    # refused before any worker starts: a run with no workers would wait for them forever
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), *args, env=env, timeout=60, small=False)
    assert named in one_line_error(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--tile-px", "100000"], {}, "tile_px"),
        (["--tile-px", "32"], {}, "tile_px"),
        (["--workers", "1.5"], {}, "--workers"),  # a float where a whole number is expected
        (["--max-mpp", "50"], {}, "max_mpp"),  # would plan tiles of a few pixels each
        ([], {"NUCLEI_DEFAULT_MPP": "0.02"}, "default_mpp"),  # finer than any scanner
        ([], {"NUCLEI_DEFAULT_MPP": "3"}, "default_mpp"),  # coarser than max_mpp: every such slide refused
        # beyond what a node can carry (before: a MemoryError per slide, a run without progress, 145
        # processes on two cores, endless worker restarts)
        (["--halo-px", "100000"], {}, "halo_px=100000 must be at most 1024"),
        (["--workers", "200"], {}, "n_workers=200"),
        (["--dashboard", "127.0.0.1:99999"], {}, "to 65535"),
        ([], {"NUCLEI_MEMORY_LIMIT": "1kB"}, "memory_limit='1kB'"),
        ([], {"NUCLEI_MAX_NUCLEUS_PX": "100000"}, "max_nucleus_px=100000"),
        ([], {"NUCLEI_WORKERS": "4"}, "unknown environment variable NUCLEI_WORKERS"),
    ],
)
def test_bad_bounds_refuse_with_one_line(
    args: list[str],
    env: dict[str, str],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """As above, in this process (the same main(); checked before any cluster starts; capfd: the
    run enables faulthandler, which needs stderr's file descriptor)."""
    from pipeline.cli.run import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    try:
        code = main([str(manifest), "--out", str(tmp_path / "out"), "--no-progress", *args])
    except SystemExit as exc:  # argument errors
        code = int(exc.code or 0)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and named in lines[0], err
    assert not (tmp_path / "out").exists()


def test_yaml_floats_are_not_truncated_to_ints(tmp_path: Path) -> None:
    from pipeline.config import load_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text("tiles_per_task: 2.7\n")
    with pytest.raises(ValueError, match=r"c.yaml: tiles_per_task=2.7 is not a whole number"):
        load_config(config_file, environ={})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("- tile_px\n- 512\n", "not a list"),
        ("model: !!python/object/apply:os.system ['echo hacked']\n", "not a readable YAML"),
        ("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nstain: *c\n", "aliases"),
        ("tile_px: [1, 2]\n", "tile_px"),
        ("stain: {a: 1}\n", "stain"),
    ],
)
def test_bad_config_files_refuse_with_one_line(text: str, named: str, tmp_path: Path, blob_model: Path) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text)
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--config", str(config_file), timeout=60)
    line = one_line_error(result)
    assert named in line and "bad.yaml" in line
    assert "hacked" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("header", "row", "named"),
    [
        ("slide_path,slide_id,WSI-ID", "a.svs,a,b", ["slide_id", "WSI-ID"]),  # an alias of a column given too
        ("slide_path,mpp,cancer_type,mpp", "a.svs,0.25,BRCA,0.5", ["mpp"]),
        ("slide_path,path", "a.svs,b.svs", ["slide_path", "path"]),
    ],
)
def test_duplicated_manifest_column_is_refused_naming_it(
    header: str, row: str, named: list[str], tmp_path: Path
) -> None:
    """Two columns that mean the same thing: which one wins would be a silent guess."""
    path = manifest_of(tmp_path, [row], header=header)
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    message = str(err.value)
    assert "manifest.csv" in message and all(f"'{n}'" in message for n in named), message


def test_duplicated_manifest_column_run_refuses_with_exit_2(tmp_path: Path, blob_model: Path) -> None:
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA,b"], header="slide_path,slide_id,cancer_type,wsi_id")
    line = one_line_error(run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model)))
    assert "manifest.csv" in line and "'wsi_id'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("mpp", "says"),
    [
        (99.0, "99 µm/px from manifest mpp column is too coarse"),  # 396× upsampling: tiles of a few pixels
        (0.02, "0.02 µm/px from manifest mpp column is finer than any slide scanner"),  # 12.5× reads per tile
    ],
)
def test_manifest_mpp_beyond_any_scanner_fails_its_slide_before_tiles_are_planned(
    mpp: float, says: str, cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    from pipeline.config import load_config
    from pipeline.io.readers import SlideError
    from pipeline.slide.plan import plan_slide

    config = load_config(None, {"model": str(blob_model), "tile_px": 256}, environ={})
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    with pytest.raises(SlideError, match=says):
        plan_slide(SlideEntry("s0", cohort / "s0.svs", mpp=mpp), str(out), config)
    assert not list((out / "slides").iterdir())  # no working folder, no tiles


def test_resolution_that_makes_the_slide_longer_than_glass_fails_it_before_tiles_are_planned(
    blob_model: Path, tmp_path: Path
) -> None:
    """A 48,000-px-long scan (12 mm at 40x) said to be at 1.9 µm/px would be 91 mm long: a wrong
    mpp, which would also plan a tile grid over 91 mm of imagined tissue. The tile plan is bounded
    by the glass: no slide's grid covers more than MAX_SLIDE_MM at the model's resolution."""
    import numpy as np

    from pipeline.config import COARSEST_MPP, load_config
    from pipeline.io.readers import SlideError
    from pipeline.slide.plan import plan_slide
    from pipeline.slide.scale import MAX_SLIDE_MM
    from pipeline.testing import write_pyramidal_tiff

    path = write_pyramidal_tiff(tmp_path / "long.svs", np.full((256, 48_000, 3), 240, np.uint8), mpp=0.25)
    config = load_config(None, {"model": str(blob_model), "tile_px": 256}, environ={})
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    with pytest.raises(SlideError, match=r"1.9 µm/px from manifest mpp column makes the slide 91 mm long"):
        plan_slide(SlideEntry("long", path, mpp=1.9), str(out), config)
    assert not list((out / "slides").iterdir())
    # max_mpp itself is bounded: at the coarsest accepted, tiles keep cores of 1/16 of their side
    assert load_config(None, {"max_mpp": COARSEST_MPP}, environ={}).max_mpp == COARSEST_MPP
    with pytest.raises(ValueError, match="max_mpp=50"):
        load_config(None, {"max_mpp": 50}, environ={})
    assert MAX_SLIDE_MM < 100


@pytest.mark.parametrize(
    ("mpp", "env"),
    [("-1", {}), ("0", {}), ("nan", {}), ("99", {}), ("0.001", {}), ("0.25", {"NUCLEI_HALF": "maybe"})],
)
def test_predict_refuses_bad_settings_with_one_line(
    mpp: str,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli.predict import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "x.png").write_bytes(b"")  # never read: the settings are refused first
    code = main([str(tmp_path / "x.png"), "--out", str(tmp_path / "pred"), "--mpp", mpp])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert ("NUCLEI_HALF" if env else f"--mpp {mpp}") in lines[0], lines
    assert not (tmp_path / "pred").exists()


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


# ---------------------------------------------------------------- nothing listens outside ----


def listening_addresses(pids: list[int]) -> set[str]:
    import psutil

    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.add(conn.laddr.ip)
    return found


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(blob_model: Path) -> None:
    """Scheduler, workers, nannies and dashboard of a local run: 127.0.0.1 and nothing else."""
    import psutil

    from pipeline.cluster import connect
    from pipeline.config import load_config

    config = load_config(None, {"n_workers": 1, "threads_per_worker": 1}, environ={})
    client = connect(config)
    try:
        client.wait_for_workers(1, timeout=60)
        me = psutil.Process()
        pids = [me.pid] + [p.pid for p in me.children(recursive=True)]
        addresses = listening_addresses(pids)
        assert addresses == {"127.0.0.1"}, addresses
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    finally:
        client.close()
        client.cluster.close()


def test_dashboard_opens_only_when_asked() -> None:
    from pipeline.cluster import dashboard_address
    from pipeline.config import Config, load_config

    assert dashboard_address(Config()).startswith("127.0.0.1:")
    config = load_config(None, {"dashboard": "0.0.0.0:8787"}, environ={})
    assert dashboard_address(config) == "0.0.0.0:8787"
    with pytest.raises(ValueError, match="dashboard"):
        load_config(None, {"dashboard": "8787"}, environ={})


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


def test_batch_cluster_binds_to_the_given_interface_and_requires_tls(tmp_path: Path) -> None:
    import shutil

    pytest.importorskip("dask_jobqueue")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    subprocess.run(  # a self-signed certificate serves as its own CA
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nuclei"]
        + ["-keyout", str(tmp_path / "node.key"), "-out", str(tmp_path / "node.pem")],
        check=True,
        capture_output=True,
    )
    shutil.copy(tmp_path / "node.pem", tmp_path / "ca.pem")
    out = subprocess.run(
        [sys.executable, str(ROOT / "cluster" / "hpc.py"), "slurm", "--print-job-script"]
        + ["--interface", "lo", "--tls-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--interface lo" in out.stdout and f"--tls-ca-file {tmp_path}/ca.pem" in out.stdout
    assert "--protocol tls://" in out.stdout or "tls://" in out.stdout
    for script in ("slurm/scheduler_and_workers.sbatch", "pbs/scheduler_and_workers.pbs"):
        text = (ROOT / "cluster" / script).read_text()
        assert "--interface" in text and "--tls-ca-file" in text and "REQUIRE_ENCRYPTION" in text, script


class _Payload:
    """A pickled object that runs code when it is loaded (what a hostile checkpoint carries)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(self.marker), "ran"))


def test_checkpoints_are_loaded_as_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.training.export import load_checkpoint
    from pipeline.training.unet import NucleusUNet
    from tests.training.test_export import TINY

    net = NucleusUNet(TINY)
    good = tmp_path / "good.pt"
    torch.save({"model": net.state_dict(), "step": 3, "config": {"unet": TINY.as_dict(), "lr": 1e-3}}, good)
    assert isinstance(load_checkpoint(good), NucleusUNet)

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    torch.save({"model": net.state_dict(), "config": {"unet": TINY.as_dict()}, "x": _Payload(str(marker))}, bad)
    with pytest.raises(Exception, match="(?i)weights"):
        load_checkpoint(bad)
    assert not marker.exists()


# ---------------------------------------------------- bad input: exit 2, one line, no traceback ----


def test_out_that_is_a_file_is_refused(tmp_path: Path, blob_model: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    line = one_line_error(run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model)))
    assert str(tmp_path / "out") in line
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "slides").write_text("")
    line = one_line_error(run_cli(str(manifest), "--out", str(tmp_path / "out2"), "--model", str(blob_model)))
    assert "slides" in line


def test_invalid_model_file_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"this is not an onnx model")
    manifest = manifest_of(tmp_path, ["a.svs,a,BRCA"])
    line = one_line_error(run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(model), timeout=60))
    assert "model.onnx" in line
    assert not (tmp_path / "out").exists()


def test_symlink_loop_fails_its_slide_alone(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    (tmp_path / "loop_a.svs").symlink_to("loop_b.svs")
    (tmp_path / "loop_b.svs").symlink_to("loop_a.svs")
    manifest = manifest_of(tmp_path, ["loop_a.svs,loop,BRCA", f"{cohort}/s0.svs,s0,BRCA"])
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--tile-px", "256")
    assert result.returncode == 1, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "failed slides"
    assert run["slides"]["s0"]["status"] == "ok" and run["slides"]["loop"]["status"] == "failed"
    assert "loop_a.svs" in run["slides"]["loop"]["error"]


@pytest.mark.slow
def test_a_folder_is_a_slide_only_when_it_holds_a_dicom_series(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    """A folder of DICOM instances is segmented like a file; an empty folder, or one of other
    files, fails alone with the reason, and the others finish."""
    from pipeline.testing import synthetic_slide_image
    from pipeline.testing.dicom import write_dicom_wsi

    write_dicom_wsi(tmp_path / "series", synthetic_slide_image(300, 300, seed=41)[0], mpp=0.25, tile=128)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a slide")
    rows = ["series,series,BRCA", "empty,empty,BRCA", "notes,notes,BRCA", f"{cohort}/s0.svs,s0,BRCA"]
    manifest = manifest_of(tmp_path, rows)
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--tile-px", "256")
    assert result.returncode == 1, result.stderr[-3000:]
    slides = json.loads((tmp_path / "out" / "run.json").read_text())["slides"]
    assert slides["series"]["status"] == "ok" and slides["s0"]["status"] == "ok"
    for name in ("empty", "notes"):
        assert slides[name]["status"] == "failed"
        assert f"{name}: SlideError: a folder that holds no DICOM files is not a slide" in slides[name]["error"]


def test_unopenable_paths_say_what_they_are(tmp_path: Path) -> None:
    """The reason a slide path cannot be read names what is there: a symlink loop, a link to
    nothing, a folder, nothing at all (not one "file not found" for all of them)."""
    from pipeline.io.readers import SlideError, choose_reader

    (tmp_path / "loop.svs").symlink_to("loop.svs")
    (tmp_path / "dangling.svs").symlink_to("gone.svs")
    (tmp_path / "folder.svs").mkdir()
    for name, says in (
        ("loop.svs", "symbolic link loop"),
        ("dangling.svs", "symbolic link to a missing file"),
        ("folder.svs", "a folder that holds no DICOM files is not a slide"),
        ("missing.svs", "file not found"),
    ):
        with pytest.raises(SlideError, match=says) as err:
            choose_reader(tmp_path / name)
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("scheduler", "named"),
    [
        ("tcp://127.0.0.1:9", "127.0.0.1:9"),  # nothing listens there
        ("tcp://[bad", "tcp://[bad"),
        ("{sched}", "sched.json"),  # a scheduler file that is not JSON
    ],
)
def test_unusable_scheduler_is_refused(
    scheduler: str, named: str, cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "sched.json").write_text("{not json")
    manifest = manifest_of(tmp_path, [f"{cohort}/s0.svs,s0,BRCA"])
    out = tmp_path / "out"
    result = run_cli(
        str(manifest), "--out", str(out), "--model", str(blob_model),
        "--scheduler", scheduler.format(sched=tmp_path / "sched.json"),
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}, timeout=90,
    )  # fmt: skip
    assert named in one_line_error(result)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "error" and run["finished"] and named in run["error"]


# --------------------------------------------------------- predict never overwrites a result ----


def test_predict_keeps_one_result_per_input_even_when_names_repeat(tmp_path: Path, blob_model: Path) -> None:
    import tifffile
    from PIL import Image

    from pipeline.testing import synthetic_slide_image

    images = {}
    for folder, seed in (("a", 1), ("b", 2)):
        image, _ = synthetic_slide_image(200, 160, seed=seed, tissue="full")
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "x.png")
        images[folder] = tmp_path / folder / "x.png"
    Image.fromarray(image).save(tmp_path / "b" / "x.tif")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", str(images["a"]), str(images["b"]), str(tmp_path / "b" / "x.tif")]
        + ["--out", str(tmp_path / "pred"), "--model", str(blob_model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "pred").iterdir() if p.name.endswith("_labels.tif"))
    assert len(written) == 3, written
    labels = {name: tifffile.imread(tmp_path / "pred" / name) for name in written}
    assert len({v.tobytes() for v in labels.values()}) >= 2  # a/x.png and b/x.png: two different results
    for name in written:
        assert name in result.stdout


# ---------------------------------------------------- bit depth, grayscale and transparency ----


def _inline_stats(path: Path, out: Path, model: Path, mpp: float = 0.25) -> dict:
    from pipeline.config import load_config
    from pipeline.slide.inline import process_slide_inline

    config = load_config(None, {"model": str(model), "tile_px": 256, "progress": False}, environ={})
    return process_slide_inline(SlideEntry(path.stem, path, mpp=mpp), str(out), config)


def test_16_bit_rgb_tiff_is_segmented_like_its_8_bit_twin(tmp_path: Path, blob_model: Path) -> None:
    """Before: the 16-bit samples were cast to uint8, keeping their low byte (noise)."""
    import tifffile

    from pipeline.io.readers import open_slide
    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(300, 300, seed=41)
    tifffile.imwrite(tmp_path / "eight.tif", image, tile=(64, 64))
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "sixteen.tif", image.astype(np.uint16) * 256 + noise, tile=(64, 64))
    # 12-bit samples with their range declared (MaxSampleValue), as some scanners write them
    twelve = np.round(image.astype(np.float64) * 4095 / 255).astype(np.uint16)
    tifffile.imwrite(tmp_path / "twelve.tif", twelve, tile=(64, 64), extratags=[(281, 3, 1, 4095, True)])
    for name in ("sixteen.tif", "twelve.tif"):
        with open_slide(tmp_path / name) as slide:
            read = slide.read_region(0, 0, 300, 300).astype(int)
        assert np.abs(read - image).max() <= 1, name
    eight = _inline_stats(tmp_path / "eight.tif", tmp_path / "out8", blob_model)
    sixteen = _inline_stats(tmp_path / "sixteen.tif", tmp_path / "out16", blob_model)
    assert eight["n_nuclei"] > 50
    assert abs(sixteen["n_nuclei"] - eight["n_nuclei"]) <= 0.02 * eight["n_nuclei"]


def _grayscale_files(folder: Path) -> list[Path]:
    import tifffile
    from PIL import Image

    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(200, 200, seed=42)
    gray = image.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")  # mode I;16: was turned white
    Image.fromarray(gray).save(folder / "gray8.png")  # mode L: gave 0 nuclei
    tifffile.imwrite(folder / "gray.tif", gray, tile=(64, 64), photometric="minisblack")
    return [folder / "gray16.png", folder / "gray8.png", folder / "gray.tif"]


def test_grayscale_images_are_refused_with_the_reason(tmp_path: Path) -> None:
    from pipeline.io.readers import SlideError, open_slide

    for path in _grayscale_files(tmp_path):
        with pytest.raises(SlideError, match="grayscale"):
            open_slide(path).close()


def test_transparent_pixels_are_glass_not_tissue(tmp_path: Path) -> None:
    """An RGBA image whose right half is transparent black: no tissue there (black read as tissue)."""
    import tifffile
    from PIL import Image

    from pipeline.io.readers import low_resolution_view, open_slide
    from pipeline.kernels.tissue import tissue_mask
    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(400, 300, seed=43, tissue="full")
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, 200:] = 0
    rgba = np.dstack([image, alpha])
    rgba[:, 200:, :3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, tile=(64, 64), photometric="rgb", extrasamples=[2])
    for name in ("rgba.png", "rgba.tif"):
        with open_slide(tmp_path / name) as slide:
            assert (slide.read_region(200, 0, 200, 300) == 255).all(), name
            np.testing.assert_array_equal(slide.read_region(0, 0, 200, 300), image[:, :200])
            view, ds = low_resolution_view(slide, 100)
        tissue = tissue_mask(view)
        right = int(np.ceil(200 / ds))
        assert tissue[:, : right - 2].mean() > 0.9 and not tissue[:, right + 1 :].any(), name


# ------------------------------------------------------------- resource bounds on input ----

VIEW_PEAK = """
import sys
from pipeline.io.readers import low_resolution_view, open_slide
from pipeline.testing.memory import own_peak_rss_bytes
with open_slide(sys.argv[1]) as slide:
    low_resolution_view(slide)
print(own_peak_rss_bytes() / 2**20)  # its own: ru_maxrss would count pytest's peak too
"""


@pytest.mark.slow
def test_low_resolution_view_of_a_hostile_width_stays_under_1_gb(tmp_path: Path) -> None:
    """A 1 MB file declaring 150,000 × 1,000 px: its view was built from bands of the whole
    width (1.9 GB; 3.9 GB at 300,000 px); now from bounded blocks (~0.3 GB peak with
    the interpreter, benchmarks/RESULTS-faults.md)."""
    from pipeline.testing import glass_tiff

    path = glass_tiff(tmp_path / "wide.tif", 150_000, 1_000)
    assert path.stat().st_size < 2e6
    result = subprocess.run(
        [sys.executable, "-c", VIEW_PEAK, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < 1024


def test_view_of_a_slide_without_a_pyramid_is_refused_naming_its_size(tmp_path: Path) -> None:
    """A 5 MB one-level file of 40,000² px: reading 1.6 Gpx of glass for a thumbnail (a 100,000²
    one spent over 160 s) is refused at once with the level's size and how to convert it."""
    import time

    from pipeline.io.readers import SlideError, low_resolution_view, open_slide
    from pipeline.testing import glass_tiff

    path = glass_tiff(tmp_path / "flat.tif", 40_000, 40_000)
    started = time.perf_counter()
    with open_slide(path) as slide, pytest.raises(SlideError, match=r"level 0, 40,000×40,000 px.*pyramid"):
        low_resolution_view(slide)
    assert time.perf_counter() - started < 10


def test_tiff_whose_strips_are_too_large_to_decode_is_refused(tmp_path: Path) -> None:
    """A file declaring one strip of 20,000 × 10,000 px (572 MB decoded by any read of it) is
    refused when opened (its content is never decoded, so the strip here is a few bytes)."""
    import zlib

    import tifffile

    from pipeline.io.readers import SlideError, open_slide

    width, height = 20_000, 10_000
    path = tmp_path / "strip.tif"
    strip = zlib.compress(bytes(width * 3))  # one row: the declared strip is never decoded
    shape = (height, width, 3)
    tifffile.imwrite(path, iter([strip]), shape=shape, dtype="uint8", rowsperstrip=height, compression="zlib")
    with pytest.raises(SlideError, match=r"level 0 is stored in strips of 20,000×10,000 px \(572 MB each"):
        open_slide(path)


def test_view_in_bounded_blocks_equals_the_view_in_whole_bands(synthetic_slide) -> None:
    """Blocks split across the width give the view pixel for pixel (clean slides keep their outputs)."""
    from pipeline.io.readers import low_resolution_view, open_slide

    with open_slide(synthetic_slide[0], "tifffile") as slide:
        whole, ds = low_resolution_view(slide, 256, block_px=10**9)
        for block_px in (2_000, 50_000):
            blocks, ds_blocks = low_resolution_view(slide, 256, block_px=block_px)
            np.testing.assert_array_equal(blocks, whole)
            assert ds_blocks == ds


def test_plain_image_is_decoded_once_per_process_for_its_tile_tasks(tmp_path: Path) -> None:
    """Every tile task opens its slide: a PNG was decoded whole by each of them; now once per
    process (and again when the file is replaced)."""
    from PIL import Image

    from pipeline.io.readers import open_slide
    from pipeline.testing import synthetic_slide_image

    image, _ = synthetic_slide_image(300, 200, seed=44)
    path = tmp_path / "plain.png"
    Image.fromarray(image).save(path)
    with open_slide(path) as first, open_slide(path) as second:
        assert np.shares_memory(first.image, second.image)
        np.testing.assert_array_equal(second.read_region(0, 0, 300, 200), image)
    Image.fromarray(image[:, ::-1].copy()).save(path)
    os.utime(path, ns=(1, 1))
    with open_slide(path) as replaced:
        np.testing.assert_array_equal(replaced.read_region(0, 0, 300, 200), image[:, ::-1])


def test_plain_image_too_large_to_decode_whole_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    import pipeline.io.readers.image as plain
    from pipeline.io.readers import SlideError, open_slide

    Image.fromarray(np.full((300, 400, 3), 240, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(plain, "MAX_IMAGE_PIXELS", 100_000)  # 120,000 px: over the limit
    with pytest.raises(SlideError, match=r"PNG image of 400×300 px is too large.*pyramidal TIFF"):
        open_slide(tmp_path / "big.png")


# ---------------------------------------------------------------------- a corrupt tile ----


def _corrupt_tiles(path: Path, indices: list[int]) -> None:
    """Zero the header bytes of level-0 tiles ``indices`` (raster order) of a JPEG TIFF."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        spans = [(page.dataoffsets[i], page.databytecounts[i]) for i in indices]
    data = bytearray(path.read_bytes())
    for offset, _ in spans:
        data[offset + 2 : offset + 40] = bytes(38)  # JPEG tables gone: "Quantization table 0x00 was not defined"
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corrupt_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,024² px pyramidal JPEG slide (4×4 tiles of 256 px at level 0), clean and with one and
    two undecodable level-0 tiles."""
    import shutil

    from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff

    folder = tmp_path_factory.mktemp("corrupt")
    image, _ = synthetic_slide_image(1024, 1024, seed=45)
    write_pyramidal_tiff(folder / "clean.svs", image, mpp=0.25)
    for name, indices in (("one.svs", [5]), ("two.svs", [5, 10])):
        shutil.copy(folder / "clean.svs", folder / name)
        _corrupt_tiles(folder / name, indices)
    return folder


def _reader_stats(path: Path, out: Path, model: Path) -> dict:
    from pipeline.config import load_config
    from pipeline.slide.inline import process_slide_inline

    # tifffile: cuCIM decodes a corrupt JPEG tile without an error (it cannot be told from tissue);
    # no stain normalisation: statistics taken without the tile would move the nuclei compared
    config = load_config(
        None,
        {"model": str(model), "tile_px": 256, "reader": "tifffile", "estimate_scale": False, "stain": "none"},
        environ={},
    )
    return process_slide_inline(SlideEntry(path.stem, path, mpp=0.25), str(out), config)


def test_corrupt_tile_is_named_excluded_and_flagged(corrupt_slides: Path, blob_model: Path, tmp_path: Path) -> None:
    """Before: the slide failed at planning with the decoder's message and no tile named. Now it
    finishes without that tile: listed in stats.json, flagged for the QC, the nuclei away from it
    as in the clean slide."""
    import pyarrow.parquet as pq

    clean = _reader_stats(corrupt_slides / "clean.svs", tmp_path / "clean", blob_model)
    one = _reader_stats(corrupt_slides / "one.svs", tmp_path / "one", blob_model)
    assert clean["status"] == one["status"] == "ok" and clean["unreadable_tiles"] is None
    assert "unreadable_tiles" in one["flags"] and "unreadable_tiles" not in clean["flags"]
    [bad] = one["unreadable_tiles"]
    assert (bad["level"], bad["x"], bad["y"], bad["width"], bad["height"]) == (0, 256, 256, 256, 256)
    assert "Jpeg" in bad["error"] and any("level 0, x 256, y 256" in w for w in one["warnings"])
    # the QC: a note in wsi_qc.csv, and review patches with the tile as glass (not a failed extraction)
    import pandas as pd

    from pipeline.qc import build_qc

    qc = build_qc(tmp_path / "one", report=False)
    row = pd.read_csv(qc / "wsi_qc.csv").iloc[0]
    assert "unreadable_tiles" in row["Flags"], row.to_dict()
    patches = json.loads((qc / "patches" / "one" / "patches.json").read_text())
    assert patches["images"] and "failed" not in patches["note"], patches

    def centroids(out: Path, slide_id: str) -> np.ndarray:
        table = pq.read_table(out / "slides" / slide_id / "nuclei.parquet", columns=["centroid_x", "centroid_y"])
        return np.column_stack([table.column(0).to_numpy(), table.column(1).to_numpy()])

    kept, full = centroids(tmp_path / "one", "one"), centroids(tmp_path / "clean", "clean")
    near = lambda xy: (xy[:, 0] > 256 - 40) & (xy[:, 0] < 512 + 40) & (xy[:, 1] > 256 - 40) & (xy[:, 1] < 512 + 40)  # noqa: E731
    inside = lambda xy: (xy[:, 0] >= 256) & (xy[:, 0] < 512) & (xy[:, 1] >= 256) & (xy[:, 1] < 512)  # noqa: E731
    assert not inside(kept).any()
    # away from it, the clean slide's nuclei are found (the stain statistics, taken without the
    # tile, move a few outlines by a pixel)
    from scipy.spatial import cKDTree

    away = full[~near(full)]
    distance, _ = cKDTree(kept).query(away)
    assert (distance < 1.5).mean() > 0.99 and len(kept) >= 0.85 * len(full)


def test_slide_losing_too_much_to_corrupt_tiles_fails_naming_them(
    corrupt_slides: Path, blob_model: Path, tmp_path: Path
) -> None:
    """Two of 16 tiles (12.5 % of the segmented area) are over what a slide may lose."""
    from pipeline.io.readers import SlideError

    with pytest.raises(SlideError, match=r"level 0, x 256, y 256; level 0, x 512, y 512.*over the 10%"):
        _reader_stats(corrupt_slides / "two.svs", tmp_path / "two", blob_model)


# ----------------------------------------------- the QC: bad review files, store, stats.json ----


@pytest.fixture()
def qc_cohort(tmp_path: Path) -> Path:
    """A run folder of 12 ok slides' stats.json (and one failed), no slide files: QC tables only."""
    from pipeline.testing.qc_cohorts import synthetic_stats_cohort

    synthetic_stats_cohort(tmp_path / "run", {"BRCA": 12}, n_failed=1)
    return tmp_path / "run"


def qc_cli(run: Path, *args: str) -> tuple[int, str]:
    """``python -m pipeline.qc`` in this process: (exit status, stderr)."""
    import contextlib
    import io

    from pipeline.cli.qc import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(run), "--patches", "none", "--no-report", *args])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, err.getvalue()


def verdicts_of(run: Path) -> dict[str, tuple[str, str]]:
    import csv

    with open(run / "qc" / "wsi_qc.csv", newline="", encoding="utf-8") as f:
        return {
            r["WSI-ID"]: (r["SegmentationUnacceptableOrNot"], r["VisualAssessmentComment"])
            for r in csv.DictReader(f)
            if r["SegmentationUnacceptableOrNot"]
        }


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("utf-16", ","), ("utf-16", "\t"), ("utf-16-le", ","), ("utf-16-be", "\t"), ("utf-8-sig", ";")],
)
def test_review_file_saved_by_a_spreadsheet_is_read(encoding: str, delimiter: str, qc_cohort: Path) -> None:
    """Spreadsheets save UTF-16 ("Unicode text": tab-separated, with a byte-order mark, or without
    one), and semicolon-separated CSV where the comma is the decimal mark: all are read as written."""
    text = delimiter.join(["WSI-ID", "SegmentationUnacceptableOrNot", "VisualAssessmentComment"]) + "\r\n"
    text += delimiter.join(["BRCA-00001", "yes", "noyaux fusionnés, contours flous"]) + "\r\n"
    path = qc_cohort / "verdicts.csv"
    if delimiter == ",":  # the comment's comma is quoted
        text = text.replace("noyaux fusionnés, contours flous", '"noyaux fusionnés, contours flous"')
    path.write_bytes(text.encode(encoding))
    code, err = qc_cli(qc_cohort, "--reviews", str(path))
    assert code == 0, err
    assert verdicts_of(qc_cohort) == {"BRCA-00001": ("Unacceptable", "noyaux fusionnés, contours flous")}


def test_review_file_in_another_encoding_is_refused_naming_it(qc_cohort: Path) -> None:
    path = qc_cohort / "verdicts.csv"
    path.write_bytes(
        "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nBRCA-00001,yes,noyaux fusionnés\n".encode(
            "cp1252"
        )
    )
    code, err = qc_cli(qc_cohort, "--reviews", str(path))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error:") and str(path) in err and "UTF-8" in err and "line 2" in err, err
    assert not (qc_cohort / "qc" / "reviews" / "wsi_verdicts.csv").exists()


VERDICT_STORE_HEADER = "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment,Source"


@pytest.mark.parametrize(
    ("store", "content", "says"),
    [
        ("patch_reviews.csv", "WSI-ID,PatchIndex,X,Y,Adequate,Comment,Source\nBRCA-00001,zz,1,2,yes,,a\n", "line 2"),
        ("patch_reviews.csv", "WSI-ID,PatchIndex,X,Y,Adequate,Comment,Source\nBRCA-00001,0,1,2,maybe,,a\n", "line 2"),
        ("patch_reviews.csv", "WSI-ID,Adequate\nBRCA-00001,yes\n", "PatchIndex"),
        ("wsi_verdicts.csv", b"\x00\xff\xfe garbage\x81\n", "not UTF-8"),
        (
            "wsi_verdicts.csv",
            "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment,Source\nB,perhaps,,x\n",
            "line 2",
        ),
        (
            "wsi_verdicts.csv",
            "WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment,Source\nB,No,,x,y\n",
            "line 2",
        ),
    ],
)
def test_damaged_review_store_is_refused_and_left_as_it_is(
    store: str, content: str | bytes, says: str, qc_cohort: Path
) -> None:
    """The store holds every review recorded so far: a damaged one is never rewritten (that would
    drop reviews); the QC stops, naming the file and what is wrong."""
    reviews = qc_cohort / "qc" / "reviews"
    reviews.mkdir(parents=True)
    data = content if isinstance(content, bytes) else content.encode()
    (reviews / store).write_bytes(data)
    verdicts = qc_cohort / "verdicts.csv"
    verdicts.write_text("WSI-ID,SegmentationUnacceptableOrNot,VisualAssessmentComment\nBRCA-00002,no,fine\n")
    for args in ([], ["--reviews", str(verdicts)]):
        code, err = qc_cli(qc_cohort, *args)
        assert code == 2 and "Traceback" not in err, err
        assert err.startswith("error:") and str(reviews / store) in err and says in err, err
        assert (reviews / store).read_bytes() == data
    assert not (qc_cohort / "qc" / "slides.csv").exists()


def test_stats_json_without_slide_id_is_left_out_with_a_warning(qc_cohort: Path) -> None:
    """One foreign or damaged stats.json does not cost the others their QC: it is left out, named."""
    stats = qc_cohort / "slides" / "BRCA-00003" / "stats.json"
    data = json.loads(stats.read_text())
    data.pop("slide_id")
    stats.write_text(json.dumps(data))
    code, err = qc_cli(qc_cohort)
    assert code == 1, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(stats) in warnings[0] and "slide_id" in warnings[0], err
    import csv

    with open(qc_cohort / "qc" / "slides.csv", newline="") as f:
        listed = {r["WSI-ID"] for r in csv.DictReader(f)}
    assert "BRCA-00003" not in listed and len(listed) == 12  # 11 ok + 1 failed
    assert json.loads((qc_cohort / "qc" / "qc.json").read_text())["unusable_stats"] == [warnings[0][9:]]
    from pipeline.qc import build_qc

    with pytest.warns(UserWarning, match="BRCA-00003"):
        build_qc(qc_cohort, patches="none", report=False)


def test_published_stats_json_without_slide_id_is_redone_by_a_rerun(qc_cohort: Path) -> None:
    """A rerun skips a failed slide (without --retry-failed) on its stats.json alone: one that
    names no slide is not that slide's record, and the slide is redone."""
    from pipeline.cli.run import split_done
    from pipeline.io.outputs.stats import failure_stats
    from pipeline.testing.qc_cohorts import write_stats

    write_stats(qc_cohort, failure_stats("BRCA-F001", "BRCA", "/nonexistent/b.svs", "unreadable"))
    stats = qc_cohort / "slides" / "BRCA-F000" / "stats.json"
    data = json.loads(stats.read_text())
    data.pop("slide_id")
    stats.write_text(json.dumps(data))
    entries = [SlideEntry(s, qc_cohort / f"{s}.svs") for s in ("BRCA-F000", "BRCA-F001")]
    todo, done = split_done(entries, qc_cohort, retry_failed=False)
    assert [e.slide_id for e in todo] == ["BRCA-F000"]
    assert [s["slide_id"] for s in done] == ["BRCA-F001"]


def test_qc_of_a_folder_that_is_not_a_run_is_refused_with_one_line(tmp_path: Path, qc_cohort: Path) -> None:
    code, err = qc_cli(tmp_path / "nowhere")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and "nowhere" in err
    (qc_cohort / "qc").write_text("a file where the qc folder goes")
    code, err = qc_cli(qc_cohort)
    assert code == 2 and err.startswith("error:") and "Traceback" not in err and str(qc_cohort / "qc") in err, err
    for option, value in (("--n-patches", "1.5"), ("--n-patches", "0"), ("--outer-percent", "200"), ("--workers", "0")):
        code, err = qc_cli(qc_cohort, option, value)
        assert code == 2 and err.startswith("error:") and option in err and len(err.strip().splitlines()) == 1, err
