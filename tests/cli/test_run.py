"""``python -m pipeline.run`` end to end on a local Dask cluster of worker processes: bad slides
fail alone, reruns recompute nothing, a killed run resumes to the same outputs and never shows
a half-written slide folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.testing import synthetic_slide_cohort
from tests.conftest import ROOT, WSI_FIXTURES, need_shared, output_digest


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args, "--no-progress", "--workers", "1", "--threads", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    synthetic_slide_cohort(folder, 4, 700, 600, seed=20, prefix="s", cancer_types=("LUAD", "BRCA"))
    return folder


@pytest.mark.slow
def test_failures_reruns_and_resume(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    data = (cohort / "s0.svs").read_bytes()
    (cohort / "truncated.svs").write_bytes(data[: len(data) // 3])
    manifest.write_text(
        (cohort / "manifest.csv").read_text().replace("s", str(cohort) + "/s", 0)
        + f"{cohort}/missing.svs,missing,BRCA\n{cohort}/truncated.svs,truncated,BRCA\n"
    )
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0]] + [(r if r.startswith("/") else f"{cohort}/{r}") for r in rows[1:]]) + "\n")
    out = tmp_path / "out"
    first = run_cli(str(manifest), "--out", str(out), "--model", str(blob_model), "--tile-px", "256")
    assert first.returncode == 1, first.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    status = {k: v["status"] for k, v in run["slides"].items()}
    assert status == {"s0": "ok", "s1": "ok", "s2": "ok", "s3": "ok", "missing": "failed", "truncated": "failed"}
    assert "file not found" in run["slides"]["missing"]["error"]
    assert "truncated" in json.loads((out / "slides" / "truncated" / "stats.json").read_text())["error"]
    assert run["model"]["sha256"] and run["versions"]["dask"]
    assert "2 failed" in first.stdout and "4 ok" in first.stdout
    digests = {s: output_digest(out / "slides" / s) for s in ("s0", "s1", "s2", "s3")}
    mtimes = {s: (out / "slides" / s / "stats.json").stat().st_mtime for s in digests}

    # a second run recomputes nothing
    second = run_cli(str(manifest), "--out", str(out), "--model", str(blob_model), "--tile-px", "256")
    assert second.returncode == 1
    assert "6 already complete, 0 to process" in second.stderr
    assert {s: (out / "slides" / s / "stats.json").stat().st_mtime for s in digests} == mtimes

    # killed mid-way, then resumed: same outputs as the uninterrupted run, never a partial folder
    out2 = tmp_path / "out2"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            str(cohort / "manifest.csv"),
            "--out",
            str(out2),
            "--model",
            str(blob_model),
            "--tile-px",
            "256",
            "--no-progress",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    seen_partial = False
    while time.time() < deadline:
        slides = out2 / "slides"
        visible = [p for p in slides.iterdir() if not p.name.startswith(".")] if slides.exists() else []
        for p in visible:  # a visible folder is always complete
            assert (p / "stats.json").exists() and (p / "nuclei.parquet").exists(), p
        seen_partial |= slides.exists() and any(p.name.startswith(".") for p in slides.iterdir())
        if len(visible) >= 1:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in (out2 / "slides").iterdir() if not p.name.startswith(".")}
    assert 1 <= len(done_before) < 4 and seen_partial
    resumed = run_cli(str(cohort / "manifest.csv"), "--out", str(out2), "--model", str(blob_model), "--tile-px", "256")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(done_before)} already complete" in resumed.stderr
    assert not [p for p in (out2 / "slides").iterdir() if p.name.startswith(".")]
    for s in digests:
        assert output_digest(out2 / "slides" / s) == digests[s], s


def test_malformed_manifest_is_rejected_before_any_work(tmp_path: Path, blob_model: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_path,slide_id\na.svs,x\nb.svs,x\n")
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model))
    assert result.returncode == 2 and "row 3" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_fixture_slides(tmp_path: Path, blob_model: Path) -> None:
    """The real slides give nuclei; the thumbnail-scale DICOM, a missing and a truncated file fail with reasons."""
    need_shared("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "small_dicom.dcm")
    data = (WSI_FIXTURES / "CMU-1-Small-Region.svs").read_bytes()
    (tmp_path / "cut.svs").write_bytes(data[:200_000])
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "slide_path,slide_id,cancer_type,mpp\n"
        f"{WSI_FIXTURES / 'CMU-1-Small-Region.svs'},cmu,SKCM,\n"
        f"{WSI_FIXTURES / 'tcga-cr-7395-01a-01-ts1.svs'},tcga,HNSC,0.25\n"
        f"{WSI_FIXTURES / 'small_dicom.dcm'},dicom,BRCA,\n"
        "nowhere.svs,missing,BRCA,\n"
        "cut.svs,cut,BRCA,\n"
    )
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--no-qc")
    assert result.returncode == 1
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    for sid in ("cmu", "tcga"):
        assert run["slides"][sid]["status"] == "ok" and run["slides"][sid]["n_nuclei"] > 100, sid
    assert run["slides"]["dicom"]["status"] == "failed"
    assert (
        "µm/px from DICOM ImagedVolumeWidth is too coarse to segment nuclei (limit 2.0)"
        in (run["slides"]["dicom"]["error"])
    )
    for sid in ("missing", "cut"):
        assert run["slides"][sid]["status"] == "failed" and run["slides"][sid]["error"], sid


@pytest.mark.slow
@pytest.mark.parametrize(("name", "whole_group"), [("SIGTERM", True), ("SIGHUP", False)])
def test_sigterm_and_sighup_end_the_run_as_interrupted(
    name: str, whole_group: bool, cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    """SIGTERM (``kill``, ``timeout``, a batch system at its time limit, sent to the whole process
    group) and SIGHUP (a closed terminal, to the driver alone) end a run as SIGINT does: run.json
    ``interrupted`` with the reason, exit 1; the same command then resumes."""
    out = tmp_path / "out"
    args = [str(cohort / "manifest.csv"), "--out", str(out), "--model", str(blob_model), "--tile-px", "256"]
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", *args, "--no-progress", "--workers", "1", "--threads", "2"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 300
        while "dask dashboard" not in err.read_text() and proc.poll() is None:  # the slides are under way
            assert time.time() < deadline, err.read_text()
            time.sleep(0.05)
        sig = getattr(signal, name)
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    run = json.loads((out / "run.json").read_text())
    assert code == 1, err.read_text()[-3000:]
    assert run["status"] == "interrupted" and name in run["error"] and "rerun" in run["error"], run.get("error")
    lines = [line for line in err.read_text().splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and name in lines[0], err.read_text()[-3000:]
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "ok"
    assert not [p for p in (out / "slides").iterdir() if p.name.startswith(".")]


SWALLOWED_STOP = """
import gc, os, signal, sys, time
from pipeline.cli.run import StopSignal, stop_on_signals

