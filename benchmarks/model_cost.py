"""What a model costs to run on this CPU, against a baseline model, in one run.

    python benchmarks/model_cost.py CANDIDATE.onnx [--baseline BASELINE.onnx] [--tile 1376] [--threads 2]

Both files run through ONNX Runtime on the same tile (random RGB in [0, 1], batch 1, the
pipeline's CPU window by default: a 1024-px core with its halo) with the same threads; runs
alternate between the two models so that a busy machine slows both alike. Prints each model's
best and median seconds per run and microseconds per megapixel, and the candidate/baseline
ratio of the medians. The baseline defaults to the shipped model.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    from pipeline.runtime.session import SHIPPED_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("candidate", type=Path)
    p.add_argument("--baseline", type=Path, default=SHIPPED_MODEL)
    p.add_argument("--tile", type=int, default=1376, help="tile side in px (a multiple of 16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    x = np.random.default_rng(0).random((1, 3, args.tile, args.tile), dtype=np.float32)
    models = {"baseline": args.baseline, "candidate": args.candidate}
    sessions = {name: session(path, args.threads) for name, path in models.items()}
    for s in sessions.values():  # warm-up: first-run allocations
        s.run(None, {"image": x})
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"image": x})
            times[name].append(time.perf_counter() - t0)
    mpx = args.tile * args.tile / 1e6
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "command": "python benchmarks/model_cost.py " + " ".join(argv if argv is not None else []),
        "tile_px": args.tile,
        "threads": args.threads,
    }
    for name, path in models.items():
        best, median = min(times[name]), statistics.median(times[name])
        result[name] = {"file": str(path), "best_s": best, "median_s": median, "us_per_mpx": median / mpx * 1e6}
        print(f"{name:<10} {path.name:<32} best {best:6.3f} s  median {median:6.3f} s  {median / mpx:6.3f} s/Mpx")
    ratio = result["candidate"]["median_s"] / result["baseline"]["median_s"]
    result["ratio"] = ratio
    print(f"candidate / baseline (median time per pixel): {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
