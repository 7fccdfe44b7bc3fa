"""Shared fixtures: generated slides and a contract-conformant test model; real data opt-in."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.run import PACKAGES as RUN_PACKAGES  # what run.json records
from pipeline.io.annotations import DATA_DIR_VARIABLE, data_dir

# The tests' data, unless $NUCLEI_DATA_DIR names it: a `shared/data` folder beside the checkout
# (where CI puts it). Set here, before any test module reads it; subprocesses inherit it.
os.environ.setdefault(DATA_DIR_VARIABLE, str(Path(__file__).resolve().parents[2] / "shared" / "data"))
from pipeline.testing import build_blob_model, synthetic_slide_cohort, synthetic_slide_image, write_pyramidal_tiff

ROOT = Path(__file__).resolve().parents[1]  # the checkout
SHARED_DATA = data_dir()
WSI_FIXTURES = SHARED_DATA / "wsi_fixtures"


def gpu_present() -> bool:
    from pipeline.kernels.dispatch import gpu_available

    return gpu_available()


def pytest_configure(config: pytest.Config) -> None:
    """Tests that need PyTorch skip without it (the README's light install); CI installs it and
    sets NUCLEI_REQUIRE_TORCH=1 so that they cannot skip there unnoticed."""
    if os.environ.get("NUCLEI_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise pytest.UsageError(
                f"NUCLEI_REQUIRE_TORCH=1 but PyTorch is not installed ({exc}): its tests would skip"
            ) from None


# What the results depend on: printed at the end of every test run (quiet ones and CI's included),
# so a failure can be matched to the versions that produced it.
REPORTED_PACKAGES = tuple(
    dict.fromkeys(
        [
            *RUN_PACKAGES,
            "onnx",
            "torch",
            "pandas",
            "pillow",
            "wsidicom",
            "geopandas",
            "shapely",
            "duckdb",
            "openslide-python",
        ]
        + ["ruff"]
    )
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} -"

    terminalreporter.write_line("versions: " + ", ".join(installed(name) for name in REPORTED_PACKAGES))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_present():
        return
    skip = pytest.mark.skip(reason="no CUDA device present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def blob_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blob_model(tmp_path_factory.mktemp("model") / "blob.onnx")


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A 1100×900 px pyramidal JPEG TIFF at 0.25 µm/px with ~1,000 known nuclei."""
    image, nuclei = synthetic_slide_image(1100, 900, seed=3)
    path = tmp_path_factory.mktemp("slides") / "synthetic.svs"
    write_pyramidal_tiff(path, image, mpp=0.25, compression="jpeg")
    return path, nuclei


@pytest.fixture(scope="session")
def synthetic_image() -> tuple[np.ndarray, list]:
    return synthetic_slide_image(700, 600, seed=5, tissue="full")


def need_shared(*names: str) -> Path:
    for name in names:
        if not (WSI_FIXTURES / name).exists() and not (SHARED_DATA / name).exists():
            pytest.skip(f"{name} is not in the data folder {SHARED_DATA} (set {DATA_DIR_VARIABLE})")
    return SHARED_DATA


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


def bounded_cli(module: str, *args: str, timeout: float = 120, memory_gb: float = 3) -> subprocess.CompletedProcess:
    """``python -m module args`` in a process of bounded memory and time: an unbounded read (of
    /dev/zero, a FIFO without a writer) fails the test instead of the machine. Raises
    ``subprocess.TimeoutExpired`` for a command that hangs."""
    import resource

    limit = int(memory_gb * 2**30)

    def bound() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=bound,
    )


def special_file(kind: str, tmp_path: Path) -> Path:
    """A path that is no regular file: a FIFO without a writer, /dev/zero, /dev/urandom, a folder."""
    if kind == "fifo":
        path = tmp_path / "fifo.csv"
        os.mkfifo(path)
        return path
    if kind == "folder":
        path = tmp_path / "folder.csv"
        path.mkdir()
        return path
    return Path(kind)


SPECIAL_FILES = ("fifo", "/dev/zero", "/dev/urandom", "folder")


# Helpers of the fault tests, shared by the modules whose faults they inject.


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
    """Three small generated slides (one tile each at --tile-px 256) and their manifest. A module
    that needs other slides defines a ``cohort`` of its own, which takes precedence."""
    folder = tmp_path_factory.mktemp("fault_cohort")
    synthetic_slide_cohort(folder, 3, 300, 300, seed=40, prefix="s")
    return folder


def manifest_of(tmp_path: Path, rows: list[str], header: str = "slide_path,slide_id,cancer_type") -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def wait_for(predicate, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def listening_addresses(pids: list[int]) -> set[str]:
    import psutil

    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.add(conn.laddr.ip)
    return found


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
