"""``python -m pipeline.predict``: plain image files segmented by the slide pipeline's own code
path: the labels it writes equal the label map ``pipeline.run`` publishes for the same pixels,
and a bad image fails alone with its name in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


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

    pred = cli("pipeline.predict", str(tmp_path / "missing.png"), str(tmp_path / "broken.png"), str(png),
               "--out", str(tmp_path / "pred"), "--model", str(blob_model), "--config", str(config))
    assert pred.returncode == 1, pred.stderr[-3000:]
    assert "missing.png" in pred.stderr and "broken.png" in pred.stderr
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["tile_labels.tif"]
    labels = tifffile.imread(tmp_path / "pred" / "tile_labels.tif")
    assert labels.dtype == np.uint32 and labels.shape == image.shape[:2]

    # every generated nucleus is found, once
    ids = [int(labels[int(n.y), int(n.x)]) for n in nuclei]
    assert sum(i > 0 for i in ids) >= 0.99 * len(nuclei)
    assert len(set(ids) - {0}) == sum(i > 0 for i in ids)

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_path,slide_id,mpp\n{png},tile,0.25\n")
    run = cli("pipeline.run", str(manifest), "--out", str(tmp_path / "out"), "--model", str(blob_model),
              "--tile-px", "256", "--no-progress", "--workers", "1", "--threads", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    slide_labels = zarr.open_array(str(tmp_path / "out" / "slides" / "tile" / "maps.zarr" / "labels"), mode="r")[:]
    np.testing.assert_array_equal(labels, slide_labels)
