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
from pipeline.testing import build_blob_model, synthetic_slide_image, write_pyramidal_tiff

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
        [*RUN_PACKAGES, "onnx", "torch", "pandas", "pillow", "wsidicom", "geopandas", "shapely", "openslide-python"]
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