stop_on_signals()
sent = []

def signal_inside(phase, info):
    # the signal lands while Python runs a gc callback (Dask registers some): an exception raised
    # there is reported as unraisable and dropped, and the driver would go on
    if phase == "start" and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass

gc.callbacks.append(signal_inside)
try:
    gc.collect()
    deadline = time.time() + 5
    while time.time() < deadline:
        time.sleep(0.01)
except StopSignal as exc:
    print("stopped by", exc.name)
    sys.exit(0)
print("the run went on")
sys.exit(1)
"""


def test_a_stop_signal_that_lands_in_a_gc_callback_still_stops_the_run() -> None:
    """A SIGTERM whose handler runs inside a garbage-collector callback (Dask's driver has them)
    raises there, where Python drops the exception; the run must still stop, with nothing printed
    of the dropped exception."""
    result = subprocess.run(
        [sys.executable, "-c", SWALLOWED_STOP], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "stopped by SIGTERM", result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr


@pytest.mark.slow
def test_non_ascii_slide_path_in_the_c_locale(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    """Under ``LC_ALL=C`` without UTF-8 mode (file names and the console are ASCII), a slide path
    that is not ASCII fails that slide alone, with the reason and what to do; printing it never
    fails the run."""
    import shutil

    shutil.copy(cohort / "s0.svs", tmp_path / "lame-é.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id,cancer_type\nlame-é.svs,accent,LUAD\n{cohort / 's1.svs'},s1,LUAD\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", str(manifest), "--out", str(out), "--model", str(blob_model)]
        + ["--tile-px", "256", "--workers", "1", "--threads", "2"],
        cwd=ROOT,
        capture_output=True,
        env=env,
        timeout=600,
    )
    stderr = result.stderr.decode("ascii", "replace")
    assert result.returncode == 1, stderr[-3000:]
    assert b"Traceback (most recent call last)" not in result.stderr + result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed slides" and run["slides"]["s1"]["status"] == "ok"
    assert "LC_ALL=C.UTF-8" in run["slides"]["accent"]["error"], run["slides"]["accent"]["error"]
    assert b"FAILED accent" in result.stdout + result.stderr
    assert (out / "qc" / "wsi_qc.csv").exists()


def test_out_that_is_a_file_is_refused_in_words(tmp_path: Path, blob_model: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_path\na.svs\n")
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "below"):
        result = run_cli(str(manifest), "--out", str(out), "--model", str(blob_model))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Errno" not in result.stderr, result.stderr
        assert f"--out {out}" in result.stderr and f"{tmp_path / 'taken'} is a file" in result.stderr


@pytest.mark.slow
def test_many_failing_slides_are_summarised(tmp_path: Path, blob_model: Path) -> None:
    """Each failing slide is one row of the summary; its reason is printed for the first few only,
    the rest counted by kind (every reason is in run.json), and the workers do not log a traceback
    for a slide's own fault."""
    import re

    n = 60
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_path,slide_id\n" + "".join(f"{tmp_path}/none/m{i}.svs,m{i}\n" for i in range(n)))
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--no-qc")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert "Compute Failed" not in result.stderr
    mentions = [sum(1 for line in lines if re.search(rf"\bm{i}\b", line)) for i in range(n)]
    assert all(m >= 1 for m in mentions)  # every slide has its row
    assert sum(m - 1 for m in mentions) <= 2 * 20  # reasons of 20 at most as they fail, 20 in the summary
    assert len(lines) <= n + 2 * 20 + 15, "\n".join(lines)
    assert any(f"{n - 20} more failed" in line and "file not found" in line for line in lines), "\n".join(lines[-30:])
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert all("file not found" in s["error"] for s in run["slides"].values())


@pytest.mark.slow
def test_the_console_gives_warnings_and_expected_failures_one_line_each(
    cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    """A person reads the console: a warning about a slide is one `warning: <slide>: <message>`
    line (no Python source echoed under it), a slide that is not there one FAILED line (no
    "Compute Failed" block, no traceback)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id,mpp\n{cohort / 's0.svs'},coarse,0.7\n{tmp_path / 'nope.svs'},gone,\n")
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--no-qc")
    console = result.stdout + result.stderr
    assert result.returncode == 1, console
    warning_lines = [line for line in console.splitlines() if "coarser than 0.6" in line]
    assert warning_lines and all(line.startswith("warning: coarse: ") for line in warning_lines), console
    assert "UserWarning: coarse" not in console and "decide_scale(" not in console, console
    assert "Traceback" not in console and "Compute Failed" not in console, console
    assert sum("gone" in line and "file not found" in line for line in console.splitlines()) >= 1, console


@pytest.mark.slow
def test_a_tampered_record_is_not_trusted(tmp_path: Path, blob_model: Path) -> None:
    """What a finished slide holds is the pipeline's to know, its counts the table's: a stats.json
    that leaves out its nucleus table, or counts other nuclei than it holds, gets the slide redone
    (before: "already complete" and 999,999 nuclei in the summary, with --verify-checksums too)."""
    synthetic_slide_cohort(tmp_path, 2, 300, 300, seed=41, prefix="t")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id\n{tmp_path}/t0.svs,t0\n{tmp_path}/t1.svs,t1\n")
    args = [str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model), "--tile-px", "256", "--no-qc"]
    assert run_cli(*args).returncode == 0
    slides = tmp_path / "out" / "slides"
    reference = {s: output_digest(slides / s) for s in ("t0", "t1")}
    counts = {s: json.loads((slides / s / "stats.json").read_text())["n_nuclei"] for s in ("t0", "t1")}

    def tamper(slide: str, drop_table: bool) -> None:
        path = slides / slide / "stats.json"
        stats = json.loads(path.read_text())
        if drop_table:
            (slides / slide / "nuclei.parquet").unlink()
            del stats["outputs"]["nuclei.parquet"]
        stats["n_nuclei"] = 999999
        path.write_text(json.dumps(stats, indent=2))

    tamper("t0", drop_table=True)
    tamper("t1", drop_table=False)
    for extra in (["--verify-checksums"], []):
        rerun = run_cli(*args, *extra)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "0 already complete, 2 to process" in rerun.stderr, rerun.stderr[-3000:]
        assert "redoing t0: nuclei.parquet is missing" in rerun.stderr
        assert (
            f"redoing t1: its stats.json counts 999,999 nuclei, nuclei.parquet holds {counts['t1']:,}" in rerun.stderr
        )
        assert "999,999" not in rerun.stdout and f"{counts['t0'] + counts['t1']:,} nuclei" in rerun.stdout
        assert {s: output_digest(slides / s) for s in reference} == reference
        tamper("t0", drop_table=False)  # the table kept, only its entry under outputs gone
        stats = json.loads((slides / "t0" / "stats.json").read_text())
        del stats["outputs"]["nuclei.parquet"]
        stats["n_nuclei"] = counts["t0"]
        (slides / "t0" / "stats.json").write_text(json.dumps(stats))
        tamper("t1", drop_table=True)
        final = run_cli(*args, *extra)
        assert "redoing t0: its stats.json does not record nuclei.parquet" in final.stderr, final.stderr[-3000:]
        assert "redoing t1: nuclei.parquet is missing" in final.stderr
        tamper("t0", drop_table=True)
        tamper("t1", drop_table=False)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def dask_log_lines(result: subprocess.CompletedProcess) -> list[str]:
    """Lines of Dask's own logs (``<time> - distributed.<module> - <LEVEL> - ...``) in a run's
    stderr, less the nanny's note of a worker slow to exit, which any run's end may show on a
    loaded machine."""
    return [
        line
        for line in result.stderr.splitlines()
        if " - distributed." in line and "Worker process still alive after" not in line
    ]


def hidden_work(out: Path) -> list[str]:
    """Working folders, scratch files and reserves left in a run's folder (its lock files aside)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name not in (".run.lock", ".lock"))


@pytest.fixture(scope="module")
def disk_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """Three slides whose outputs take ~0.6 MB each and whose QC ~11 MB, and their outputs made on
    a disk with room (the reference a run on a full disk must end with)."""
    folder = tmp_path_factory.mktemp("disk_cohort")
    synthetic_slide_cohort(folder, 3, 1500, 1300, seed=7, prefix="d")
    from pipeline.testing import build_blob_model

    build_blob_model(folder / "blob.onnx")
    result = run_cli(
        str(folder / "manifest.csv"), "--out", str(folder / "ref"), "--model", str(folder / "blob.onnx"),
        "--tile-px", "256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, {s: output_digest(folder / "ref" / "slides" / s) for s in ("d0", "d1", "d2")}


@pytest.mark.slow
def test_full_disk_ends_the_run_with_one_error_and_a_rerun_finishes(
    disk_cohort: tuple[Path, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    """A real full disk (a small tmpfs): while slides are written, then while the QC is, the run
    stops with one ``error:`` line, exit 2, a final run.json and no working folder left; once
    space is freed the same command finishes with the outputs a roomy disk gives (before: a raw
    traceback, run.json at "running" and hidden folders left; the QC's exit 0 with "QC tables and
    report" printed and review sheets without patches)."""
    folder, reference = disk_cohort
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "out"
        args = [
            str(folder / "manifest.csv"),
            "--out",
            str(out),
            "--model",
            str(folder / "blob.onnx"),
            "--tile-px",
            "256",
        ]
        for size, stage in (("1500k", "slides"), ("4m", "qc")):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)
            full = run_cli(*args)
            assert full.returncode == 2, full.stderr[-3000:]
            assert "Traceback (most recent call last)" not in full.stderr, full.stderr[-3000:]
            assert not dask_log_lines(full), full.stderr[-3000:]  # no worker's traceback, no note of Dask's
            errors = error_lines(full)
            assert len(errors) == 1 and "the disk is full" in errors[0] and "rerun the same command" in errors[0]
            assert "No space left on device" in errors[0]
            run = json.loads((out / "run.json").read_text())
            assert run["status"] == "error" and run["finished"] and "disk is full" in run["error"]
            assert hidden_work(out) == []
            assert "QC tables and report" not in full.stderr
            if stage == "slides":
                assert "FAILED" not in full.stderr  # no slide is blamed for the disk
                assert not any((out / "slides" / s / "stats.json").exists() for s in ("d1", "d2"))
            else:
                assert "the QC tables could not be written" in errors[0]
                assert all(run["slides"][s]["status"] == "ok" for s in ("d0", "d1", "d2"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = run_cli(*args)
        assert rerun.returncode == 0 and not error_lines(rerun), rerun.stderr[-3000:]
        assert "QC tables and report" in rerun.stderr
        assert json.loads((out / "run.json").read_text())["status"] == "ok"
        assert {s: output_digest(out / "slides" / s) for s in reference} == reference
        assert hidden_work(out) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


ENOSPC_AFTER = """
import errno, os
import pipeline.slide.segment as segment

_write, _calls = segment.write_tile_outputs, [0]


def write_tile_outputs(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] > int(os.environ["FILL_DISK_AFTER_TILES"]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "scratch")
    return _write(*args, **kwargs)


segment.write_tile_outputs = write_tile_outputs
"""


@pytest.mark.slow
def test_disk_filling_while_tiles_are_written_stops_the_run(
    disk_cohort: tuple[Path, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    """As above where no tmpfs can be mounted: the worker's tile writes fail with ENOSPC after
    its first 20 tiles (injected in the worker process through sitecustomize)."""
    folder, reference = disk_cohort
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(ENOSPC_AFTER)
    out = tmp_path / "out"
    args = [str(folder / "manifest.csv"), "--out", str(out), "--model", str(folder / "blob.onnx"), "--tile-px", "256"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "inject"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "FILL_DISK_AFTER_TILES": "20",
    }
    full = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args, "--no-progress", "--workers", "1", "--threads", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert full.returncode == 2, full.stderr[-3000:]
    errors = error_lines(full)
    assert len(errors) == 1 and "the disk is full" in errors[0] and "writing slide d" in errors[0], full.stderr[-3000:]
    assert "FAILED" not in full.stderr and "QC tables and report" not in full.stderr
    assert not dask_log_lines(full), full.stderr[-3000:]  # the workers leave it to the driver
    assert json.loads((out / "run.json").read_text())["status"] == "error"
    assert hidden_work(out) == []
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {s: output_digest(out / "slides" / s) for s in reference} == reference


@pytest.mark.slow
def test_a_model_returning_garbage_is_never_a_clean_ok(tmp_path: Path) -> None:
    """A model with the contract's names and metadata whose output is NaN fails every slide naming
    it (exit 1); one whose output is 1.0 everywhere gives slides flagged implausible, said so in the
    summary (before: both "ok", exit 0)."""
    from pipeline.testing import build_constant_model

    synthetic_slide_cohort(tmp_path, 1, 700, 600, seed=42, prefix="g")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id\n{tmp_path}/g0.svs,g0\n")
    for value, name in ((float("nan"), "nan"), (1.0, "one")):
        model = build_constant_model(tmp_path / f"{name}.onnx", value)
        result = run_cli(str(manifest), "--out", str(tmp_path / name), "--model", str(model), "--tile-px", "256")
        stats = json.loads((tmp_path / name / "slides" / "g0" / "stats.json").read_text())
        if name == "nan":
            assert result.returncode == 1, result.stderr[-3000:]
            assert stats["status"] == "failed" and "nan.onnx: the model's output 'prob' holds NaN" in stats["error"]
            assert "0 ok, 1 failed" in result.stdout
            assert "Compute Failed" not in result.stderr, result.stderr[-3000:]  # the driver's line, no traceback
        else:
            assert result.returncode == 0, result.stderr[-3000:]
            assert stats["status"] == "ok" and "implausible_nuclei" in stats["flags"]
            assert "1 ok (1 with implausible nuclei), 0 failed" in result.stdout
            assert "implausible g0: mean nucleus area" in result.stdout
