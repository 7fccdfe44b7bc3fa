"""maps.zarr as OME-NGFF 0.5 (sharded, multiscale) against the previous layout (one Zarr v3
array, one chunk file per tile core, one level), on the same generated label map, in the same run:

    python benchmarks/maps_pyramid.py --sides 8192 16384 --out DIR

For each slide side: the label map of a generated slide (``pipeline.testing.synthetic_label_region``:
nuclei on a tissue disc covering ~64 % of the slide, ~1,500 nuclei per tissue Mpx), made window by
window outside every clock (again for each layout), is written

* ``previous``: chunk by chunk (one tile core each), as the assembly wrote the old maps.zarr;
* ``ome``: shard by shard (``map_shard_px`` cores), as the assembly writes level 0 now; then
  ``build_pyramid`` (the reduce's step) makes the lower levels, timed alone, and again under
  ``tracemalloc`` for its peak of Python-allocated memory (numpy and zarr's buffers).

Figures: files and bytes of maps.zarr, seconds, and the ratios new / previous; the pyramid's
peak memory against one shard and against the level-0 map. Results: ``<out>/maps_pyramid.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

MPP = 0.25  # µm/px: a 40x slide


def tree(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def label_windows(side: int, shard: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """The generated slide's label map, one shard-sized window at a time: (y0, x0, labels)."""
    from pipeline.testing import synthetic_label_region

    for y0 in range(0, side, shard):
        for x0 in range(0, side, shard):
            yield y0, x0, synthetic_label_region(side, side, (x0, y0, min(x0 + shard, side), min(y0 + shard, side)))


def write_previous(folder: Path, side: int, core: int, shard: int) -> float:
    """The previous maps.zarr: ``labels`` uint32, chunks = tile core, written one core at a time.
    Seconds of the writes only."""
    import zarr

    root = zarr.open_group(str(folder / "maps.zarr"), mode="w")
    labels = root.create_array("labels", shape=(side, side), chunks=(core, core), dtype="uint32", fill_value=0)
    seconds = 0.0
    for y0, x0, window in label_windows(side, shard):
        t0 = time.perf_counter()
        for cy in range(0, window.shape[0], core):
            for cx in range(0, window.shape[1], core):
                chunk = window[cy : cy + core, cx : cx + core]
                if chunk.any():
                    labels[y0 + cy : y0 + cy + chunk.shape[0], x0 + cx : x0 + cx + chunk.shape[1]] = chunk
        seconds += time.perf_counter() - t0
    return seconds


def write_ome(folder: Path, side: int, core: int, shard: int) -> tuple[float, int]:
    """maps.zarr now: level 0 written one whole shard at a time (as ``assemble_labels``).
    Seconds of the writes only, and the number of nuclei."""
    from pipeline.io.outputs.maps import create_maps, open_maps

    create_maps(folder, side, side, MPP, core, shard, probabilities=False)
    labels = open_maps(folder)["labels/0"]
    seconds, nuclei = 0.0, 0
    for y0, x0, window in label_windows(side, shard):
        nuclei += len(np.unique(window)) - 1
        t0 = time.perf_counter()
        if window.any():
            labels[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
        seconds += time.perf_counter() - t0
    return seconds, nuclei


def measure(side: int, core: int, shard_px: int, work: Path) -> dict[str, Any]:
    from pipeline.io.outputs.maps import build_pyramid, pyramid_shapes, shard_tiles

    shard = shard_tiles(core, shard_px) * core
    previous_dir, ome_dir = work / f"previous{side}", work / f"ome{side}"
    previous_dir.mkdir()
    ome_dir.mkdir()
    previous_s = write_previous(previous_dir, side, core, shard)
    level0_s, nuclei = write_ome(ome_dir, side, core, shard)
    t0 = time.perf_counter()
    build_pyramid(ome_dir)
    pyramid_s = time.perf_counter() - t0
    tracemalloc.start()
    build_pyramid(ome_dir)  # the same step again, for its memory (rewrites the same shards)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    previous_files, previous_bytes = tree(previous_dir / "maps.zarr")
    ome_files, ome_bytes = tree(ome_dir / "maps.zarr")
    level0 = ome_dir / "maps.zarr" / "labels" / "0"
    level0_files = sum(1 for p in level0.rglob("*") if p.is_file() and p.name != "zarr.json")
    return {
        "side": side,
        "tile_core_px": core,
        "shard_px": shard,
        "levels": [list(s) for s in pyramid_shapes(side, side)],
        "nuclei": nuclei,
        "previous": {"files": previous_files, "bytes": previous_bytes, "write_s": round(previous_s, 2)},
        "ome": {
            "files": ome_files,
            "level0_files": level0_files,
            "bytes": ome_bytes,
            "level0_write_s": round(level0_s, 2),
            "pyramid_s": round(pyramid_s, 2),
            "pyramid_peak_mb": round(peak / 2**20, 1),
        },
        "files_ratio": round(ome_files / previous_files, 4),
        "level0_write_ratio": round(level0_s / previous_s, 3),
        "pyramid_to_level0_write": round(pyramid_s / level0_s, 3),
        "shard_mb": round(shard * shard * 4 / 2**20, 1),
        "level0_mb": round(side * side * 4 / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--core", type=int, default=1024, help="tile core in level-0 px (tile_px 1024 at 40x)")
    p.add_argument("--shard-px", type=int, default=4096, help="map_shard_px")
    p.add_argument("--out", type=Path, default=Path("maps_pyramid_out"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for side in args.sides:
            row = measure(side, args.core, args.shard_px, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| side | nuclei | files previous → OME | ratio | level-0 write s previous → OME | ratio |", end="")
    print(" pyramid s | pyramid / level-0 write | pyramid peak MB (shard MB, level-0 MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        prev, ome = r["previous"], r["ome"]
        print(
            f"| {r['side']}² | {r['nuclei']:,} | {prev['files']} → {ome['files']} "
            f"({ome['level0_files']} level-0 shards) "
            f"| {r['files_ratio']:.3f} | {prev['write_s']:.2f} → {ome['level0_write_s']:.2f} | "
            f"{r['level0_write_ratio']:.2f} | {ome['pyramid_s']:.2f} | {r['pyramid_to_level0_write']:.2f} | "
            f"{ome['pyramid_peak_mb']:.0f} ({r['shard_mb']:.0f}, {r['level0_mb']:.0f}) |"
        )
    record = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": " ".join(["python", "benchmarks/maps_pyramid.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rows": rows,
    }
    (args.out / "maps_pyramid.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
