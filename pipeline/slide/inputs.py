"""The inputs that determine a slide's outputs, recorded in its stats.json (``inputs``) when it
is planned and compared by a rerun before it skips the slide as complete.

The slide file is known by its size and modification time (a rename or a move keeps both; a
copy, a rescan or an edit changes them; a slide that is a folder of DICOM instances, by the
total size and the latest modification of its files); the manifest's mpp override; the model's sha256; and
the settings that change outputs (``config.OUTPUT_FIELDS``); and the revision of the segmentation
method (``SEGMENTATION_REVISION``), so that a cohort resumed by a version whose nuclei differ for
the same slide, model and settings is redone, not left half one method and half the other.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from pipeline.config import EXTRA_OUTPUT_FIELDS, OUTPUT_FIELDS, Config

# The segmentation method's revision: raised when the same slide, model and settings give other
# nuclei. Inputs recorded without one are revision 1.
#   1: each tile resampled its own window to the model's resolution (208-px halo)
#   2: every tile samples one slide-wide grid of model pixels (a resampled slide's nuclei no longer
#      depend on the tiling); halo 176 px with the shipped model
# How nuclei.parquet stores the same nuclei is not a revision: a table that holds the outline twice
# (``polygon`` and ``geometry``, coordinates as traced) and one that holds it once (on a 1/8 px
# grid, without the vertices that change no pixel) give the same ids, areas, label map and QC tables,
# within 3/16 px the same centroids, and are read alike by the QC and the export, so a cohort
# resumed across the change keeps the slides it finished.
SEGMENTATION_REVISION = 2


def slide_inputs(
    slide_path: str | Path, manifest_mpp: float | None, model_sha256: str, config: Config
) -> dict[str, Any]:
    """The record of what a slide's outputs are made from (raises OSError when the file is gone).

    Parameters
    ----------
    slide_path : str or Path
        The slide file.
    manifest_mpp : float or None
        The resolution the manifest states for it, in µm per level-0 px; None when it states none.
    model_sha256 : str
        SHA-256 of the model file.
    config : Config
        The run's settings; those that change outputs (``config.OUTPUT_FIELDS``) are recorded.

    Returns
    -------
    dict
        JSON-ready record: the slide's path, size in bytes and modification time in ns, the
        manifest's mpp, the model's hash, the output settings and ``SEGMENTATION_REVISION``.

    Raises
    ------
    OSError
        When the slide file is gone.
    """
    size, mtime_ns = _size_and_mtime(slide_path)
    return {
        "slide_path": str(slide_path),
        "slide_bytes": size,
        "slide_mtime_ns": mtime_ns,
        "manifest_mpp": manifest_mpp,
        "model_sha256": model_sha256,
        "config": {name: getattr(config, name) for name in OUTPUT_FIELDS},
        "segmentation_revision": SEGMENTATION_REVISION,
    }


def _size_and_mtime(slide_path: str | Path) -> tuple[int, int]:
    """A file's size and modification time; for a folder (a DICOM series), its files' total
    size and latest modification (a level added, removed or rewritten changes one of them)."""
    st = os.stat(slide_path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime_ns
    size, mtime_ns = 0, st.st_mtime_ns
    with os.scandir(slide_path) as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                est = entry.stat()
                size, mtime_ns = size + est.st_size, max(mtime_ns, est.st_mtime_ns)
    return size, mtime_ns


def changed_inputs(recorded: Any, current: dict[str, Any]) -> str | None:
    """None when ``current`` inputs are those ``recorded``; else what changed, in words.

    >>> from pipeline.config import Config
    >>> a = {"slide_path": "a.svs", "slide_bytes": 10, "slide_mtime_ns": 1, "manifest_mpp": None,
    ...      "model_sha256": "ab" * 32, "config": {"stain": "reinhard"}}
    >>> changed_inputs(a, dict(a)) is None
    True
    >>> changed_inputs(a, {**a, "slide_path": "moved/a.svs"}) is None  # same file, moved
    True
    >>> changed_inputs(a, {**a, "manifest_mpp": 0.5, "config": {"stain": "macenko"}})
    "the manifest's mpp is 0.5 (it was None); stain='macenko' (it was 'reinhard')"

    A file made on request (``EXTRA_OUTPUT_FIELDS``) that is no longer asked for changes nothing:

    >>> b = {**a, "config": {"write_geojson": True}}
    >>> changed_inputs(b, {**b, "config": {"write_geojson": False}}) is None
    True
    >>> changed_inputs(b, {**b, "config": {"write_csv": True}})
    'write_csv=True (it was None)'
    >>> changed_inputs(a, {**a, "segmentation_revision": 2})
    'its nuclei were made by an earlier revision of the segmentation (1; this is 2)'
    """
    if not isinstance(recorded, dict):
        return "its stats.json does not record the inputs it was made from (written by an older version)"
    reasons = []
    if (recorded.get("slide_bytes"), recorded.get("slide_mtime_ns")) != (
        current["slide_bytes"],
        current["slide_mtime_ns"],
    ):
        reasons.append(
            f"the slide file {current['slide_path']} is not the one it was made from "
            f"({current['slide_bytes']} bytes now, {recorded.get('slide_bytes')} then, or modified since)"
        )
    if recorded.get("manifest_mpp") != current["manifest_mpp"]:
        reasons.append(f"the manifest's mpp is {current['manifest_mpp']} (it was {recorded.get('manifest_mpp')})")
    if recorded.get("model_sha256") != current["model_sha256"]:
        was = str(recorded.get("model_sha256"))[:12]
        reasons.append(f"the model is another one (sha256 {current['model_sha256'][:12]}…, it was {was}…)")
    made_by, now = recorded.get("segmentation_revision", 1), current.get("segmentation_revision", 1)
    if made_by != now:
        which = "an earlier" if isinstance(made_by, int) and made_by < now else "another"
        reasons.append(f"its nuclei were made by {which} revision of the segmentation ({made_by}; this is {now})")
    recorded_config = recorded.get("config")
    settings: dict[str, Any] = recorded_config if isinstance(recorded_config, dict) else {}
    for name, value in current["config"].items():
        if name in EXTRA_OUTPUT_FIELDS and not value:
            continue
        if settings.get(name) != value:
            reasons.append(f"{name}={value!r} (it was {settings.get(name)!r})")
    return "; ".join(reasons) or None
