"""Do the stored outlines score as the label maps do? The 7 MoNuSeg validation images at 40x
(0.25 µm/px) and at 20x (area-downsampled ×2, 0.5 µm/px), segmented as slides with the right mpp;
each slide's outlines in ``nuclei.parquet`` are filled back into labels (a pixel belongs to an
outline when its centre lies inside, ``skimage.draw.polygon``) and scored against the annotations
with the AJI of ``pipeline.evaluation``, beside the AJI of its ``maps.zarr`` labels (what
``pipeline.predict`` + ``pipeline.evaluate`` score); the share of nucleus pixels on which the filled
outlines and the label map agree is the polygon-to-label round trip.

    python benchmarks/outline_fidelity.py --work DIR [--factors 1 2]

The outlines are read from ``geometry`` (shapely) whichever layout wrote them, so the same script
run from an earlier checkout measures that version's outlines for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def filled_outlines(parquet: Path, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Labels (the nucleus ids) drawn from the outlines of a nuclei.parquet, and the mean number of
    vertices per outline."""
    import pyarrow.parquet as pq
    import shapely
    from skimage.draw import polygon as fill

    table = pq.read_table(parquet, columns=["id", "geometry"])
    labels = np.zeros(shape, dtype=np.uint32)
    vertices = 0
    for nucleus, wkb in zip(table.column("id").to_pylist(), table.column("geometry").to_pylist(), strict=True):
        ring = shapely.from_wkb(wkb)
        if ring.is_empty:
            continue
        xy = np.asarray(ring.exterior.coords)[:-1]
        vertices += len(xy)
        rr, cc = fill(xy[:, 1], xy[:, 0], shape=shape)
        labels[rr, cc] = nucleus
    return labels, vertices / max(table.num_rows, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.0])
    args = p.parse_args(argv)

    import zarr
    from PIL import Image
    from scale_estimate import resample

    from pipeline.evaluation.metrics import aggregated_jaccard_index
    from pipeline.io.annotations import VALIDATION_IMAGES, data_dir, load_monuseg

    images = load_monuseg(
        data_dir() / "monuseg2018_train", VALIDATION_IMAGES, cache_dir=Path.home() / ".cache" / "pipeline-train"
    )
    results: dict[str, dict[str, float]] = {}
    for factor in args.factors:
        work = args.work / f"x{factor:g}"
        (work / "images").mkdir(parents=True, exist_ok=True)
        truths, rows = {}, ["slide_path,slide_id,mpp"]
        for im in images:
            small = resample(im.rgb, factor)
            path = work / "images" / f"{im.name}.png"
            Image.fromarray(small).save(path)
            r = (np.arange(small.shape[0]) * factor + factor / 2).astype(int).clip(0, im.labels.shape[0] - 1)
            c = (np.arange(small.shape[1]) * factor + factor / 2).astype(int).clip(0, im.labels.shape[1] - 1)
            truths[im.name] = im.labels[np.ix_(r, c)]
            rows.append(f"{path},{im.name},{0.25 * factor}")
        (work / "manifest.csv").write_text("\n".join(rows) + "\n")
        command = [sys.executable, "-m", "pipeline.run", str(work / "manifest.csv"), "--out", str(work / "out")]
        command += ["--no-qc", "--no-progress", "--dashboard", "off", "--workers", "1"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"pipeline.run failed: {done.stderr[-2000:]}")
        aji_maps, aji_outlines, agree, vertices = [], [], [], []
        for name, truth in truths.items():
            folder = work / "out" / "slides" / name
            maps = np.asarray(zarr.open_group(str(folder / "maps.zarr"), mode="r")["labels/0"][:])
            drawn, per = filled_outlines(folder / "nuclei.parquet", maps.shape)
            aji_maps.append(aggregated_jaccard_index(truth, maps.astype(np.int64)))
            aji_outlines.append(aggregated_jaccard_index(truth, drawn.astype(np.int64)))
            nuclei = (maps > 0) | (drawn > 0)
            agree.append(float((maps == drawn)[nuclei].mean()))
            vertices.append(per)
        key = f"{0.25 * factor:g} µm/px"
        results[key] = {
            "aji_maps": round(float(np.mean(aji_maps)), 4),
            "aji_outlines": round(float(np.mean(aji_outlines)), 4),
            "outline_pixels_agreeing_with_maps": round(float(np.mean(agree)), 4),
            "vertices_per_outline": round(float(np.mean(vertices)), 1),
        }
        print(key, json.dumps(results[key]), flush=True)
    (args.work / "outline_fidelity.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
