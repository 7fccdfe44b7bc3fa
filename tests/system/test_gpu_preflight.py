"""The GPU run's checks that need no GPU (benchmarks/gpu/gpu_preflight.py): the wheel folder holds
exactly the pinned wheels, every carried wheel's dependencies are met, the carry is measured."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu" / "gpu_preflight.py"
CARRY_LIMIT = 64 * 1024 * 1024  # what one device call may carry


def preflight(*args: object) -> subprocess.CompletedProcess:
    """The checks' command line, as the device run calls it."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def problems(done: subprocess.CompletedProcess) -> list[str]:
    return [line.removeprefix("PROBLEM: ") for line in done.stdout.splitlines() if line.startswith("PROBLEM: ")]


def fake_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_the_wheel_list_pins_everything_and_carries_no_cucim(tmp_path: Path) -> None:
    missing = problems(preflight("wheels", "--dir", tmp_path))  # an empty folder: every pin is missing
    pins = dict(re.fullmatch(r"missing wheel: (\S+)==(\S+)", p).groups() for p in missing)
    assert pins and len(pins) == len(missing)  # every pin has its version
    assert "google-crc32c" in pins and "crc32c" not in pins  # zarr 3.1 imports google_crc32c
    assert not any(name.startswith("cucim") for name in pins)
    assert re.search(
        r"^#\s*not-carried:\s*cucim-cu13\b", (ROOT / "benchmarks" / "gpu" / "gpu_wheels.txt").read_text(), re.M
    )
    assert "numpy==2.5.2" in preflight("dry-run-base").stdout.split()


def test_wheel_folder_must_hold_exactly_the_pins(tmp_path: Path) -> None:
    listing = tmp_path / "wheels.txt"
    listing.write_text("zarr==3.1.6   # comment\ngoogle-crc32c==1.9.0\n")
    check = ("wheels", "--dir", tmp_path, "--list", listing)
    fake_wheel(tmp_path, "zarr", "3.1.6")
    assert problems(preflight(*check)) == ["missing wheel: google-crc32c==1.9.0"]
    fake_wheel(tmp_path, "google_crc32c", "1.9.0")
    done = preflight(*check)
    assert done.returncode == 0 and problems(done) == []
    fake_wheel(tmp_path, "google_crc32c", "1.8.0")
    fake_wheel(tmp_path, "bokeh", "3.9.0")
    done = preflight(*check)
    assert done.returncode == 1
    assert any("several versions of google-crc32c" in p for p in problems(done))
    assert any("not in wheels.txt: bokeh" in p for p in problems(done))


def test_closure_finds_the_missing_dependency(tmp_path: Path) -> None:
    """The failure the first dry run found: zarr needs google-crc32c; crc32c was carried instead."""
    listing = tmp_path / "wheels.txt"
    listing.write_text("zarr==3.1.6\ncrc32c==2.7\n# not-carried: bokeh  dashboard only\n")
    image = tmp_path / "image.txt"
    image.write_text("numpy==2.5.2\npackaging\n")
    fake_wheel(
        tmp_path,
        "zarr",
        "3.1.6",
        ["google-crc32c>=1.5", "numpy>=2.0", "packaging>=22", 'importlib_metadata; python_version < "3.12"'],
    )
    fake_wheel(tmp_path, "crc32c", "2.7")
    fake_wheel(tmp_path, "rapids_dask_dependency", "26.10.0", ["bokeh<3.10", "numpy<2"])
    check = ("closure", "--dir", tmp_path, "--list", listing, "--image", image)
    done = preflight(*check)
    assert "closure: 5 requirements of 3 wheels checked" in done.stdout  # python < 3.12 does not apply there
    found = problems(done)
    assert any("needs google-crc32c>=1.5: neither carried nor on the device image" in p for p in found)
    assert any("needs numpy<2, the device image has 2.5.2" in p for p in found)
    assert len(found) == 2  # bokeh is named as not carried
    fake_wheel(tmp_path, "google_crc32c", "1.9.0")
    assert len(problems(preflight(*check))) == 1


def test_carry_counts_the_tree_and_the_wheels(tmp_path: Path) -> None:
    """What a device call sends: tracked files and untracked ones git does not ignore, plus the
    carried wheels; measured on a known tree, so files a user keeps in the checkout do not count."""
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / ".gitignore").write_text(".venv/\n")  # 7 B
    (tree / "pkg" / "tracked.py").write_bytes(b"x" * 1000)
    (tree / "notes.txt").write_bytes(b"y" * 300)  # untracked, not ignored: sent too
    (tree / ".venv").mkdir()
    (tree / ".venv" / "big.bin").write_bytes(b"z" * 50_000)  # ignored: not sent
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run(["git", "-C", str(tree), "add", ".gitignore", "pkg/tracked.py"], check=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = fake_wheel(wheels, "zarr", "3.1.6").stat().st_size
    carry = ["carry", "--dir", wheels, "--root", tree]
    done = preflight(*carry)
    assert done.returncode == 0 and "tree_bytes=1307 (3 files)" in done.stdout
    assert preflight(*carry, "--limit", 1307 + wheel + 1).returncode == 0
    assert preflight(*carry, "--limit", 1307 + wheel).returncode == 1


def test_the_repository_fits_a_device_call() -> None:
    """The tracked files alone (the shipped model is most of them) leave room for the wheels."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True)
    paths = [ROOT / rel.decode() for rel in listed.stdout.split(b"\0") if rel]
    tracked = sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())
    assert 7_000_000 < tracked < CARRY_LIMIT // 2


def test_the_device_run_checks_modules_that_exist() -> None:
    """Every pipeline module the device run must import exists here (a renamed module left in its
    list would fail the one device call, after the minutes it takes to start)."""
    import importlib.util

    script = (ROOT / "benchmarks" / "gpu" / "gpu_device_run.sh").read_text()
    listed = re.findall(r"\bpipeline(?:\.\w+)+", "".join(re.findall(r"REQUIRED\+?=(\S+)", script)))
    assert len(listed) >= 8
    missing = [name for name in listed if importlib.util.find_spec(name) is None]
    assert not missing, f"gpu_device_run.sh imports modules that do not exist: {missing}"
