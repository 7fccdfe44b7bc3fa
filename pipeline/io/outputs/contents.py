"""What a published slide folder holds: recorded in its stats.json when it is published
(``outputs``), checked by a rerun before the slide is skipped as complete.

Each entry of the folder but stats.json is recorded: a file with its size and sha256, a folder
(``maps.zarr``) with its number of files, their total size and one sha256 over the sorted
relative paths, sizes and checksums of its files. A rerun always compares what is cheap
(presence, sizes, file counts) and, on request, the checksums (which reads every byte again).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.io.outputs.maps import MAPS_DIR
from pipeline.io.outputs.stats import STATS_FILE
from pipeline.io.outputs.tables import PRIMARY, TABLE_FILES, run_formats

_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _tree_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _tree_record(folder: Path, checksums: bool) -> dict[str, Any]:
    files = _tree_files(folder)
    record: dict[str, Any] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    if checksums:
        digest = hashlib.sha256()
        for p in files:
            digest.update(f"{p.relative_to(folder).as_posix()}\t{p.stat().st_size}\t{file_sha256(p)}\n".encode())
        record["sha256"] = digest.hexdigest()
    return record


def _record(path: Path, checksums: bool) -> dict[str, Any]:
    if path.is_dir():
        return _tree_record(path, checksums)
    record: dict[str, Any] = {"bytes": path.stat().st_size}
    if checksums:
        record["sha256"] = file_sha256(path)
    return record


def folder_contents(folder: Path) -> dict[str, dict[str, Any]]:
    """What ``folder`` holds, for its stats.json: every entry but stats.json and hidden names.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "nuclei.csv").write_text("a,b\\n")
    >>> (folder / "maps.zarr").mkdir(); _ = (folder / "maps.zarr" / "zarr.json").write_text("{}")
    >>> contents = folder_contents(folder)
    >>> contents["nuclei.csv"]["bytes"], contents["maps.zarr"]["files"], contents["maps.zarr"]["bytes"]
    (4, 1, 2)
    >>> check_contents(folder, contents, checksums=True) is None
    True
    >>> _ = (folder / "nuclei.csv").write_text("")
    >>> check_contents(folder, contents)
    'nuclei.csv has 0 bytes, 4 were published'
    """
    return {
        p.name: _record(p, checksums=True)
        for p in sorted(folder.iterdir())
        if p.name != STATS_FILE and not p.name.startswith(".")
    }


def check_contents(folder: Path, recorded: Any, checksums: bool = False, required: Iterable[str] = ()) -> str | None:
    """None when ``folder`` still holds what ``recorded`` says was published, and ``recorded``
    names every one of ``required`` (what the pipeline knows a finished slide holds, whatever its
    record says); else what differs.

    Parameters
    ----------
    folder : Path
        A published slide folder.
    recorded : Any
        The ``outputs`` entry of its stats.json: file or folder name → size (and sha256).
    checksums : bool
        Also compare sha256 digests (slower: every byte is read), not sizes alone.
    required : iterable of str
        Names a finished slide must hold under the run's settings.

    Returns
    -------
    str or None
        None when all holds; else the first difference, in words.
    """
    if not isinstance(recorded, dict) or not recorded:
        return "its stats.json does not record what the folder holds (written by an older version)"
    reason = _unrecorded_requirement(folder, recorded, required)
    if reason is not None:
        return reason
    for name, expected in recorded.items():
        reason = _check_entry(folder / name, name, expected, checksums)
        if reason is not None:
            return reason
    return None


def _unrecorded_requirement(folder: Path, recorded: dict[str, Any], required: Iterable[str]) -> str | None:
    """The first of ``required`` that the record leaves out, said as what a person should know:
    missing from the folder too, or present but never recorded (so its size cannot be trusted)."""
    for name in required:
        if name not in recorded:
            if not (folder / name).exists():
                return f"{name} is missing"
            return f"its stats.json does not record {name}, which every finished slide holds"
    return None


def _check_entry(path: Path, name: str, expected: Any, checksums: bool) -> str | None:
    """None when the entry ``path`` is what its record ``expected`` says (a file or a folder,
    its file count, size and, on request, checksum); else what differs. Presence and kind are
    checked before the entry is read, so that a missing or replaced entry is named as such rather
    than as a read error."""
    if not path.exists():
        return f"{name} is missing"
    if not isinstance(expected, dict):
        return f"the record of {name} in stats.json is not readable"
    is_tree = "files" in expected
    if is_tree != path.is_dir():
        return f"{name} is a {'file' if is_tree else 'folder'} now"
    try:
        found = _record(path, checksums)
    except OSError as exc:
        return f"{name} cannot be read: {exc}"
    if is_tree and found["files"] != expected.get("files"):
        return f"{name} holds {found['files']} files, {expected.get('files')} were published"
    if found["bytes"] != expected.get("bytes"):
        return f"{name} has {found['bytes']} bytes, {expected.get('bytes')} were published"
    if checksums and found.get("sha256") != expected.get("sha256"):
        return f"{name} does not match its published checksum (sha256)"
    return None


def required_outputs(config: object) -> tuple[str, ...]:
    """What every slide finished by a run with ``config`` holds, besides stats.json: the label
    map and each nucleus table the run writes. The pipeline's to know, not the record's: a rerun
    checks these are present and recorded before it trusts a slide as complete.

    >>> from pipeline.config import Config
    >>> required_outputs(Config()), required_outputs(Config(write_csv=True))
    (('maps.zarr', 'nuclei.parquet'), ('maps.zarr', 'nuclei.parquet', 'nuclei.csv'))
    """
    return (MAPS_DIR, *(TABLE_FILES[f] for f in run_formats(config)))


def table_rows(folder: Path) -> int:
    """The number of nuclei in a slide folder's primary table (from its footer: no rows read)."""
    import pyarrow.parquet as pq

    return int(pq.read_metadata(folder / TABLE_FILES[PRIMARY]).num_rows)


def check_published(folder: Path, stats: dict[str, Any], config: object, checksums: bool = False) -> str | None:
    """None when a finished slide's folder holds what a run with ``config`` requires, what its
    stats.json records (sizes, and checksums on request) and as many nuclei as its stats.json
    counts; else what differs. Counts reported from stats.json are then the table's own.

    Parameters
    ----------
    folder : Path
        A published slide folder.
    stats : dict
        Its stats.json.
    config : Config
        The run's settings (which outputs a finished slide must hold).
    checksums : bool
        Also compare sha256 digests, not sizes alone.

    Returns
    -------
    str or None
        None when all holds; else the first difference, in words.
    """
    reason = check_contents(folder, stats.get("outputs"), checksums, required_outputs(config))
    return reason if reason is not None else check_count(folder, stats.get("n_nuclei"))


def check_count(folder: Path, counted: Any) -> str | None:
    """None when a slide folder's nucleus table holds ``counted`` nuclei (its stats.json's
    ``n_nuclei``); else what differs."""
    try:
        rows = table_rows(folder)
    except FileNotFoundError:
        return f"{TABLE_FILES[PRIMARY]} is missing"
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        return f"{TABLE_FILES[PRIMARY]} cannot be read: {exc}"
    if counted != rows:
        shown = f"{counted:,}" if isinstance(counted, int) else repr(counted)
        return f"its stats.json counts {shown} nuclei, {TABLE_FILES[PRIMARY]} holds {rows:,}"
    return None


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (and ``folder`` itself) to disk."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
