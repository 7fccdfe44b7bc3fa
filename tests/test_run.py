"""``python -m pipeline.run`` end to end on a local Dask cluster of worker processes: bad slides
fail alone, reruns recompute nothing, a killed run resumes to the same outputs and never shows
a half-written slide folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.testing import synthetic_slide_cohort
from tests.conftest import WSI_FIXTURES, need_shared

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args, "--no-progress", "--workers", "1", "--threads", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_digest(slide_dir: Path) -> dict[str, str]:
    """Hashes of what must not depend on how the run went: nuclei, label chunks, stats."""
    import zarr

    out = {}
    out["nuclei.parquet"] = hashlib.sha256((slide_dir / "nuclei.parquet").read_bytes()).hexdigest()
    labels = zarr.open_array(str(slide_dir / "maps.zarr" / "labels" / "0"), mode="r")[:]
    out["labels"] = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    stats = json.loads((slide_dir / "stats.json").read_text())
    for volatile in ("seconds", "stage_seconds"):
        stats.pop(volatile)
    out["stats"] = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()
    return out


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
