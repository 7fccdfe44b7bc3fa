"""Seconds per gigapixel of tissue, end to end, on the device path against the CPU path, measured
in the same session on the same generated slide, with the split by stage.

    python benchmarks/gpu_benchmark.py --device gpu --side 16384 --out $OUT/bench    # a GPU node
    python benchmarks/gpu_benchmark.py --device cpu --side 2048 --tile-px 1024       # a check anywhere

* CPU path: ``pipeline.slide.segment.segment_tiles`` as the pipeline runs it (ONNX Runtime on the CPU
  with every core), on the first ``--cpu-tiles`` tissue tiles (the CPU is ~100× slower; its
  per-gigapixel figure is measured on those tiles).
* device path: the same stages with every array after the read on the device (cupy): upload,
  Reinhard normalisation, inference without host round trips (``NucleusModel.predict_device``:
  ONNX Runtime I/O binding, or the torch runtime through DLPack), seeds and the level-bucketed
  watershed (:mod:`pipeline.kernels.watershed`), holes, relabelling and the moments; then the
  compact label and haematoxylin maps go to the host for polygons, Parquet and the label chunk,
  exactly as the CPU path writes them. Reads are prefetched by host threads and writes drained
  by host threads while the GPU works on the next tile (dask-cuda's "host threads"). With
  ``--device cpu`` this loop runs on numpy arrays, which checks the code without a GPU.

Stage seconds are wall time of each stage in the device thread (the GPU is synchronised at stage
boundaries); read and write run in parallel threads, so their sums can exceed the wall time.
GPU busy % is nvidia-smi's utilisation sampled every 100 ms during the device run.
Results: ``<out>/gpu_benchmark.json`` and a Markdown table ``<out>/gpu_benchmark.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

GOAL_GPX = 10.0  # the goal: a 10-gigapixel slide …
GOAL_SECONDS = 30.0  # … in at most 30 s on one H100
STAGES = ("read", "upload", "normalise", "infer", "watershed", "features", "write")


# ------------------------------------------------------------------------------ inputs ----


def slide_compression() -> str:
    """JPEG, as scanners write, where imagecodecs can decode it; else zlib (stdlib)."""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return "zlib"
    return "jpeg"


def generated_slide(folder: Path, side: int, seed: int = 0) -> Path:
    """A side×side pyramidal slide (0.25 µm/px) of nuclei on tissue everywhere: a 2048-px
    generated block repeated, so a gigapixel slide takes seconds to make."""
    from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff

    block_side = min(side, 2048)
    block, _ = synthetic_slide_image(block_side, block_side, seed=seed, tissue="full", spacing=20.0)
    reps = -(-side // block_side)
    image = np.tile(block, (reps, reps, 1))[:side, :side]
    return write_pyramidal_tiff(folder / f"generated_{side}.svs", image, mpp=0.25, compression=slide_compression())


def benchmark_model(name: str, folder: Path) -> tuple[Path, str]:
    """The model file and what it is: a given path, the shipped model, ``blob`` (the classical
    test model: cheap inference), or ``random-unet`` (the default U-net architecture with random
    weights: the real inference cost; its probability maps are not those of a trained model)."""
    from pipeline.runtime.session import SHIPPED_MODEL

    if name == "blob":
        from pipeline.testing import build_blob_model

        return build_blob_model(folder / "blob.onnx"), "blob (classical test model)"
    if name == "random-unet" or (name == "" and not SHIPPED_MODEL.exists()):
        import torch

        from pipeline.kernels.nuclei import NucleusThresholds
        from pipeline.training.export import contract_metadata, export_onnx
        from pipeline.training.unet import NucleusUNet, UNetConfig

        torch.manual_seed(0)
        net = NucleusUNet(UNetConfig()).eval()
        meta = contract_metadata(net, NucleusThresholds(), 64, "random", "none (benchmark)")
        return export_onnx(net, folder / "unet_random.onnx", meta), "random-unet (default U-net, untrained weights)"
    path = Path(name) if name else SHIPPED_MODEL
    return path, str(path)


# ------------------------------------------------------------------------- GPU sampling ----


class GpuSampler:
    """nvidia-smi utilisation and memory every 100 ms while running (empty without nvidia-smi)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                    "-i",
                    os.environ.get("BENCH_GPU_INDEX", "0"),
                ],
                stdout=open(self.path, "wb"),
                stderr=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def summary(self) -> dict[str, float | None]:
        rows = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    util, mem = (float(v) for v in line.split(","))
                    rows.append((util, mem))
                except ValueError:
                    continue
        if not rows:
            return {"gpu_busy_percent": None, "gpu_memory_peak_mib": None, "samples": 0}
        arr = np.array(rows)
        return {
            "gpu_busy_percent": round(float(arr[:, 0].mean()), 1),
            "gpu_memory_peak_mib": float(arr[:, 1].max()),
            "samples": len(rows),
        }


