"""``python -m pipeline.predict``: plain image files segmented by the slide pipeline's own code
path: the labels it writes equal the label map ``pipeline.run`` publishes for the same pixels,
and a bad image fails alone with its name in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io.outputs.parquet import wkb_polygons
from pipeline.manifest import SlideEntry
from tests.conftest import ROOT


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_writes_the_slide_pipelines_labels(tmp_path: Path, blob_model: Path, synthetic_image) -> None:
    import tifffile
    import zarr
    from PIL import Image

    image, nuclei = synthetic_image
    png = tmp_path / "tile.png"
    Image.fromarray(image).save(png)
    (tmp_path / "broken.png").write_bytes(png.read_bytes()[:300])
    config = tmp_path / "small_tiles.yaml"
    config.write_text("tile_px: 256\n")  # several tiles with halos, so assembly is exercised

    pred = cli(
        "pipeline.predict",
        str(tmp_path / "missing.png"),
        str(tmp_path / "broken.png"),
        str(png),
        "--out",
        str(tmp_path / "pred"),
        "--model",
        str(blob_model),
        "--config",
        str(config),
        "--mpp",
        "0.25",
    )
    assert pred.returncode == 1, pred.stderr[-3000:]
    assert "missing.png" in pred.stderr and "broken.png" in pred.stderr
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["scales.csv", "tile_labels.tif"]
    assert "tile.png,0.25,manifest," in (tmp_path / "pred" / "scales.csv").read_text()
    labels = tifffile.imread(tmp_path / "pred" / "tile_labels.tif")
    assert labels.dtype == np.uint32 and labels.shape == image.shape[:2]

    # every generated nucleus is found, once
    ids = [int(labels[int(n.y), int(n.x)]) for n in nuclei]
    assert sum(i > 0 for i in ids) >= 0.99 * len(nuclei)
    assert len(set(ids) - {0}) == sum(i > 0 for i in ids)

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_path,slide_id,mpp\n{png},tile,0.25\n")
    run = cli(
        "pipeline.run",
        str(manifest),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(blob_model),
        "--tile-px",
        "256",
        "--no-progress",
        "--workers",
        "1",
        "--threads",
        "2",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    slide_dir = tmp_path / "out" / "slides" / "tile"
    slide_labels = zarr.open_array(str(slide_dir / "maps.zarr" / "labels" / "0"), mode="r")[:]
    np.testing.assert_array_equal(labels, slide_labels)


def test_nuclei_cut_by_the_image_edge_end_at_the_edge(tmp_path: Path, blob_model: Path, synthetic_image) -> None:
    """Tile windows are mirrored beyond the image, but a nucleus the edge cuts is reported as the
    image holds it: its outline inside the image, its area the pixels it has there, and not at all
    when less than the model's smallest nucleus is left."""
    import pyarrow.parquet as pq
    import zarr
    from PIL import Image

    from pipeline.config import Config
    from pipeline.runtime import load_model
    from pipeline.slide import process_slide_inline

    image, _ = synthetic_image
    crop = np.ascontiguousarray(image[17:400, 17:500])  # the first row and column of nuclei cut, some to slivers
    png = tmp_path / "cut.png"
    Image.fromarray(crop).save(png)
    process_slide_inline(SlideEntry("cut", png, mpp=0.25), str(tmp_path), Config(model=str(blob_model), tile_px=256))
    folder = tmp_path / "slides" / "cut"
    labels = zarr.open_array(str(folder / "maps.zarr" / "labels" / "0"), mode="r")[:]
    table = pq.read_table(folder / "nuclei.parquet").to_pandas().set_index("id")
    at_edge = np.unique(np.concatenate([labels[0], labels[:, 0], labels[-1], labels[:, -1]]))
    at_edge = at_edge[at_edge > 0]
    assert len(at_edge) >= 20
    counts = np.bincount(labels.ravel())
    height, width = labels.shape
    min_area = load_model(blob_model).thresholds.min_area_px
    for i in at_edge:
        assert table.loc[i, "area_px"] == pytest.approx(counts[i], rel=0.01)
        assert counts[i] >= min_area
        xy = np.asarray(wkb_polygons(pa.array([table.loc[i, "geometry"]], pa.binary()))[0].as_py()).reshape(-1, 2)
        assert xy[:, 0].min() >= -0.5 and xy[:, 0].max() <= width - 0.5
        assert xy[:, 1].min() >= -0.5 and xy[:, 1].max() <= height - 0.5


def test_predict_without_mpp_estimates_each_images_scale(tmp_path: Path, blob_model: Path, synthetic_image) -> None:
    import csv

    from PIL import Image

    image, _ = synthetic_image
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    half = image[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x40.png")
    Image.fromarray(half).save(tmp_path / "x20.png")
    pred = cli(
        "pipeline.predict",
        str(tmp_path / "x40.png"),
        str(tmp_path / "x20.png"),
        "--out",
        str(tmp_path / "pred"),
        "--model",
        str(blob_model),
    )
    assert pred.returncode == 0, pred.stderr[-3000:]
    rows = {Path(r["image"]).name: r for r in csv.DictReader(open(tmp_path / "pred" / "scales.csv"))}
    assert {r["mpp_source"] for r in rows.values()} == {"estimate"}
    assert float(rows["x40.png"]["mpp"]) == pytest.approx(0.25, rel=0.2)
    assert float(rows["x20.png"]["mpp"]) == pytest.approx(0.5, rel=0.2)


@pytest.mark.parametrize(
    ("mpp", "env"),
    [("-1", {}), ("0", {}), ("nan", {}), ("99", {}), ("0.001", {}), ("0.25", {"NUCLEI_HALF": "maybe"})],
)
def test_predict_refuses_bad_settings_with_one_line(
    mpp: str,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli.predict import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "x.png").write_bytes(b"")  # never read: the settings are refused first
    code = main([str(tmp_path / "x.png"), "--out", str(tmp_path / "pred"), "--mpp", mpp])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert ("NUCLEI_HALF" if env else f"--mpp {mpp}") in lines[0], lines
    assert not (tmp_path / "pred").exists()


def test_predict_keeps_one_result_per_input_even_when_names_repeat(tmp_path: Path, blob_model: Path) -> None:
    import tifffile
    from PIL import Image

    from pipeline.testing import synthetic_slide_image

    images = {}
    for folder, seed in (("a", 1), ("b", 2)):
        image, _ = synthetic_slide_image(200, 160, seed=seed, tissue="full")
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "x.png")
        images[folder] = tmp_path / folder / "x.png"
    Image.fromarray(image).save(tmp_path / "b" / "x.tif")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", str(images["a"]), str(images["b"]), str(tmp_path / "b" / "x.tif")]
        + ["--out", str(tmp_path / "pred"), "--model", str(blob_model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "pred").iterdir() if p.name.endswith("_labels.tif"))
    assert len(written) == 3, written
    labels = {name: tifffile.imread(tmp_path / "pred" / name) for name in written}
    assert len({v.tobytes() for v in labels.values()}) >= 2  # a/x.png and b/x.png: two different results
    for name in written:
        assert name in result.stdout
