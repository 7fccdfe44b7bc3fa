"""Host stages of the pipeline, current code against the previous code, in the same run on the
same tiles: seconds per gigapixel of tissue and the ratio.

    python benchmarks/host_stages.py --side 2048 --tile-px 1024 --model blob --out DIR

The previous code is kept verbatim under ``tests/reference`` (the tests compare its outputs with
the current code's). Setup (outside every clock): a generated slide (as ``gpu_benchmark.py``),
its plan, and each tile read, segmented and kept in memory. Then, ``--repeats`` times, old and
new alternately (so that a busy machine slows both alike), the best time of each:

* ``normalise``: Reinhard normalisation of the tile windows;
* ``watershed``: the tiles' probability maps → nucleus labels (seeds, watershed, holes, small
  objects; ``instances_from_probabilities``), and whether the labels are identical;
* ``features``: cut at the slide's edge + the tile's nucleus table (moments, outlines, polygons);
* ``reduce``: the tiles' tables written as nuclei.csv, nuclei.geojson and nuclei.parquet (the current
  code also builds the GeoParquet geometry and the GeoJSON's UUIDs, which the previous one did not).

Figures are seconds per Gpx of tissue (tile cores, level 0) on one thread; ``reduce`` also per
nucleus. Results: ``<out>/host_stages.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def best_of(repeats: int, old: Callable[[], Any], new: Callable[[], Any]) -> tuple[float, float]:
    t_old, t_new = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        old()
        t1 = time.perf_counter()
        new()
        t2 = time.perf_counter()
        t_old, t_new = min(t_old, t1 - t0), min(t_new, t2 - t1)
    return t_old, t_new


def old_cut(labels: np.ndarray, grid: Any, tile: Any, min_area: int) -> np.ndarray:
    from pipeline.kernels.nuclei import remove_small_labels

    rows, cols = grid.inside_slide(*tile)
    if rows.all() and cols.all():
        return labels
    return remove_small_labels(np.where(rows[:, None] & cols[None, :], labels, 0), min_area)


def write_rows(tables: list[Any], folder: Path) -> None:
    from pipeline.io.outputs.parquet import ParquetWriter
    from tests.reference.csv_rows import PaperCsvWriter
    from tests.reference.geojson_rows import QuPathGeoJsonWriter

    writers = [PaperCsvWriter(folder), QuPathGeoJsonWriter(folder)]
    parquet = ParquetWriter(folder)
    for table in tables:
        columns = table.to_pydict()
        for w in writers:
            w.write(table, columns)
        parquet.write(table)
    for w in [*writers, parquet]:
        w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--tile-px", type=int, default=1024)
    p.add_argument("--model", default="blob", help="'blob', an ONNX file, or '' for the shipped model")
    p.add_argument("--spacing", type=float, default=15.0)
    p.add_argument("--radius", type=float, nargs=2, default=(6.0, 9.0))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import gpu_benchmark as gb

    import tests.reference.features_loop as old_features
    import tests.reference.postprocessing as old_postprocessing
    import tests.reference.stain_steps as old_stain
    from pipeline.config import Config
    from pipeline.io.outputs.tables import write_nucleus_tables
    from pipeline.io.readers import open_slide
    from pipeline.kernels.nuclei import instances_from_probabilities
    from pipeline.manifest import SlideEntry
    from pipeline.slide import model_for, plan_slide
    from pipeline.slide.model_input import normalise_stain
    from pipeline.slide.segment import cut_at_slide_edge, read_tile, segment_window, tile_nuclei

    work = Path(tempfile.mkdtemp(prefix="host-stages-"))
    model_path, model_name = gb.benchmark_model(args.model, work)
    slide, drawn = gb.generated_slide(work, args.side, args.spacing, tuple(args.radius))
    config = Config(model=str(model_path), tile_px=args.tile_px, progress=False, device="cpu")
    plan = plan_slide(SlideEntry(slide.stem, slide), str(work / "plan"), config)
    model = model_for(config, str(model_path))
    grid, min_area = plan.grid, plan.thresholds.min_area_px
    kept = []
    with open_slide(plan.slide_path, plan.reader) as s:
        for tile in plan.tiles:
            rgb = read_tile(s, grid, tile)
            labels, prob, h_map, _ = segment_window(rgb, model, plan.thresholds, plan.stain, grid.model_input_side)
            kept.append((tile, rgb, labels, h_map, prob))
    gpx = gb.tissue_gigapixels(plan, list(plan.tiles))

    def normalise(fn: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: [fn(rgb, plan.stain) for _, rgb, _, _, _ in kept]

    def watershed(fn: Callable[..., Any]) -> Callable[[], list[Any]]:
        return lambda: [fn(prob, plan.thresholds) for *_, prob in kept]

    def features(cut: Callable[..., Any], table: Callable[..., Any]) -> Callable[[], list[Any]]:
        return lambda: [table(cut(lab, grid, t, min_area), h, grid, t, plan.mpp) for t, _, lab, h, _ in kept]

    def new_table(*a: Any) -> Any:
        return tile_nuclei(*a)[0]

    results: dict[str, Any] = {}
    results["normalise"] = best_of(args.repeats, normalise(old_stain.reinhard_normalise), normalise(normalise_stain))
    results["watershed"] = best_of(
        args.repeats,
        watershed(old_postprocessing.instances_from_probabilities),
        watershed(instances_from_probabilities),
    )
    labels_identical = all(
        np.array_equal(a, b)
        for a, b in zip(
            watershed(old_postprocessing.instances_from_probabilities)(),
            watershed(instances_from_probabilities)(),
            strict=True,
        )
    )
    results["features"] = best_of(
        args.repeats, features(old_cut, old_features.tile_table), features(cut_at_slide_edge, new_table)
    )
    tables = features(cut_at_slide_edge, new_table)()
    n_nuclei = sum(t.num_rows for t in tables)
    (work / "old").mkdir()
    (work / "new").mkdir()
    results["reduce"] = best_of(
        args.repeats,
        lambda: write_rows(tables, work / "old"),
        lambda: write_nucleus_tables(iter(tables), work / "new", "host-stages"),
    )
    # nuclei.geojson differs by design (UUID ids, the nucleus id as a measurement) and nuclei.parquet
    # holds its geometry: the CSV is the text output both must write the same
    same = {name: (work / "old" / name).read_bytes() == (work / "new" / name).read_bytes() for name in ("nuclei.csv",)}
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python benchmarks/host_stages.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_name,
        "slide": {"side_px": args.side, "tile_px": args.tile_px, "tiles": len(kept), **drawn},
        "tissue_gpx": gpx,
        "n_nuclei": n_nuclei,
        "stages": {
            k: {
                "old_s_per_gpx": round(o / gpx, 2),
                "new_s_per_gpx": round(n / gpx, 2),
                "ratio_old_over_new": round(o / n, 2),
                **(
                    {
                        "old_us_per_nucleus": round(o / n_nuclei * 1e6, 1),
                        "new_us_per_nucleus": round(n / n_nuclei * 1e6, 1),
                    }
                    if k == "reduce" and n_nuclei
                    else {}
                ),
            }
            for k, (o, n) in results.items()
        },
        "text_outputs_byte_identical": same,
        "labels_identical": labels_identical,
    }
    lines = [
        f"date: {data['date']}  ",
        f"machine: {data['machine']}  ",
        f"command: `{data['command']}`  ",
        f"model: {model_name}; slide {args.side}² px, tile {args.tile_px} px, {len(kept)} tiles, {n_nuclei} nuclei  ",
        "",
        "| stage | previous s/Gpx | current s/Gpx | previous / current |",
        "|---|---|---|---|",
    ]
    for k, v in data["stages"].items():
        lines.append(f"| {k} | {v['old_s_per_gpx']} | {v['new_s_per_gpx']} | {v['ratio_old_over_new']}× |")
    lines += [
        "",
        f"nuclei.csv byte-identical (previous vs current writer): {same}  ",
        f"labels identical (previous vs current watershed stage): {labels_identical}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host_stages.json").write_text(json.dumps(data, indent=2))
        (args.out / "host_stages.md").write_text(text)
    return 0 if all(same.values()) and labels_identical else 1


if __name__ == "__main__":
    sys.exit(main())