# --------------------------------------------------------------------------- the paths ----


def tissue_gigapixels(plan: Any, tiles: list[Any]) -> float:
    """Level-0 gigapixels of the given tiles' cores (the tissue the run segments)."""
    grid = plan.grid
    px = 0
    for t in tiles:
        x0, y0, x1, y1 = grid.core(*t)
        px += (x1 - x0) * (y1 - y0)
    return px / 1e9


def cpu_path(plan: Any, tiles: list[Any]) -> dict[str, Any]:
    """The pipeline's own tile function, timed."""
    from pipeline.runtime import session
    from pipeline.slide.plan import model_threads
    from pipeline.slide.segment import segment_tiles

    # The CPU path must infer on the CPU even where runtime 'auto' would pick a GPU: put a CPU
    # session into the process-wide cache under the key segment_tiles looks up (and create it
    # outside the clock).
    threads = model_threads(plan.config)
    key = (str(Path(plan.model_path).resolve()), threads, "auto", 0, False, None)
    session._MODELS[key] = session.NucleusModel(
        Path(plan.model_path), intra_op_threads=threads, runtime="onnxruntime", providers=["CPUExecutionProvider"]
    )
    t0 = time.perf_counter()
    summaries = segment_tiles(plan, tiles)
    wall = time.perf_counter() - t0
    stages: dict[str, float] = {}
    for s in summaries:
        for k, v in s.seconds.items():
            stages[k] = stages.get(k, 0.0) + v
    per_tile = {s.tile: s.n_nuclei for s in summaries}
    return {"wall_s": wall, "stage_s": stages, "n_nuclei": sum(per_tile.values()), "per_tile": per_tile}


def device_path(
    plan: Any, tiles: list[Any], model: Any, xp: Any, read_threads: int, write_threads: int
) -> dict[str, Any]:
    """Every stage after the read on ``xp`` arrays (cupy: the GPU; numpy: the same code on the host)."""
    import numcodecs

    from pipeline.io.readers import open_slide
    from pipeline.kernels.dispatch import to_host
    from pipeline.kernels.nuclei import instances_from_probabilities
    from pipeline.kernels.stain import haematoxylin
    from pipeline.slide.segment import model_input, normalise_stain, read_tile, write_tile_outputs

    grid = plan.grid
    side = grid.model_input_side
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if xp.__name__ == "cupy":
        sync = xp.cuda.get_current_stream().synchronize
    local = threading.local()
    sampling = grid.level0_sampling()
    codec = numcodecs.Zstd(level=3)
    stages = dict.fromkeys(STAGES, 0.0)
    lock = threading.Lock()

    def add(stage: str, seconds: float) -> None:
        with lock:
            stages[stage] += seconds

    def read(tile: Any) -> tuple[Any, np.ndarray]:
        t0 = time.perf_counter()
        if not hasattr(local, "slide"):
            local.slide = open_slide(plan.slide_path, plan.reader)
        rgb = read_tile(local.slide, grid, tile)
        add("read", time.perf_counter() - t0)
        return tile, np.ascontiguousarray(rgb)

    def write(tile: Any, labels: np.ndarray, h_map: np.ndarray) -> int:
        n, seconds = write_tile_outputs(plan, tile, labels, h_map, None, sampling, codec)
        for stage, sec in seconds.items():
            add(stage, sec)
        return n

    def prefetched(pool: ThreadPoolExecutor, depth: int) -> Iterator[tuple[Any, np.ndarray]]:
        pending: queue.Queue[Any] = queue.Queue()
        it = iter(tiles)
        for t in [next(it, None) for _ in range(depth)]:
            if t is not None:
                pending.put(pool.submit(read, t))
        while not pending.empty():
            result = pending.get().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.put(pool.submit(read, nxt))
            yield result

    # warm-up on one tile (kernel compilation, cuDNN autotuning, allocator pool): outside the clock
    warm = xp.ones((1, 3, side, side), dtype=xp.float32)
    model.predict_device(warm)
    sync()
    writes = []
    t_start = time.perf_counter()
    with ThreadPoolExecutor(read_threads) as readers, ThreadPoolExecutor(write_threads) as writers:
        for tile, rgb in prefetched(readers, depth=2 * read_threads):
            t0 = time.perf_counter()
            dev = xp.asarray(rgb)
            sync()
            t1 = time.perf_counter()
            normalised = normalise_stain(dev, plan.stain)
            batch = model_input([normalised], side)
            sync()
            t2 = time.perf_counter()
            prob = model.predict_device(batch)[0, :, : rgb.shape[0], : rgb.shape[1]]
            sync()
            t3 = time.perf_counter()
            labels = instances_from_probabilities(prob, plan.thresholds)
            h_map = haematoxylin(normalised)
            sync()
            t4 = time.perf_counter()
            labels_host, h_host = to_host(labels), to_host(h_map)  # compact maps for polygons and files
            t5 = time.perf_counter()
            for name, sec in (
                ("upload", t1 - t0),
                ("normalise", t2 - t1),
                ("infer", t3 - t2),
                ("watershed", t4 - t3),
                ("features", t5 - t4),
            ):
                add(name, sec)
            writes.append((tile, writers.submit(write, tile, labels_host, h_host)))
        per_tile = {tile: w.result() for tile, w in writes}
    wall = time.perf_counter() - t_start
    return {"wall_s": wall, "stage_s": stages, "n_nuclei": sum(per_tile.values()), "per_tile": per_tile}


