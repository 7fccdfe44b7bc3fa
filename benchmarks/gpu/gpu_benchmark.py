"""Seconds per gigapixel of tissue on the device path against the CPU path, measured in the same
session on the same generated slide, with the split by stage; in phases that each have a time
budget, each written to the results as soon as it ends, so one failure or a kill loses no more
than the phase it hit.

    python benchmarks/gpu/gpu_benchmark.py --device gpu --out $OUT/bench            # a GPU node (~2 min)
    python benchmarks/gpu/gpu_benchmark.py --device cpu --side 2048 --tile-px 1024  # the same code anywhere

Phases, in order (``phases`` in the JSON: status, seconds, budget, error):

* ``setup``: the model, a generated slide of touching nuclei (``--spacing`` 15, ``--radius`` 6–9
  px: the watershed has components holding several seeds to flood), its plan, the write processes.
* ``cpu``: ``pipeline.slide.segment.segment_tiles`` as the pipeline runs it with
  ``Config(device="cpu")`` (ONNX Runtime on the CPU with every core, whatever GPU the node has),
  tile by tile until ``--cpu-tiles`` or its budget; then the slide's ``assemble`` and ``reduce``
  (nucleus tables in every format, stats.json, publication) on the tiles done, in the wall time:
  the host work per Gpx and a 10-Gpx slide's host seconds projected with them.
* ``device_stages``: every stage after the read on the device (cupy): upload, Reinhard
  normalisation, inference without host round trips (``NucleusModel.predict_device``: the torch
  runtime through DLPack, or ONNX Runtime I/O binding), seeds and the level-bucketed watershed,
  holes, relabelling, the haematoxylin map, and the copy of the compact maps to the host. Reads
  are prefetched by host threads (the decoders release the interpreter lock); nothing else runs,
  so these stage times are the device's, not waits for the lock that Python writers would hold.
  The label maps are kept; the kernels are warmed on one tile first (outside the clock), and the
  components holding several seeds are counted per tile (outside the clock).
* ``writes_after``: the kept maps → polygons, Parquet rows and label chunks
  (``write_tile_outputs``, as the pipeline writes them) in ``--write-procs`` processes.
* ``device_full``: the device loop again with the writes handed to those processes as each tile
  is done: the end-to-end figure.

With ``--device cpu`` the device loop runs on numpy arrays (a check of the code, not of speed).
Stage seconds are wall time in the device thread, the GPU synchronised at stage boundaries.
GPU busy % is nvidia-smi's utilisation sampled every 100 ms during each device phase.
Results: ``<out>/gpu_benchmark.json`` and ``<out>/gpu_benchmark.md`` (rewritten after every
phase), ``<out>/nvidia_smi_<phase>.csv``. Exit status 0 when every phase ran, else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import multiprocessing
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import numpy as np

GOAL_GPX = 10.0  # the goal for one GPU: a 10-gigapixel slide …
GOAL_SECONDS = 30.0  # … in at most 30 s on one H100
STAGES = ("read", "upload", "normalise", "infer", "watershed", "download", "features", "write", "assemble", "reduce")
HOST_STAGES = ("read", "normalise", "watershed", "features", "write")  # the host work around the model, per tile
PHASES = ("setup", "cpu", "device_stages", "writes_after", "device_full")
SEED_COUNT_TILES = 8  # tiles whose multi-seed components are counted (outside the clock)


# ------------------------------------------------------------------------------ inputs ----


def slide_compression() -> str:
    """JPEG, as scanners write, where imagecodecs can decode it; else zlib (stdlib)."""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return "zlib"
    return "jpeg"


def touching_pairs(nuclei: list[Any]) -> int:
    """Drawn nuclei whose discs touch or overlap (centre distance ≤ the sum of the radii)."""
    from scipy.spatial import cKDTree

    if len(nuclei) < 2:
        return 0
    xy = np.array([(n.x, n.y) for n in nuclei])
    r = np.array([n.radius for n in nuclei])
    pairs = cKDTree(xy).query_pairs(2 * float(r.max()), output_type="ndarray")
    d = np.hypot(*(xy[pairs[:, 0]] - xy[pairs[:, 1]]).T)
    return int((d <= r[pairs[:, 0]] + r[pairs[:, 1]]).sum())


def generated_slide(
    folder: Path, side: int, spacing: float, radius: tuple[float, float], seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """A side×side pyramidal slide (0.25 µm/px) of nuclei on tissue everywhere: a ≤ 2048-px
    generated block repeated, so a large slide takes seconds to make. Returns the path and what
    was drawn in the block."""
    from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff

    block_side = min(side, 2048)
    block, nuclei = synthetic_slide_image(
        block_side, block_side, seed=seed, tissue="full", spacing=spacing, radius=radius
    )
    reps = -(-side // block_side)
    image = np.tile(block, (reps, reps, 1))[:side, :side]
    path = write_pyramidal_tiff(folder / f"generated_{side}.svs", image, mpp=0.25, compression=slide_compression())
    drawn = {
        "block_px": block_side,
        "nuclei_in_block": len(nuclei),
        "nuclei_per_mpx": round(len(nuclei) / block_side**2 * 1e6),
        "touching_pairs_in_block": touching_pairs(nuclei),
        "spacing_px": spacing,
        "radius_px": list(radius),
    }
    return path, drawn


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
            with open(self.path, "wb") as sink:
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
                    stdout=sink,
                    stderr=subprocess.DEVNULL,
                )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

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


# ------------------------------------------------------------------------ the results ----


class Results:
    """The results so far, rewritten (JSON and Markdown, each by an atomic rename) after every phase."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.data = data
        self.data.setdefault("phases", {})

    def save(self) -> None:
        for name, text in (
            ("gpu_benchmark.json", json.dumps(self.data, indent=1)),
            ("gpu_benchmark.md", markdown(self.data)),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)

    def phase(self, name: str, budget_s: float | None, fn: Callable[[float], dict[str, Any] | None]) -> bool:
        """Run one phase with its budget (``fn`` gets its deadline, a ``perf_counter`` time; None =
        no budget): its figures, or its error, go into the results, which are saved either way."""
        print(f"== phase {name} (budget {budget_s if budget_s is not None else 'none'} s)", flush=True)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"status": "running", "budget_s": budget_s}
        self.data["phases"][name] = record
        self.save()
        ok = True
        try:
            figures = fn(t0 + (budget_s if budget_s is not None else float("inf")))
            if figures is not None:
                self.data[name] = figures
            record["status"] = "ok"
        except Exception as exc:
            ok = False
            record["status"] = "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["traceback"] = traceback.format_exc().splitlines()[-12:]
            traceback.print_exc()
        record["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"== phase {name}: {record['status']} in {record['seconds']} s", flush=True)
        self.save()
        return ok


def per_gpx(result: dict[str, Any], gpx: float) -> dict[str, Any]:
    return {
        "tiles": result["tiles"],
        "tissue_gpx": round(gpx, 5),
        "wall_s": round(result["wall_s"], 3),
        "s_per_gpx": round(result["wall_s"] / gpx, 2),
        "stage_s_per_gpx": {k: round(v / gpx, 2) for k, v in result["stage_s"].items() if v},
        "n_nuclei": result["n_nuclei"],
        "projected_10gpx_s": round(GOAL_GPX * result["wall_s"] / gpx, 1),
        **host_work(result["stage_s"], gpx),
        **{
            k: result[k]
            for k in (
                "reduce_nuclei",
                "stopped_by_budget",
                "writes_unfinished",
                "gpu_sampling",
                "multi_seed_components",
                "warm_up_s",
            )
            if k in result
        },
    }


def host_work(stage_s: dict[str, float], gpx: float) -> dict[str, Any]:
    """Host seconds per Gpx of tissue around the model (read, normalise, watershed, features,
    write) and with the slide's reduce, where the path ran it, and a 10-Gpx slide's host seconds
    projected from them (per core; a node with c cores: divide by c)."""
    if not stage_s.get("reduce"):
        return {}
    tiles = sum(stage_s.get(k, 0.0) for k in HOST_STAGES) / gpx
    reduce = stage_s["reduce"] / gpx
    return {
        "host_s_per_gpx": round(tiles, 2),
        "reduce_s_per_gpx": round(reduce, 2),
        "host_10gpx_projected_s": round(GOAL_GPX * (tiles + reduce + stage_s.get("assemble", 0.0) / gpx), 1),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"date: {results.get('date')}  ",
        f"machine: {results.get('machine')}  ",
        f"device: {results.get('device_name')}  ",
        f"model: {results.get('model')} (runtime {results.get('runtime')}, half={results.get('half')})  ",
    ]
    slide = results.get("slide")
    if slide:
        lines.append(
            f"slide: {slide['side_px']}² px generated ({slide['compression']}), tile {slide['tile_px']} px, "
            f"{slide['tiles_total']} tiles; drawn {slide['nuclei_per_mpx']} nuclei/Mpx, "
            f"{slide['touching_pairs_in_block']} touching pairs in the {slide['block_px']}² block"
        )
    lines += ["", "| phase | status | seconds | budget s | error |", "|---|---|---|---|---|"]
    for name in PHASES:
        p = results["phases"].get(name)
        if p:
            budget = "" if p["budget_s"] is None else f"{p['budget_s']:g}"
            lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} | {budget} | {p.get('error', '')} |")
    lines += [
        "",
        "| path | tiles | tissue Gpx | wall s | s / Gpx | 10 Gpx projected s | "
        + " | ".join(f"{s} s/Gpx" for s in STAGES)
        + " |",
        "|---" * (6 + len(STAGES)) + "|",
    ]
    for name in ("cpu", "device_stages", "writes_after", "device_full"):
        r = results.get(name)
        if not r:
            continue
        st = r["stage_s_per_gpx"]
        cells = [name, r["tiles"], r["tissue_gpx"], r["wall_s"], r["s_per_gpx"], r["projected_10gpx_s"]]
        cells += [st.get(s, "–") for s in STAGES]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for name in ("device_stages", "device_full"):
        gpu = (results.get(name) or {}).get("gpu_sampling") or {}
        if gpu.get("gpu_busy_percent") is not None:
            lines.append(
                f"{name}: GPU busy {gpu['gpu_busy_percent']}% mean over {gpu['samples']} samples; "
                f"peak memory {gpu['gpu_memory_peak_mib']} MiB  "
            )
    seeds = (results.get("device_stages") or {}).get("multi_seed_components")
    if seeds:
        lines.append(
            f"components holding several seeds (the watershed floods them), per tile: {seeds['per_tile']} "
            f"of {seeds['components_per_tile']} components  "
        )
    cpu = results.get("cpu") or {}
    if "host_s_per_gpx" in cpu:
        lines.append(
            f"cpu path, host work per Gpx of tissue: {' + '.join(HOST_STAGES)} = {cpu['host_s_per_gpx']} s; "
            f"reduce {cpu['reduce_s_per_gpx']} s ({cpu.get('reduce_nuclei')} nuclei); projected host seconds for a "
            f"10-Gpx slide (these stages, assemble and reduce, one core): {cpu['host_10gpx_projected_s']} s  "
        )
    if "speedup_device_over_cpu" in results:
        lines.append(f"speed-up of device_full over cpu (s/Gpx ratio): {results['speedup_device_over_cpu']}×  ")
    if "goal_met" in results:
        verdict = "met" if results["goal_met"] else "not met"
        lines.append(
            f"goal ({GOAL_GPX:g} Gpx in ≤ {GOAL_SECONDS:g} s): {verdict} "
            f"(projected {results['device_full']['projected_10gpx_s']} s)  "
        )
    shared = results.get("nuclei_on_shared_tiles")
    if shared:
        lines.append(
            f"nuclei on the {shared['tiles']} tiles every path ran: "
            + ", ".join(f"{k} {v}" for k, v in shared.items() if k != "tiles")
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the paths ----


def tissue_gigapixels(plan: Any, tiles: list[Any]) -> float:
    """Level-0 gigapixels of the given tiles' cores (the tissue the run segments)."""
    px = 0
    for t in tiles:
        x0, y0, x1, y1 = plan.grid.core(*t)
        px += (x1 - x0) * (y1 - y0)
    return px / 1e9


def with_work_dir(plan: Any, folder: Path) -> Any:
    from pipeline.io.outputs.publish import scratch_dir

    folder.mkdir(parents=True, exist_ok=True)
    scratch_dir(folder).mkdir(exist_ok=True)
    return dataclasses.replace(plan, work_dir=str(folder))


def cpu_path(plan: Any, tiles: list[Any], deadline: float) -> dict[str, Any]:
    """The pipeline's own tile function with ``device="cpu"``, one tile at a time until the
    deadline; then, on the tiles done, the slide's label assembly and its reduce (the nucleus
    tables in every format, stats.json, publication), timed as the stages ``assemble`` and
    ``reduce`` and included in the wall time."""
    from pipeline.io.outputs.maps import create_maps, shard_tiles
    from pipeline.slide import assemble_labels, chunks_to_assemble
    from pipeline.slide.reduce import reduce_slide
    from pipeline.slide.segment import segment_tiles

    stages = dict.fromkeys(STAGES, 0.0)
    per_tile: dict[Any, int] = {}
    summaries = []
    core = plan.grid.core0
    shard = shard_tiles(core, plan.config.map_shard_px) * core
    create_maps(Path(plan.work_dir), plan.width, plan.height, plan.mpp, core, shard, False)
    t0 = time.perf_counter()
    for tile in tiles:
        if per_tile and time.perf_counter() > deadline:
            break
        for s in segment_tiles(plan, [tile]):
            for k, v in s.seconds.items():
                stages[k] = stages.get(k, 0.0) + v
            per_tile[s.tile] = s.n_nuclei
            summaries.append(s)
    # the tiles done; without the scale check (planning work, made beside the tiles: not a host stage here)
    done = dataclasses.replace(plan, tiles=tuple(t for t in plan.tiles if t in per_tile), scale_check_view=None)
    t1 = time.perf_counter()
    assembled = assemble_labels(done, chunks_to_assemble(done), [summaries])
    stages["assemble"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    stats = reduce_slide(done, [summaries], [assembled])
    stages["reduce"] = time.perf_counter() - t2
    return {
        "wall_s": time.perf_counter() - t0,
        "stage_s": stages,
        "n_nuclei": sum(per_tile.values()),
        "per_tile": per_tile,
        "tiles": len(per_tile),
        "stopped_by_budget": len(per_tile) < len(tiles),
        "reduce_nuclei": stats["n_nuclei"],
    }


def write_in_process(plan: Any, tile: Any, labels: np.ndarray, h_map: np.ndarray) -> tuple[int, dict[str, float]]:
    """A tile's polygons, table and label chunk, in a write process (as the pipeline writes them)."""
    import numcodecs

    from pipeline.slide.segment import write_tile_outputs

    return write_tile_outputs(plan, tile, labels, h_map, None, numcodecs.Zstd(level=3))


def warm_process(hold_s: float = 0.0) -> int:
    """Imports the write path in a write process (its initializer), and holds it a moment so that
    the warm-up tasks start every process of the pool before any clock starts."""
    warm_imports()
    time.sleep(hold_s)
    return os.getpid()


def warm_imports() -> None:
    """One-time costs of a process, paid before any clock: the write path's modules, and pyarrow's
    first conversion of a numpy array (it imports pandas, ~1 s here, once per process)."""
    import pyarrow as pa

    import pipeline.io.outputs.tables  # noqa: F401
    import pipeline.slide.segment  # noqa: F401

    pa.array(np.zeros(1))


class DeviceLoop:
    """The device path: every stage after the read on ``xp`` arrays (cupy: the GPU; numpy: the
    same code on the host), reads prefetched by host threads."""

    def __init__(self, plan: Any, model: Any, xp: Any, read_threads: int) -> None:
        self.plan, self.model, self.xp, self.read_threads = plan, model, xp, read_threads
        self.sync: Callable[[], None] = lambda: None
        if xp.__name__ == "cupy":
            self.sync = xp.cuda.get_current_stream().synchronize
        self.local = threading.local()
        self.opened: list[Any] = []  # each read thread's slide, closed when a run ends
        self.lock = threading.Lock()
        self.stages = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.stages[stage] += seconds

    def read(self, tile: Any) -> tuple[Any, np.ndarray]:
        from pipeline.io.readers import open_slide
        from pipeline.slide.segment import read_tile

        t0 = time.perf_counter()
        if not hasattr(self.local, "slide"):
            self.local.slide = open_slide(self.plan.slide_path, self.plan.reader)
            with self.lock:
                self.opened.append(self.local.slide)
        rgb = read_tile(self.local.slide, self.plan.grid, tile)
        self.add("read", time.perf_counter() - t0)
        return tile, np.ascontiguousarray(rgb)

    def prefetched(
        self, pool: ThreadPoolExecutor, tiles: list[Any], deadline: float
    ) -> Iterator[tuple[Any, np.ndarray]]:
        """Tiles read ahead in ``pool``; none handed out, and no new read started, after the
        deadline (one tile at least)."""
        pending: queue.Queue[Future[Any]] = queue.Queue()
        it = iter(tiles)
        for t in [next(it, None) for _ in range(2 * self.read_threads)]:
            if t is not None:
                pending.put(pool.submit(self.read, t))
        first = True
        while not pending.empty():
            if not first and time.perf_counter() > deadline:
                while not pending.empty():
                    pending.get().cancel()
                return
            first = False
            result = pending.get().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.put(pool.submit(self.read, nxt))
            yield result

    def segment(self, rgb: np.ndarray, timed: bool = True) -> tuple[Any, np.ndarray, np.ndarray]:
        """One tile through every device stage; the probabilities (on the device) and the compact
        label and haematoxylin maps (on the host)."""
        from pipeline.kernels.dispatch import to_host
        from pipeline.kernels.nuclei import instances_from_probabilities
        from pipeline.kernels.stain import haematoxylin
        from pipeline.slide.model_input import model_input, normalise_stain

        xp, sync, side = self.xp, self.sync, self.plan.grid.model_input_side
        t0 = time.perf_counter()
        dev = xp.asarray(rgb)
        sync()
        t1 = time.perf_counter()
        normalised = normalise_stain(dev, self.plan.stain)
        batch = model_input([normalised], side)
        sync()
        t2 = time.perf_counter()
        prob = self.model.predict_device(batch)[0, :, : rgb.shape[0], : rgb.shape[1]]
        sync()
        t3 = time.perf_counter()
        labels = instances_from_probabilities(prob, self.plan.thresholds)
        h_map = haematoxylin(normalised)
        sync()
        t4 = time.perf_counter()
        labels_host, h_host = to_host(labels), to_host(h_map)
        t5 = time.perf_counter()
        if timed:
            for name, sec in (
                ("upload", t1 - t0),
                ("normalise", t2 - t1),
                ("infer", t3 - t2),
                ("watershed", t4 - t3),
                ("download", t5 - t4),
            ):
                self.add(name, sec)
        return prob, labels_host, h_host

    def warm_up(self, tile: Any) -> float:
        """Every kernel of the tile chain once (cupy compiles each on first use; cuDNN picks its
        algorithms; the allocator pool grows), outside the clock."""
        from pipeline.kernels.nuclei import seed_components

        t0 = time.perf_counter()
        _, rgb = self.read(tile)
        prob, _, _ = self.segment(rgb, timed=False)
        seed_components(prob, self.plan.thresholds)
        self.sync()
        self.stages = dict.fromkeys(STAGES, 0.0)
        return time.perf_counter() - t0

    def run(
        self, tiles: list[Any], deadline: float, on_tile: Callable[[Any, np.ndarray, np.ndarray, Any], None]
    ) -> tuple[float, int]:
        """Tiles through the device stages until all are done or the deadline passes; ``on_tile``
        gets each tile's maps (and its probabilities, still on the device). Wall seconds, tiles."""
        n = 0
        t_start = time.perf_counter()
        try:
            with ThreadPoolExecutor(self.read_threads) as readers:
                for tile, rgb in self.prefetched(readers, tiles, deadline):
                    prob, labels, h_map = self.segment(rgb)
                    on_tile(tile, labels, h_map, prob)
                    n += 1
        finally:
            for slide in self.opened:  # the pool's threads are gone: a new run opens its own
                slide.close()
            self.opened.clear()
            self.local = threading.local()
        return time.perf_counter() - t_start, n


# -------------------------------------------------------------------------------- main ----


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 2
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="gpu", help="gpu: device path on cupy; cpu: on numpy")
    p.add_argument("--side", type=int, default=8704, help="side of the generated slide, level-0 px (8704: 16 tiles)")
    p.add_argument(
        "--tile-px", type=int, default=2176, help="tile core (2176: the pipeline's GPU default with the shipped model)"
    )
    p.add_argument("--spacing", type=float, default=15.0, help="nucleus grid spacing, px (14–16: many touch)")
    p.add_argument("--radius", type=float, nargs=2, default=(6.0, 9.0), metavar=("MIN", "MAX"))
    p.add_argument(
        "--model", default="", help="ONNX file, 'blob', 'random-unet'; default: shipped model, else random-unet"
    )
    p.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "torch"])
    p.add_argument("--half", action="store_true", help="float16 inference on the device path")
    p.add_argument("--cpu-tiles", type=int, default=1, help="tiles for the CPU path (0 = skip it)")
    p.add_argument("--device-tiles", type=int, default=0, help="tiles for the device phases (0 = all)")
    p.add_argument("--read-threads", type=int, default=max(2, cores // 2))
    p.add_argument("--write-procs", type=int, default=max(1, cores // 2), help="processes for the writes")
    p.add_argument("--cpu-budget-s", type=float, default=30.0, help="no new CPU tile after this")
    p.add_argument(
        "--device-budget-s", type=float, default=25.0, help="no new tile after this, per device phase (after warm-up)"
    )
    p.add_argument(
        "--writes-budget-s", type=float, default=40.0, help="writes_after: pending writes dropped after this"
    )
    p.add_argument("--watchdog-s", type=float, default=0.0, help="dump every thread's stack after this (0 = off)")
    p.add_argument("--out", type=Path, default=None, help="results (JSON, Markdown, nvidia-smi samples)")
    p.add_argument("--work", type=Path, default=None, help="slide, model and tile files (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.watchdog_s > 0:
        faulthandler.dump_traceback_later(args.watchdog_s, exit=False)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-work-"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cores = os.cpu_count() or 1
    results = Results(
        out,
        {
            "machine": f"{platform.node()} {platform.machine()} {cores} cores, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        },
    )
    state: dict[str, Any] = {}
    try:
        ok = run_phases(args, results, state, work, cores)
    finally:
        pool = state.get("procs")
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        faulthandler.cancel_dump_traceback_later()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(results.data), flush=True)
    return 0 if ok else 1


def run_phases(args: argparse.Namespace, results: Results, state: dict[str, Any], work: Path, cores: int) -> bool:
    from pipeline.cluster import tune_allocator
    from pipeline.config import Config
    from pipeline.kernels.nuclei import seed_components
    from pipeline.manifest import SlideEntry
    from pipeline.runtime import CPU_DEVICE_ID
    from pipeline.runtime.session import NucleusModel
    from pipeline.slide import model_for, plan_slide

    data = results.data
    # the malloc thresholds the pipeline's workers run with (their plugin sets them): the tile
    # stages here are timed as they run there
    data["allocator_tuned"] = tune_allocator()

    def setup(deadline: float) -> None:
        if args.device == "gpu":
            import cupy as xp

            data["device_name"] = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        else:
            xp = np
            data["device_name"] = "none (device loop on numpy arrays, CPU)"
        model_path, data["model"] = benchmark_model(args.model, work)
        t0 = time.perf_counter()
        slide, drawn = generated_slide(work, args.side, args.spacing, tuple(args.radius))
        config = Config(model=str(model_path), tile_px=args.tile_px, intra_op_threads=cores, progress=False)
        plan = plan_slide(SlideEntry(slide.stem, slide), str(work / "plan"), config)
        tiles = list(plan.tiles)
        data["slide"] = {
            "side_px": args.side,
            "tile_px": args.tile_px,
            "tiles_total": len(tiles),
            "compression": slide_compression(),
            "generation_s": round(time.perf_counter() - t0, 1),
            **drawn,
        }
        model = NucleusModel(
            model_path,
            intra_op_threads=cores,
            runtime=args.runtime,
            device_id=0 if args.device == "gpu" else CPU_DEVICE_ID,
            half=args.half and args.device == "gpu",
            trt_cache_dir=str(work / "trt-cache"),
        )
        data.update(runtime=model.runtime, inference_device=model.device, half=bool(model.half))
        cpu_config = config.replace(device="cpu")  # inference on the CPU too (model_for), whatever the node has
        model_for(cpu_config, str(model_path))  # the CPU session, created outside the clock
        warm_imports()
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding a CUDA context
        procs = ProcessPoolExecutor(max_workers=max(1, args.write_procs), mp_context=ctx, initializer=warm_process)
        state["procs"] = procs
        started = set(procs.map(warm_process, [0.3] * max(1, args.write_procs)))
        data["write_procs_started"] = len(started)
        state.update(
            xp=xp,
            model=model,
            plan=plan,
            cpu_plan=dataclasses.replace(plan, config=cpu_config),
            tiles=tiles,
            device_tiles=tiles[: args.device_tiles] if args.device_tiles else tiles,
        )
        data["write_procs"] = args.write_procs

    if not results.phase("setup", None, setup):
        return False
    plan, tiles, xp, model, procs = state["plan"], state["tiles"], state["xp"], state["model"], state["procs"]
    ok = True
    per_tile_counts: dict[str, dict[Any, int]] = {}

    def cpu(deadline: float) -> dict[str, Any]:
        r = cpu_path(with_work_dir(state["cpu_plan"], work / "cpu"), tiles[: args.cpu_tiles], deadline)
        per_tile_counts["cpu"] = r["per_tile"]
        return per_gpx(r, tissue_gigapixels(plan, list(r["per_tile"])))

    if args.cpu_tiles:
        ok &= results.phase("cpu", args.cpu_budget_s, cpu)

    kept: list[tuple[Any, np.ndarray, np.ndarray]] = []

    def device_stages(deadline: float) -> dict[str, Any]:
        loop = DeviceLoop(with_work_dir(plan, work / "stages"), model, xp, args.read_threads)
        warm_s = loop.warm_up(state["device_tiles"][0])
        deadline += warm_s  # the warm-up is not the loop's time
        seeds: list[dict[str, int]] = []

        def keep(tile: Any, labels: np.ndarray, h_map: np.ndarray, prob: Any) -> None:
            kept.append((tile, labels, h_map))
            if len(seeds) < SEED_COUNT_TILES:
                t0 = time.perf_counter()
                seeds.append(seed_components(prob, plan.thresholds))
                loop.add("uncounted", time.perf_counter() - t0)

        loop.stages["uncounted"] = 0.0
        with GpuSampler(results.out / "nvidia_smi_device_stages.csv") as sampler:
            wall, n = loop.run(state["device_tiles"], deadline, keep)
        uncounted = loop.stages.pop("uncounted")
        tiles_done = [t for t, _, _ in kept]
        r = {
            "wall_s": wall - uncounted,  # the seed counts are not the device path's work
            "stage_s": loop.stages,
            "n_nuclei": None,  # counted by the writes (writes_after)
            "tiles": n,
            "stopped_by_budget": n < len(state["device_tiles"]),
            "gpu_sampling": sampler.summary(),
            "warm_up_s": round(warm_s, 2),
            "multi_seed_components": {
                "per_tile": [s["multi_seed_components"] for s in seeds],
                "components_per_tile": [s["components"] for s in seeds],
                "seeds_per_tile": [s["seeds"] for s in seeds],
            },
        }
        return per_gpx(r, tissue_gigapixels(plan, tiles_done))

    ok &= results.phase("device_stages", args.device_budget_s, device_stages)

    def writes_after(deadline: float) -> dict[str, Any]:
        if not kept:
            raise RuntimeError("device_stages kept no tile to write")
        target = with_work_dir(plan, work / "stages")
        t0 = time.perf_counter()
        futures = {procs.submit(write_in_process, target, tile, labels, h_map): tile for tile, labels, h_map in kept}
        done, pending = wait_futures(futures, timeout=max(1.0, deadline - time.perf_counter()))
        for f in pending:
            f.cancel()
        finished = [f for f in done if f.exception() is None]
        failed = [f for f in done if f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} writes failed; first: {failed[0].exception()!r}")
        stages = dict.fromkeys(STAGES, 0.0)
        counts = {}
        for f in finished:
            n, seconds = f.result()
            counts[futures[f]] = n
            for k, v in seconds.items():
                stages[k] += v
        wall = time.perf_counter() - t0
        kept.clear()  # the maps' memory back before the next phase
        per_tile_counts["device"] = counts
        r = {"wall_s": wall, "stage_s": stages, "n_nuclei": sum(counts.values()), "tiles": len(counts)}
        r["stopped_by_budget"] = bool(pending)
        return per_gpx(r, tissue_gigapixels(plan, list(counts)))

    ok &= results.phase("writes_after", args.writes_budget_s, writes_after)

    def device_full(deadline: float) -> dict[str, Any]:
        target = with_work_dir(plan, work / "full")
        loop = DeviceLoop(target, model, xp, args.read_threads)
        writes: dict[Future[Any], Any] = {}

        def hand_over(tile: Any, labels: np.ndarray, h_map: np.ndarray, prob: Any) -> None:
            writes[procs.submit(write_in_process, target, tile, labels, h_map)] = tile

        with GpuSampler(results.out / "nvidia_smi_device_full.csv") as sampler:
            t0 = time.perf_counter()
            _, n = loop.run(state["device_tiles"], deadline, hand_over)
            # the writes still queued get the writes' budget after the loop's
            done, pending = wait_futures(
                writes, timeout=max(1.0, deadline + args.writes_budget_s - time.perf_counter())
            )
            wall = time.perf_counter() - t0
        for f in pending:
            f.cancel()
        counts = {}
        for f in done:
            written, seconds = f.result()  # a failed write fails the phase, with its error
            counts[writes[f]] = written
            for k, v in seconds.items():
                loop.add(k, v)
        per_tile_counts["device_full"] = counts
        r = {
            "wall_s": wall,
            "stage_s": loop.stages,
            "n_nuclei": sum(counts.values()),
            "tiles": n,
            "stopped_by_budget": n < len(state["device_tiles"]) or bool(pending),
            "gpu_sampling": sampler.summary(),
        }
        if pending:
            r["writes_unfinished"] = len(pending)
        return per_gpx(r, tissue_gigapixels(plan, list(counts)))

    ok &= results.phase("device_full", args.device_budget_s, device_full)

    if "cpu" in data and "device_full" in data:
        data["speedup_device_over_cpu"] = round(data["cpu"]["s_per_gpx"] / data["device_full"]["s_per_gpx"], 2)
    shared = set.intersection(*(set(c) for c in per_tile_counts.values())) if per_tile_counts else set()
    if shared:
        data["nuclei_on_shared_tiles"] = {"tiles": len(shared)} | {
            name: sum(c[t] for t in shared) for name, c in per_tile_counts.items()
        }
    if args.device == "gpu" and "device_full" in data:
        data["goal_met"] = bool(data["device_full"]["projected_10gpx_s"] <= GOAL_SECONDS)
    results.save()
    return bool(ok)


if __name__ == "__main__":
    sys.exit(main())
