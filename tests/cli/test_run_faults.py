"""``python -m pipeline.run`` against faults of its own: a driver that breaks, a second run on one
folder, outputs or inputs changed between runs, an unusable output folder or model, a slide path
that loops, a record that names no slide. Nothing is lost, every bad input ends with exit 2 and one
line, run.json always ends in a final state.

Faults that are about processes (two runs on one folder) run real processes; they are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.manifest import SlideEntry
from tests.conftest import ROOT, manifest_of, one_line_error, run_cli, wait_for


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


def start_run(manifest: Path, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", str(manifest), "--out", str(out), "--model", str(model)]
        + ["--tile-px", "256", "--no-progress", "--no-qc", "--workers", "1", "--threads", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers share its process group: one signal reaches them all
    )


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
