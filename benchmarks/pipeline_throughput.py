"""End-to-end throughput of the slide pipeline against bare ONNX Runtime inference on the same
tiles, and peak worker memory for a small and a 4× larger slide.

    python benchmarks/pipeline_throughput.py [--model FILE.onnx] [--side 2048] [--out DIR] [--copies N]

Both sides of the ratio are measured in this run on this machine:
* baseline: the model alone (one ONNX Runtime session using every core) on the slide's tissue
  tiles, already read, resampled and normalised in memory before the clock starts;
* pipeline: ``run_slides`` on a local Dask cluster (1 worker process, one thread per core):
  plan, read, normalise, infer, watershed, features, label assembly and the slide's outputs.
Figures are megapixels of tissue (tile cores over tissue, at model resolution) per second.
Peak RSS is the worker process's own high-water mark on a fresh cluster per slide (``VmHWM``:
``ru_maxrss`` would count the driver's peak too, see ``pipeline.testing.memory``).

``--copies N`` runs a manifest of N copies of each slide (as a cohort of small slides runs: one
slide plans while others' tiles run) against N passes of the baseline over the slide's tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generated_slide(folder: Path, side: int, seed: int) -> Path:
    from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff

    image, _ = synthetic_slide_image(side, side, seed=seed, tissue="full", spacing=24)
    return write_pyramidal_tiff(folder / f"slide_{side}.svs", image, mpp=0.25, compression="jpeg")


def copy_of(slide: Path, i: int) -> Path:
    """The slide again under another name (a hard link where the file system allows)."""
    import shutil

    other = slide.with_name(f"{slide.stem}_copy{i}{slide.suffix}")
    if not other.exists():
        try:
            os.link(slide, other)
        except OSError:
            shutil.copyfile(slide, other)
    return other


def baseline_seconds(plan, threads: int, passes: int = 1) -> float:  # type: ignore[no-untyped-def]
    """Bare inference on the plan's tiles, ``passes`` times (inputs prepared before timing)."""
    from pipeline.io.readers import open_slide
    from pipeline.runtime.session import NucleusModel
    from pipeline.slide.model_input import model_input, normalise_stain
    from pipeline.slide.segment import read_tile

    model = NucleusModel(Path(plan.model_path), intra_op_threads=threads)
    slide = open_slide(plan.slide_path, plan.reader)
    grid = plan.grid
    inputs = []
    for tile in plan.tiles:
        rgb = read_tile(slide, grid, tile)
        inputs.append(model_input([normalise_stain(rgb, plan.stain)], grid.model_input_side))
    model.predict(inputs[0])  # warm-up (graph optimisation, allocations)
    t0 = time.perf_counter()
    for _ in range(passes):
        for x in inputs:
            model.predict(x)
    return time.perf_counter() - t0


def pipeline_run(slides: list[Path], out: Path, config) -> tuple[float, int, dict]:  # type: ignore[no-untyped-def]
    """Seconds for run_slides on a fresh local cluster, the worker's peak RSS (bytes), the first
    slide's stats."""
    from distributed import Client, LocalCluster

    from pipeline.graph import run_slides
    from pipeline.manifest import SlideEntry
    from pipeline.testing.memory import own_peak_rss_bytes

    cores = os.cpu_count() or 1
    with LocalCluster(n_workers=1, threads_per_worker=cores, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.run(lambda: __import__("pipeline.runtime.session"))  # import cost outside the clock
            t0 = time.perf_counter()
            outcomes = run_slides(client, [SlideEntry(s.stem, s) for s in slides], out, config)
            seconds = time.perf_counter() - t0
            peak = list(client.run(own_peak_rss_bytes).values())[0]
    for outcome in outcomes:
        if outcome.status != "ok":
            raise RuntimeError(outcome.error)
    return seconds, int(peak), outcomes[0].stats


def main() -> None:
    from pipeline.config import Config
    from pipeline.manifest import SlideEntry
    from pipeline.runtime.session import resolve_model_path
    from pipeline.slide import plan_slide

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--side", type=int, default=2048, help="side of the small slide (the large one is 2×)")
    p.add_argument("--tile-px", type=int, default=1024)
    p.add_argument("--halo-px", type=int, default=-1, help="tile halo (-1: derived from the model)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--intra-op", type=int, default=1, help="ONNX Runtime threads per task in the pipeline")
    p.add_argument("--sizes", default="1,2", help="slide side multipliers to run (memory check needs 1,2)")
    p.add_argument("--tiles-per-task", type=int, default=Config.tiles_per_task, help="tiles per segment-tiles task")
    p.add_argument("--copies", type=int, default=1, help="slides of each size in the manifest (copies of one)")
    args = p.parse_args()
    model = str(resolve_model_path(args.model or None))
    cores = os.cpu_count() or 1
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config = Config(
        model=model,
        tile_px=args.tile_px,
        halo_px=args.halo_px,
        intra_op_threads=args.intra_op,
        tiles_per_task=args.tiles_per_task,
        progress=False,
    )
    results = {
        "machine": f"{platform.node()} {platform.machine()} {cores} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": model,
        "tile_px": args.tile_px,
        "halo_px": args.halo_px,
        "intra_op_threads": args.intra_op,
        "tiles_per_task": args.tiles_per_task,
        "copies": args.copies,
        "slides": [],
    }
    for factor in [int(f) for f in args.sizes.split(",")]:
        side = args.side * factor
        slide = generated_slide(work, side, seed=factor)
        plan = plan_slide(SlideEntry(slide.stem, slide), str(work / "plan"), config)
        grid = plan.grid
        cores_px = [grid.core(*t) for t in plan.tiles]
        tissue_mpx = args.copies * sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in cores_px) / grid.scale**2 / 1e6
        base = baseline_seconds(plan, threads=cores, passes=args.copies)
        copies = [slide] + [copy_of(slide, i) for i in range(1, args.copies)]
        seconds, peak, stats = pipeline_run(copies, work / f"run_{side}", config)
        row = {
            "side_px": side,
            "slides": args.copies,
            "tiles": args.copies * len(plan.tiles),
            "tissue_mpx": round(tissue_mpx, 2),
            "baseline_ort_s": round(base, 2),
            "pipeline_s": round(seconds, 2),
            "baseline_mpx_per_s": round(tissue_mpx / base, 3),
            "pipeline_mpx_per_s": round(tissue_mpx / seconds, 3),
            "ratio_pipeline_over_baseline": round(base / seconds, 3),
            "worker_peak_rss_mb": round(peak / 2**20, 1),
            "stage_seconds": stats["stage_seconds"],  # of the first copy (as n_nuclei)
            "n_nuclei": stats["n_nuclei"],
        }
        results["slides"].append(row)
        print(json.dumps(row), flush=True)
    if len(results["slides"]) == 2:
        small, large = results["slides"]
        results["rss_large_over_small"] = round(large["worker_peak_rss_mb"] / small["worker_peak_rss_mb"], 3)
    print(json.dumps({k: v for k, v in results.items() if k != "slides"}, indent=1))
    (work / "throughput.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