# -------------------------------------------------------------------------------- main ----


def per_gpx(result: dict[str, Any], gpx: float) -> dict[str, Any]:
    out = {
        "tiles": result["tiles"],
        "tissue_gpx": round(gpx, 5),
        "wall_s": round(result["wall_s"], 3),
        "s_per_gpx": round(result["wall_s"] / gpx, 2),
        "stage_s_per_gpx": {k: round(v / gpx, 2) for k, v in result["stage_s"].items()},
        "n_nuclei": result["n_nuclei"],
        "projected_10gpx_s": round(GOAL_GPX * result["wall_s"] / gpx, 1),
    }
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"machine: {results['machine']}  ",
        f"device: {results['device_name']}  ",
        f"model: {results['model']} (runtime {results['runtime']}, half={results['half']})  ",
        f"slide: {results['slide_side_px']}² px generated ({results['slide_compression']}), "
        f"tile {results['tile_px']} px, {results['tiles_total']} tiles",
        "",
        "| path | tiles | tissue Gpx | wall s | s / Gpx | 10 Gpx projected s | "
        + " | ".join(f"{s} s/Gpx" for s in STAGES)
        + " |",
        "|---" * (6 + len(STAGES)) + "|",
    ]
    for name in ("cpu", "device"):
        r = results.get(name)
        if not r:
            continue
        st = r["stage_s_per_gpx"]
        cells = [name, r["tiles"], r["tissue_gpx"], r["wall_s"], r["s_per_gpx"], r["projected_10gpx_s"]]
        cells += [st.get(s, "–") for s in STAGES]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if "speedup_device_over_cpu" in results:
        lines.append(
            f"\nspeed-up of the device path over the CPU path (s/Gpx ratio): {results['speedup_device_over_cpu']}×"
        )
    gpu = results.get("gpu_sampling") or {}
    if gpu.get("gpu_busy_percent") is not None:
        lines.append(
            f"GPU busy: {gpu['gpu_busy_percent']}% mean over {gpu['samples']} samples; "
            f"peak memory {gpu['gpu_memory_peak_mib']} MiB"
        )
    if "goal_met" in results:
        verdict = "met" if results["goal_met"] else "not met"
        lines.append(
            f"goal ({GOAL_GPX:g} Gpx in ≤ {GOAL_SECONDS:g} s): {verdict} "
            f"(projected {results['device']['projected_10gpx_s']} s)"
        )
    shared = results.get("nuclei_on_shared_tiles")
    if shared:
        lines.append(
            f"nuclei on the {shared['tiles']} tiles both paths ran: cpu {shared['cpu']}, device {shared['device']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pipeline.config import Config
    from pipeline.manifest import SlideEntry
    from pipeline.runtime.session import NucleusModel
    from pipeline.slide import plan_slide

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="gpu",
        help="gpu: device path on cupy; cpu: the same loop on numpy (a check, no GPU figures)",
    )
    p.add_argument("--side", type=int, default=16384, help="side of the generated slide, level-0 px")
    p.add_argument("--tile-px", type=int, default=2048)
    p.add_argument(
        "--model", default="", help="ONNX file, 'blob', 'random-unet'; default: shipped model, else random-unet"
    )
    p.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "torch"])
    p.add_argument("--half", action="store_true", help="float16 inference on the device path")
    p.add_argument("--cpu-tiles", type=int, default=4, help="tiles for the CPU path (0 = skip it)")
    p.add_argument("--device-tiles", type=int, default=0, help="tiles for the device path (0 = all)")
    p.add_argument("--read-threads", type=int, default=max(2, (os.cpu_count() or 2) // 2))
    p.add_argument("--write-threads", type=int, default=max(2, (os.cpu_count() or 2) // 4))
    p.add_argument("--out", type=Path, default=None, help="results (3 small files)")
    p.add_argument("--work", type=Path, default=None, help="slide, model and tile files (default: a temp dir)")
    args = p.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-work-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    model_path, model_desc = benchmark_model(args.model, work)
    t0 = time.perf_counter()
    slide = generated_slide(work, args.side)
    make_s = time.perf_counter() - t0
    config = Config(model=str(model_path), tile_px=args.tile_px, intra_op_threads=cores, progress=False)
    plan = plan_slide(SlideEntry(slide.stem, slide), str(work / "cpu"), config)
    tiles = list(plan.tiles)

    if args.device == "gpu":
        import cupy as xp

        device_name = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        xp = np
        device_name = "none (device loop on numpy arrays, CPU)"
    model = NucleusModel(
        model_path,
        intra_op_threads=cores,
        runtime=args.runtime,
        half=args.half and args.device == "gpu",
        trt_cache_dir=str(work / "trt-cache"),
    )
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {cores} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device_name": device_name,
        "model": model_desc,
        "runtime": model.runtime,
        "inference_device": model.device,
        "half": bool(model.half),
        "slide_side_px": args.side,
        "slide_generation_s": round(make_s, 1),
        "slide_compression": slide_compression(),
        "tile_px": args.tile_px,
        "tiles_total": len(tiles),
    }

    if args.cpu_tiles:
        cpu_tiles = tiles[: args.cpu_tiles]
        cpu_result = cpu_path(plan, cpu_tiles)
        cpu_result["tiles"] = len(cpu_tiles)
        results["cpu"] = per_gpx(cpu_result, tissue_gigapixels(plan, cpu_tiles))
        print("cpu", json.dumps(results["cpu"]), flush=True)

    dev_tiles = tiles[: args.device_tiles] if args.device_tiles else tiles
    dev_plan = dataclasses.replace(plan, work_dir=str(work / "device"))
    (Path(dev_plan.work_dir) / "tiles").mkdir(parents=True, exist_ok=True)
    with GpuSampler(out / "nvidia_smi.csv") as sampler:
        r = device_path(dev_plan, dev_tiles, model, xp, args.read_threads, args.write_threads)
    r["tiles"] = len(dev_tiles)
    results["device"] = per_gpx(r, tissue_gigapixels(plan, dev_tiles))
    results["gpu_sampling"] = sampler.summary()
    print("device", json.dumps(results["device"]), flush=True)
    if "cpu" in results:
        results["speedup_device_over_cpu"] = round(results["cpu"]["s_per_gpx"] / results["device"]["s_per_gpx"], 2)
        shared = [t for t in cpu_result["per_tile"] if t in r["per_tile"]]
        results["nuclei_on_shared_tiles"] = {  # the two paths' counts on the same tiles
            "tiles": len(shared),
            "cpu": sum(cpu_result["per_tile"][t] for t in shared),
            "device": sum(r["per_tile"][t] for t in shared),
        }
    if args.device == "gpu":
        results["goal_met"] = bool(results["device"]["projected_10gpx_s"] <= GOAL_SECONDS)
    (out / "gpu_benchmark.json").write_text(json.dumps(results, indent=1))
    (out / "gpu_benchmark.md").write_text(markdown(results))
    print(markdown(results))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
