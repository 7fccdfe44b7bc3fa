"""The GPU run's checks that need no GPU (benchmarks/gpu/gpu_preflight.py): the wheel folder holds
exactly the pinned wheels, every carried wheel's dependencies are met, the carry is measured."""

from __future__ import annotations

import importlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


@pytest.fixture(scope="module")
def preflight() -> Any:
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("gpu_preflight")
    finally:
        sys.path.remove(str(BENCHMARKS))


def fake_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_the_wheel_list_pins_everything_and_carries_no_cucim(preflight) -> None:
    pins, not_carried = preflight.read_list(preflight.WHEEL_LIST)
    assert pins and all(version for version in pins.values())
    assert "google-crc32c" in pins and "crc32c" not in pins  # zarr 3.1 imports google_crc32c
    assert not any(name.startswith("cucim") for name in pins) and "cucim-cu13" in not_carried
    assert "numpy==2.5.2" in preflight.dry_run_base()


def test_wheel_folder_must_hold_exactly_the_pins(preflight, tmp_path: Path) -> None:
    listing = tmp_path / "wheels.txt"
    listing.write_text("zarr==3.1.6   # comment\ngoogle-crc32c==1.9.0\n")
    fake_wheel(tmp_path, "zarr", "3.1.6")
    assert preflight.check_wheels(tmp_path, listing) == ["missing wheel: google-crc32c==1.9.0"]
    fake_wheel(tmp_path, "google_crc32c", "1.9.0")
    assert preflight.check_wheels(tmp_path, listing) == []
    fake_wheel(tmp_path, "google_crc32c", "1.8.0")
    fake_wheel(tmp_path, "bokeh", "3.9.0")
    problems = preflight.check_wheels(tmp_path, listing)
    assert any("several versions of google-crc32c" in p for p in problems)
    assert any("not in wheels.txt: bokeh" in p for p in problems)


def test_closure_finds_the_missing_dependency(preflight, tmp_path: Path) -> None:
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
    problems, checked = preflight.check_closure(tmp_path, listing, image)
    assert checked == 5  # the python < 3.12 marker does not apply on the device
    assert any("needs google-crc32c>=1.5: neither carried nor on the device image" in p for p in problems)
    assert any("needs numpy<2, the device image has 2.5.2" in p for p in problems)
    assert len(problems) == 2  # bokeh is named as not carried
    fake_wheel(tmp_path, "google_crc32c", "1.9.0")
    problems, _ = preflight.check_closure(tmp_path, listing, image)
    assert len(problems) == 1


def test_carry_counts_the_tree_and_the_wheels(preflight, tmp_path: Path) -> None:
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
    assert preflight.tree_bytes(tree) == (1307, 3)

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = fake_wheel(wheels, "zarr", "3.1.6").stat().st_size
    carry = ["carry", "--dir", str(wheels), "--root", str(tree)]
    assert preflight.main(carry) == 0
    assert preflight.main([*carry, "--limit", str(1307 + wheel + 1)]) == 0
    assert preflight.main([*carry, "--limit", str(1307 + wheel)]) == 1


def test_the_repository_fits_a_device_call(preflight) -> None:
    """The tracked files alone (the shipped model is most of them) leave room for the wheels."""
    listed = subprocess.run(["git", "-C", str(preflight.ROOT), "ls-files", "-z"], check=True, capture_output=True)
    paths = [preflight.ROOT / rel.decode() for rel in listed.stdout.split(b"\0") if rel]
    tracked = sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())
    assert 7_000_000 < tracked < preflight.CARRY_LIMIT // 2
