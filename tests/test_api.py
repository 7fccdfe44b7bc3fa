"""The Python API (pipeline.api): the run of ``python -m pipeline.run`` on a client of the user's
or on its own cluster, and the readers of a run's folder, on small generated slides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline
from pipeline.api import (
    ManifestError,
    QCTables,
    RunFolderError,
    SegmentationResults,
    read_labels,
    read_nuclei,
    read_qc,
    segment_slides,
)
from pipeline.testing import synthetic_slide_cohort
from tests.cli.test_run import run_cli
from tests.conftest import ROOT, output_digest

SETTINGS = {"tile_px": 256, "progress": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated slides and one missing file, in a manifest."""
    folder = tmp_path_factory.mktemp("api_cohort")
    manifest = synthetic_slide_cohort(folder, 2, 1100, 600, seed=30, prefix="a", cancer_types=("LUAD",))
    manifest.write_text(manifest.read_text() + "gone.svs,gone,LUAD\n")
    return manifest


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def run_dir(cohort: Path, blob_model: Path, client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api_run") / "out"
    results = segment_slides(cohort, out, client, model=str(blob_model), **SETTINGS)
    assert isinstance(results, SegmentationResults)
    return out


def test_segment_slides_on_the_users_client_resumes_and_leaves_it_open(
    run_dir: Path, cohort: Path, blob_model: Path, client
) -> None:
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed slides" and run["manifest"] == str(cohort)
    assert {k: v["status"] for k, v in run["slides"].items()} == {"a0": "ok", "a1": "ok", "gone": "failed"}
    assert client.status == "running"  # the user's client is not closed

    again = segment_slides(str(cohort), run_dir, client, model=str(blob_model), **SETTINGS)
    assert again.exit_code == 1 and again.status == "failed slides" and not again.ok
    table = again.slides.set_index("slide_id")
    assert table.index.tolist() == ["a0", "a1", "gone"]  # the manifest's order
    assert table.loc[["a0", "a1"], "status"].tolist() == ["ok", "ok"]
    assert (table.loc[["a0", "a1"], "n_nuclei"] > 100).all()
    assert table["skipped"].all()  # nothing recomputed
    assert again.failed == ["gone"] and "file not found" in table.loc["gone", "error"]
    assert pd_isna(table.loc["a0", "error"])
    assert "2 of 3 slides ok" in repr(again) and "<table" in again._repr_html_()


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


@pytest.mark.slow
def test_segment_slides_on_its_own_cluster_writes_what_the_command_line_writes(
    cohort: Path, blob_model: Path, run_dir: Path, tmp_path: Path
) -> None:
    """Without a client it starts (and closes) a local cluster; the outputs are those of
    ``python -m pipeline.run`` on the same manifest, and of the run on the user's client."""
    from distributed.deploy.spec import SpecCluster

    api_out, cli_out = tmp_path / "api", tmp_path / "cli"
    clusters_before = set(SpecCluster._instances)
    results = segment_slides(
        [cohort.parent / "a0.svs"],
        api_out,
        model=str(blob_model),
        n_workers=1,
        threads_per_worker=2,
        dashboard="off",
        **SETTINGS,
    )
    assert results.ok and results.exit_code == 0 and results.slides["status"].tolist() == ["ok"]
    assert json.loads((api_out / "run.json").read_text())["status"] == "ok"
    # the cluster it started is closed, its worker processes gone (a notebook calls it many times)
    started = set(SpecCluster._instances) - clusters_before
    assert all(c.status.name == "closed" for c in started)  # or gone: collected once closed
    manifest = tmp_path / "one.csv"
    manifest.write_text(f"slide_path,slide_id,cancer_type\n{cohort.parent / 'a0.svs'},a0,UNKNOWN\n")
    done = run_cli(str(manifest), "--out", str(cli_out), "--model", str(blob_model), "--tile-px", "256")
    assert done.returncode == 0, done.stderr[-2000:]
    assert output_digest(api_out / "slides" / "a0") == output_digest(cli_out / "slides" / "a0")
    digest = output_digest(run_dir / "slides" / "a0")
    # the user's run had the manifest's cancer type: all but stats.json agree
    assert {k: v for k, v in digest.items() if k != "stats"} == {
        k: v for k, v in output_digest(api_out / "slides" / "a0").items() if k != "stats"
    }


def test_settings_and_slides_are_checked_before_anything_is_written(tmp_path: Path, cohort: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"segment_slides: unknown setting 'tile_size' \(did you mean 'tile_px'\?\)"):
        segment_slides(cohort, out, tile_size=256)
    with pytest.raises(ValueError, match=r"tile_px=100 must be 0 \(derived\) or a multiple of 16"):
        segment_slides(cohort, out, tile_px=100)
    with pytest.raises(ValueError, match="segment_slides: progress='maybe' is not a yes/no value"):
        segment_slides(cohort, out, progress="maybe")
    with pytest.raises(ManifestError, match=r"path 2: slide_id 'a0' repeats path 1"):
        segment_slides([cohort.parent / "a0.svs", cohort.parent / "sub" / "a0.svs"], out)
    with pytest.raises(ManifestError, match="no slide paths given"):
        segment_slides([], out)
    with pytest.raises(ManifestError, match="manifest not found"):
        segment_slides(tmp_path / "nothing.csv", out)

    class Closed:
        status = "closed"

    with pytest.raises(ValueError, match="the client given is not running"):
        segment_slides(cohort, out, Closed())
    with pytest.raises(ValueError, match="either a client or the scheduler setting"):
        segment_slides(cohort, out, Closed(), scheduler="tcp://127.0.0.1:1")
    assert not out.exists()


def test_read_nuclei_in_a_region_uses_the_bbox_covering(run_dir: Path) -> None:
    import geopandas
    import pyarrow as pa
    import shapely

    every = read_nuclei(run_dir, "a0")
    assert isinstance(every, geopandas.GeoDataFrame) and every.crs is None
    stats = json.loads((run_dir / "slides" / "a0" / "stats.json").read_text())
    assert len(every) == stats["n_nuclei"]
    assert "polygon" not in every.columns and "bbox" not in every.columns
    assert every.geometry.is_valid.all() and (every.geometry.geom_type == "Polygon").all()

    box = (100, 150, 300.5, 320)
    part = read_nuclei(run_dir, "a0", bbox=box)
    bounds = every.geometry.bounds
    overlaps = (
        (bounds.maxx >= box[0]) & (bounds.minx <= box[2]) & (bounds.maxy >= box[1]) & (bounds.miny <= box[3])
    ).to_numpy()
    assert 0 < len(part) < len(every)
    assert sorted(part["id"]) == sorted(every.loc[overlaps, "id"])
    assert part.geometry.intersects(shapely.box(*box)).sum() >= 0.9 * len(part)

    table = read_nuclei(run_dir, "a0", bbox=box, as_arrow=True)
    assert isinstance(table, pa.Table) and sorted(table.column("id").to_pylist()) == sorted(part["id"])
    assert shapely.from_wkb(table.column("geometry").to_pylist()[0]).equals(
        part.set_index("id").geometry[table.column("id")[0].as_py()]
    )
    assert len(read_nuclei(run_dir, "a0", bbox=(5000, 5000, 6000, 6000))) == 0
    with pytest.raises(ValueError, match="xmin ≤ xmax"):
        read_nuclei(run_dir, "a0", bbox=(10, 0, 5, 5))
    with pytest.raises(ValueError, match="four finite numbers"):
        read_nuclei(run_dir, "a0", bbox=(0, 0, 5))


def test_read_labels_is_a_dask_array_over_the_pyramid(run_dir: Path) -> None:
    import dask.array as da
    import zarr

    labels = read_labels(run_dir, "a0")
    assert isinstance(labels, da.Array) and labels.shape == (600, 1100) and labels.dtype == np.uint32
    stored = zarr.open_array(str(run_dir / "slides" / "a0" / "maps.zarr" / "labels" / "0"), mode="r")[:]
    np.testing.assert_array_equal(labels.compute(), stored)
    ids = set(np.unique(stored)) - {0}
    assert ids == set(read_nuclei(run_dir, "a0", as_arrow=True).column("id").to_pylist())
    # the pyramid halves down to a long side of at most 1024 px: two levels here
    coarse = read_labels(run_dir, "a0", level=1)
    assert coarse.shape == (300, 550)
    np.testing.assert_array_equal(coarse.compute(), stored[::2, ::2])
    with pytest.raises(
        RunFolderError, match=r"slide 'a0': level 2 is not a level of the label pyramid: it has levels 0 to 1"
    ):
        read_labels(run_dir, "a0", level=2)


def test_readers_name_the_slide_and_the_problem(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"holds no slide 'a9' \(its 3 slides: a0, a1, gone\)"):
        read_nuclei(run_dir, "a9")
    with pytest.raises(RunFolderError, match=r"slide 'gone' failed, so it has no outputs: gone.svs: .*file not found"):
        read_labels(run_dir, "gone")
    with pytest.raises(RunFolderError, match="is not a slide id"):
        read_nuclei(run_dir, "../a0")
    with pytest.raises(RunFolderError, match=f"{tmp_path} is not a run's output folder: it has no slides/ folder"):
        read_qc(tmp_path)
    with pytest.raises(RunFolderError, match="not a run's output folder"):
        read_labels(tmp_path, "a0")


def test_read_qc_gives_the_papers_tables(run_dir: Path) -> None:
    tables = read_qc(run_dir)
    assert isinstance(tables, QCTables) and (tables.folder / "report.html").is_file()
    assert tables.slides.columns.tolist() == ["CancerType", "WSI-ID", "QCResult"]
    assert sorted(tables.slides["WSI-ID"]) == ["a0", "a1", "gone"]
    assert {"NumNucleiSample", "SizeOfNuclei-Average", "SizeOfNuclei-Stddev"} <= set(tables.wsi_qc.columns)
    wsi = tables.wsi_qc.set_index("WSI-ID")
    run = json.loads((run_dir / "run.json").read_text())
    assert wsi.loc["a0", "NumNucleiSample"] == run["slides"]["a0"]["n_nuclei"]
    assert {"NumOfUnacceptableSegRegions", "NumOfSampledRegions"} <= set(tables.random_region_check.columns)


def test_read_qc_builds_the_tables_of_a_run_that_made_none(cohort: Path, blob_model: Path, client, tmp_path) -> None:
    out = tmp_path / "out"
    segment_slides([cohort.parent / "a1.svs"], out, client, model=str(blob_model), qc_tables=False, **SETTINGS)
    assert not (out / "qc").exists()
    tables = read_qc(out)
    assert tables.slides["WSI-ID"].tolist() == ["a1"] and (out / "qc" / "qc.json").is_file()


def test_the_package_exports_the_api_without_loading_it_on_import() -> None:
    assert pipeline.segment_slides is segment_slides and pipeline.read_qc is read_qc
    code = (
        "import sys, pipeline.kernels, pipeline.io.readers; loaded = 'pipeline.api' in sys.modules; "
        "from pipeline import read_nuclei; print(loaded, 'pipeline.api' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
    with pytest.raises(AttributeError, match="has no attribute 'segment'"):
        pipeline.segment  # noqa: B018


@pytest.mark.slow
def test_the_example_notebook_runs(cohort: Path, blob_model: Path, tmp_path: Path) -> None:
    """docs/examples/segment_and_read.ipynb, executed in a kernel as a user runs it, its slides
    and model replaced (as papermill does: a cell after the one tagged ``parameters``)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(ROOT / "docs" / "examples" / "segment_and_read.ipynb", as_version=4)
    at = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    injected = (
        f"slides = [{str(cohort.parent / 'a1.svs')!r}]\nout = {str(tmp_path / 'out')!r}\n"
        f"settings = {{'model': {str(blob_model)!r}, 'tile_px': 256}}"
    )
    notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(injected))
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = {i: c.get("outputs", []) for i, c in enumerate(notebook.cells) if c.cell_type == "code"}
    shown = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for out in outputs.values() for o in out
    )
    assert "1 of 1 slides ok" in shown and "nuclei in the region, GeoDataFrame" in shown
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "ok"


def test_docs_api_md_is_the_docstrings() -> None:
    """docs/api.md is what docs/api_reference.py writes from the docstrings (rerun it after
    changing one), documents every public name, and every function states its parameters and
    what it returns."""
    import importlib.util
    import inspect

    import pipeline.api as api

    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "docs" / "api_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == module.reference(), "docs/api.md is out of date: run python docs/api_reference.py"
    for name in api.__all__:
        assert f"## `{name}`" in page
        obj = getattr(api, name)
        if inspect.isfunction(obj):
            assert "Parameters\n    ----------" in obj.__doc__ and "Returns\n    -------" in obj.__doc__, name


def test_an_interrupted_run_says_so_in_run_json_from_either_entry_point(
    cohort: Path, blob_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Ctrl-C in a notebook reaches the caller (the cell stops); the command line exits 1 with
    its line; run.json ends ``interrupted`` both ways."""
    import pipeline.cli.run as cli

    class Client:
        status = "running"
        dashboard_link = None

        def close(self) -> None:
            pass

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "connect", lambda config: Client())
    monkeypatch.setattr(cli, "run_slides", interrupted)
    with pytest.raises(KeyboardInterrupt):
        segment_slides([cohort.parent / "a0.svs"], tmp_path / "api", Client(), model=str(blob_model), **SETTINGS)
    assert json.loads((tmp_path / "api" / "run.json").read_text())["status"] == "interrupted"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path\n{cohort.parent / 'a0.svs'}\n")
    code = cli.main([str(manifest), "--out", str(tmp_path / "cli"), "--model", str(blob_model), "--no-progress"])
    assert code == 1 and "interrupted by SIGINT: rerun the same command to resume" in capfd.readouterr().err
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["status"] == "interrupted"
