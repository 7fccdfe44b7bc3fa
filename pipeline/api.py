"""The Python API, for notebooks: segment slides and read what a run wrote.

::

    from pipeline import read_labels, read_nuclei, read_qc, segment_slides

    results = segment_slides("manifest.csv", "results/")   # or a list of slide paths; client=your Client
    results.slides                                          # one row per slide: status, n_nuclei, error
    nuclei = read_nuclei("results/", "TCGA-XX-0001", bbox=(0, 0, 2048, 2048))
    labels = read_labels("results/", "TCGA-XX-0001", level=2)
    tables = read_qc("results/").wsi_qc

``segment_slides`` is the run of ``python -m pipeline.run`` (the same settings, resume, outputs,
run.json and QC), with the progress bars drawn in the notebook; the readers open a run's
folder as other tools do (GeoParquet, OME-NGFF labels, the QC tables' CSV files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.cli.run import EXIT_OK, SetupError, run_cohort
from pipeline.config import load_config
from pipeline.io.outputs.publish import final_slide_dir, read_published_stats, slides_dir
from pipeline.io.outputs.read import open_label_level, read_nucleus_table, region
from pipeline.io.outputs.status import SlideStatus
from pipeline.io.outputs.tables import TABLE_FILES
from pipeline.manifest import SAFE_ID, ManifestError, entries_from_paths, read_manifest
from pipeline.qc import build_qc, read_qc_tables
from pipeline.runtime import ModelError, model_summary

__all__ = [  # in the order docs/api.md shows them
    "segment_slides",
    "read_nuclei",
    "read_labels",
    "read_qc",
    "SegmentationResults",
    "QCTables",
    "RunFolderError",
    "SetupError",
    "ManifestError",
    "ModelError",
]

PathLike = str | os.PathLike[str]
# What segment_slides says about each slide (stats.json's fields, plus whether it was already done).
RESULT_COLUMNS = ("slide_id", "cancer_type", "status", "n_nuclei", "tissue_mm2", "nuclei_per_mm2", "seconds")


class RunFolderError(ValueError):
    """A folder that is not a run's output folder, a slide it does not hold, or a slide with
    nothing to read (it failed); the message names the folder or the slide and the problem."""


@dataclass(frozen=True, eq=False)
class SegmentationResults:
    """What :func:`segment_slides` ended with (shown as its table in a notebook).

    Attributes
    ----------
    out : Path
        The run's output folder.
    status : str
        run.json's final state: ``ok`` or ``failed slides``.
    exit_code : int
        What ``python -m pipeline.run`` exits with: 0 every slide ok, 1 some failed.
    slides : pandas.DataFrame
        One row per slide, in the order given: ``slide_id``, ``cancer_type``, ``status`` (ok or
        failed), ``n_nuclei``, ``tissue_mm2``, ``nuclei_per_mm2``, ``seconds``, ``skipped`` (True
        when the slide was already complete and kept) and ``error`` (why a slide failed).
    """

    out: Path
    status: str
    exit_code: int
    slides: pd.DataFrame

    @property
    def ok(self) -> bool:
        """True when every slide is ok."""
        return self.exit_code == EXIT_OK

    @property
    def failed(self) -> list[str]:
        """The ids of the slides that failed."""
        return self.slides.loc[self.slides["status"] != SlideStatus.OK, "slide_id"].tolist()

    def _summary(self) -> str:
        n_ok = int((self.slides["status"] == SlideStatus.OK).sum())
        nuclei = int(self.slides["n_nuclei"].fillna(0).sum())
        return f"{n_ok} of {len(self.slides)} slides ok, {nuclei:,} nuclei → {self.out}"

    def __repr__(self) -> str:
        return f"SegmentationResults({self._summary()})\n{self.slides.to_string(index=False)}"

    def _repr_html_(self) -> str:
        return f"<p>{self._summary()}</p>" + self.slides.to_html(index=False, na_rep="")


@dataclass(frozen=True, eq=False)
class QCTables:
    """The QC tables of a run (``DIR/qc/``), with the paper's column names.

    Attributes
    ----------
    folder : Path
        The qc folder; ``report.html`` in it is the page for the pathologist.
    slides : pandas.DataFrame
        CancerType, WSI-ID, QCResult.
    wsi_qc : pandas.DataFrame
        Per slide: NumNucleiSample, SizeOfNuclei-Average, SizeOfNuclei-Stddev, Note,
        SegmentationUnacceptableOrNot, VisualAssessmentComment, SelectedForReview, Status, MPP, ...
    random_region_check : pandas.DataFrame
        Per slide: NumOfUnacceptableSegRegions, NumOfSampledRegions, the share reviewed and the tier.
    tiers : pandas.DataFrame
        Slides per tier and cancer type (the paper's Table 2).
    thresholds : pandas.DataFrame
        Where each outer-percent cut lies, per cancer type and statistic.
    review_sheet : pandas.DataFrame
        One row per random review patch, ``Adequate`` to fill in.
    wsi_review_sheet : pandas.DataFrame
        The slides selected for visual review, the verdict to fill in.
    """

    folder: Path
    slides: pd.DataFrame
    wsi_qc: pd.DataFrame
    random_region_check: pd.DataFrame
    tiers: pd.DataFrame
    thresholds: pd.DataFrame
    review_sheet: pd.DataFrame
    wsi_review_sheet: pd.DataFrame


def segment_slides(
    manifest_or_paths: PathLike | Sequence[PathLike],
    out: PathLike,
    client: Any = None,
    *,
    config_file: PathLike | None = None,
    retry_failed: bool = False,
    verify_checksums: bool = False,
    qc_tables: bool = True,
    **settings: Any,
) -> SegmentationResults:
    """Segment every nucleus in every slide, as ``python -m pipeline.run`` does.

    The same run: slides already complete in ``out`` are skipped (while their outputs and inputs
    check out), the others are segmented on the Dask cluster, each slide's folder appears only
    when complete, a slide that cannot be read fails alone with its reason, run.json records
    everything and ends in a final state, and the QC tables are built at the end. Progress bars
    over slides and tiles are drawn in the notebook (``tqdm.auto``: widgets where ipywidgets is
    installed). Calling it again resumes.

    Parameters
    ----------
    manifest_or_paths : path or list of paths
        A manifest CSV (a ``.csv`` file: ``slide_path`` and the optional ``slide_id``,
        ``cancer_type``, ``mpp`` columns), or slide paths (one, or a list): each slide's id is its
        file name's stem and its cancer type ``UNKNOWN``.
    out : path
        The output folder (created when absent). One run at a time owns it.
    client : distributed.Client, optional
        Your Dask client: the slides run on its cluster and it is left open. Without one, a local
        cluster is started (a ``LocalCUDACluster`` where GPUs and dask-cuda are present) and
        closed at the end. With your client, the local-cluster settings (``n_workers``,
        ``threads_per_worker``, ``memory_limit``, ``dashboard``) do not apply, and how many worker
        deaths a slide survives is your scheduler's ``distributed.scheduler.allowed-failures``.
    config_file : path, optional
        A YAML file of settings, as ``--config``.
    retry_failed : bool
        Also redo the slides that failed before (``--retry-failed``).
    verify_checksums : bool
        Before skipping a finished slide, compare the sha256 of every file it holds
        (``--verify-checksums``).
    qc_tables : bool
        Build the QC tables at the end (``--no-qc`` turns it off).
    **settings
        Any field of :class:`pipeline.config.Config` (``model``, ``tile_px``, ``stain``,
        ``write_geojson``, ``device``, ``progress``, ...), checked as the command line's options are;
        they override ``config_file`` and the ``NUCLEI_*`` environment variables.

    Returns
    -------
    SegmentationResults
        The run's final state, its exit status and one row per slide (status, n_nuclei, error).

    Raises
    ------
    ValueError
        A setting that is unknown or out of range (the message names it), ``client`` given with
        the ``scheduler`` setting, a client that is not running.
    ManifestError
        A manifest or slide path list that cannot be used, naming each bad row or path.
    ModelError
        A model that does not meet the model contract.
    SetupError
        ``out`` in use by another run or not writable, or a cluster that cannot be started or
        reached.

    Examples
    --------
    ::

        results = segment_slides(["slides/A.svs", "slides/B.svs"], "results/", tile_px=2048)
        results.slides[["slide_id", "status", "n_nuclei", "error"]]
    """
    config = load_config(None if config_file is None else Path(config_file), settings, source="segment_slides")
    if client is not None:
        if config.scheduler:
            raise ValueError(
                f"segment_slides: give either a client or the scheduler setting ({config.scheduler!r}), not both"
            )
        status = str(getattr(client, "status", ""))
        if status != "running":
            raise ValueError(f"segment_slides: the client given is not running (its status is {status or 'unknown'})")
    source, entries = _slides(manifest_or_paths)
    model = model_summary(config.model or None, check=True)
    from tqdm.auto import tqdm

    result = run_cohort(
        entries,
        source,
        Path(out),
        config,
        model,
        retry_failed=retry_failed,
        verify_checksums=verify_checksums,
        qc=qc_tables,
        client=client,
        bar=tqdm,
    )
    rows = [{c: stats.get(c) for c in RESULT_COLUMNS} for stats in result.slides]
    for row, stats in zip(rows, result.slides, strict=True):
        row["skipped"] = stats["slide_id"] in result.skipped
        row["error"] = stats.get("error")
    table = pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "skipped", "error"])
    table["n_nuclei"] = table["n_nuclei"].astype("Int64")
    table["error"] = table["error"].astype("string")
    return SegmentationResults(Path(out), result.status, result.exit_code, table)


def _slides(manifest_or_paths: PathLike | Sequence[PathLike]) -> tuple[str, list[Any]]:
    """Where the slides come from (for run.json and the first line), and their entries."""
    if isinstance(manifest_or_paths, (str, os.PathLike)):
        path = Path(manifest_or_paths)
        if path.suffix.lower() == ".csv":
            return str(path), read_manifest(path)
        manifest_or_paths = [path]
    if not isinstance(manifest_or_paths, Sequence):
        raise ManifestError(
            f"segment_slides takes a manifest CSV or a list of slide paths, not a {type(manifest_or_paths).__name__}"
        )
    entries = entries_from_paths([Path(p) for p in manifest_or_paths])
    return "the slide paths given to segment_slides", entries


def read_nuclei(out: PathLike, slide_id: str, bbox: Sequence[float] | None = None, *, as_arrow: bool = False) -> Any:
    """The nuclei of one slide of a run, all of them or those in a region.

    Parameters
    ----------
    out : path
        The run's output folder.
    slide_id : str
        The slide's id (its folder under ``slides/``).
    bbox : (xmin, ymin, xmax, ymax), optional
        A region in level-0 pixels of the slide (x to the right, y down): the nuclei whose
        bounding box overlaps it, edges included. Only the row groups (tiles) whose boxes can
        overlap it are read (the GeoParquet bbox covering).
    as_arrow : bool
        Return a pyarrow Table even where geopandas is installed.

    Returns
    -------
    geopandas.GeoDataFrame or pyarrow.Table
        One row per nucleus: ``id`` (the label map's value), centroid, areas, perimeter,
        eccentricity, mean haematoxylin and the outline, ``geometry`` (a Polygon in level-0
        pixels, no CRS). A GeoDataFrame where geopandas is installed (the ``geo`` extra), else a
        pyarrow Table whose ``geometry`` holds WKB.

    Raises
    ------
    RunFolderError
        ``out`` is not a run's output folder, holds no slide ``slide_id``, or that slide failed.
    ValueError
        A ``bbox`` that is not four numbers with min ≤ max.
    """
    box = region(bbox) if bbox is not None else None
    folder = _slide_folder(out, slide_id)
    path = folder / TABLE_FILES["parquet"]
    if not path.is_file():
        raise RunFolderError(f"slide {slide_id!r}: {path} is missing")
    try:
        table = read_nucleus_table(path, box)
    except ValueError as exc:
        raise RunFolderError(f"slide {slide_id!r}: {exc}") from None
    return table if as_arrow else _geodataframe(table)


def _geodataframe(table: pa.Table) -> Any:
    """``table`` as a GeoDataFrame (``geometry`` from WKB, no CRS), or itself without geopandas."""
    try:
        import geopandas
    except ImportError:
        return table
    geometry = geopandas.GeoSeries.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False), crs=None)
    frame = table.drop_columns(["geometry"]).to_pandas()
    return geopandas.GeoDataFrame(frame, geometry=geometry.values, crs=None)


def read_labels(out: PathLike, slide_id: str, level: int = 0) -> Any:
    """The label map of one slide of a run, as a Dask array (nothing is read until computed).

    Parameters
    ----------
    out : path
        The run's output folder.
    slide_id : str
        The slide's id.
    level : int
        The pyramid level: 0 is the slide's own grid (level-0 pixels), each next level half as
        fine (level ``k``'s pixel ``i`` is level 0's pixel ``2**k * i``), down to a long side of
        at most 1024.

    Returns
    -------
    dask.array.Array
        uint32 nucleus ids (``read_nuclei``'s ``id``; 0 = no nucleus), shape (height, width) of
        that level, chunked as ``maps.zarr`` stores it (one tile core per chunk).

    Raises
    ------
    RunFolderError
        ``out`` is not a run's output folder, holds no slide ``slide_id``, that slide failed, or
        ``level`` is not one of its levels (the message says which there are).
    """
    import dask.array as da

    folder = _slide_folder(out, slide_id)
    try:
        array = open_label_level(folder, level)
    except ValueError as exc:
        raise RunFolderError(f"slide {slide_id!r}: {exc}") from None
    return da.from_zarr(array, name=f"labels-{slide_id}-{level}-{_token(folder)}")


def _token(folder: Path) -> str:
    """Distinguishes one publication of a slide from the next (a rerun replaces the folder)."""
    stat = (folder / "stats.json").stat()
    return f"{stat.st_mtime_ns:x}"


def read_qc(out: PathLike, rebuild: bool = False) -> QCTables:
    """The QC tables of a run, as DataFrames.

    Parameters
    ----------
    out : path
        The run's output folder.
    rebuild : bool
        Build the tables again first (as ``python -m pipeline.qc DIR`` does). They are built
        anyway when the run built none (``qc_tables=False``, ``--no-qc``).

    Returns
    -------
    QCTables
        ``slides``, ``wsi_qc``, ``random_region_check``, ``tiers``, ``thresholds``,
        ``review_sheet`` and ``wsi_review_sheet``, and the qc ``folder`` (with ``report.html``).

    Raises
    ------
    RunFolderError
        ``out`` is not a run's output folder.
    """
    root = _run_folder(out)
    qc_dir = root / "qc"
    if rebuild or not (qc_dir / "qc.json").is_file():
        build_qc(root, workers=min(4, os.cpu_count() or 1))
    return QCTables(qc_dir, **read_qc_tables(qc_dir))


def _run_folder(out: PathLike) -> Path:
    root = Path(out)
    if not slides_dir(root).is_dir():
        raise RunFolderError(f"{root} is not a run's output folder: it has no slides/ folder")
    return root


def _slide_folder(out: PathLike, slide_id: str) -> Path:
    """The published folder of ``slide_id`` in the run folder ``out``, when the slide is ok."""
    root = _run_folder(out)
    if not isinstance(slide_id, str) or not SAFE_ID.match(slide_id):
        raise RunFolderError(f"{slide_id!r} is not a slide id (letters, digits, '.', '_' or '-')")
    folder = final_slide_dir(root, slide_id)
    if not folder.is_dir():
        held = sorted(p.name for p in slides_dir(root).iterdir() if p.is_dir() and not p.name.startswith("."))
        listed = ", ".join(held[:10]) + (", …" if len(held) > 10 else "")
        raise RunFolderError(
            f"{root} holds no slide {slide_id!r} (" + (f"its {len(held)} slides: {listed})" if held else "none yet)")
        )
    stats = read_published_stats(root, slide_id)
    if stats is None:
        raise RunFolderError(f"slide {slide_id!r}: {folder / 'stats.json'} is missing or unreadable")
    if stats.get("status") != SlideStatus.OK:
        raise RunFolderError(f"slide {slide_id!r} failed, so it has no outputs: {stats.get('error')}")
    return folder
