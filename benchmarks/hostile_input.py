"""Resource bounds on hostile input: peak memory and seconds of the
low-resolution view on two hostile but valid TIFFs, and the cost of tile tasks on a plain image.

* ``wide``: a 1 MB tiled TIFF (white, Deflate) whose header declares 300,000 × 1,000 px;
* ``sparse``: a 34 MB one-level tiled TIFF of 100,000² px of glass (no pyramid);
* ``png``: 16 tile tasks (each opens the slide and reads a 1,024² window) on a 4,000² PNG.

The baselines are measured in the same run: the view as it was (bands of 1,024 rows read across
the whole width, reproduced below as ``whole_width_view``) and a plain image decoded by every
task (``decode_image`` without the per-process cache). Each view runs in a fresh process, whose
own peak resident memory (``VmHWM``, ``pipeline.testing.memory``) is reported; the interpreter
with the package imported is measured alone as ``imports``.

    python benchmarks/hostile_input.py [--baseline-limit 240]   (from the repository root)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.testing import glass_tiff  # noqa: E402  (the hostile files: the tests' own generator)


def whole_width_view(slide, max_side: int = 2048, strip_px: int = 1024):  # type: ignore[no-untyped-def]
    """The low-resolution view without bounded blocks: bands of ``strip_px`` rows read across the whole
    width of the level, whatever the width (the baseline)."""
    w0, h0 = slide.level_dimensions[0]
    target = max(1.0, max(w0, h0) / max_side)
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= target + 1e-6:
            level = i
    lw, lh = slide.level_dimensions[level]
    factor = max(1, int(math.ceil(max(lw, lh) / max_side)))
    out_w, out_h = math.ceil(lw / factor), math.ceil(lh / factor)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows = max(factor, (strip_px // factor) * factor)
    for y in range(0, lh, rows):
        strip = slide.read_region(0, y, out_w * factor, min(rows, lh - y), level).astype(np.float32)
        pad = (-strip.shape[0]) % factor
        if pad:
            strip = np.concatenate([strip, np.repeat(strip[-1:], pad, axis=0)])
        blocks = strip.reshape(strip.shape[0] // factor, factor, out_w, factor, 3).mean(axis=(1, 3))
        out[y // factor : y // factor + blocks.shape[0]] = np.round(blocks).astype(np.uint8)
    return out, slide.level_downsamples[level] * factor


CHILD = """
import sys, time, json
sys.path.insert(0, {root!r})
from pipeline.io.readers import SlideError, low_resolution_view, open_slide
from pipeline.testing.memory import own_peak_rss_bytes
from benchmarks.hostile_input import whole_width_view
view = {{"baseline": whole_width_view, "now": low_resolution_view}}.get({method!r})
t = time.perf_counter()
outcome = "imports only"
if view is not None:
    try:
        with open_slide({path!r}) as slide:
            image, ds = view(slide)
        outcome = f"view {{image.shape[1]}}×{{image.shape[0]}} px, downsample {{ds:g}}"
    except SlideError as exc:
        outcome = f"refused: {{str(exc)[:90]}}…"
peak_mb = own_peak_rss_bytes() / 2**20
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_mb": peak_mb, "outcome": outcome}}))
"""


def measure_view(path: Path, method: str, limit: float) -> dict:
    """Peak RSS and seconds of one view in a fresh process; stopped after ``limit`` seconds
    (then the peak is sampled from outside, every 0.5 s)."""
    import psutil

    code = CHILD.format(root=str(ROOT), method=method, path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    watched = psutil.Process(proc.pid)
    started, peak = time.perf_counter(), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        if time.perf_counter() - started > limit:
            proc.kill()
            proc.wait()
            return {"seconds": None, "peak_mb": peak / 2**20, "outcome": f"stopped after {limit:.0f} s"}
        time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    return json.loads(out.strip().splitlines()[-1])


def plain_image_tasks(folder: Path, tasks: int = 16) -> tuple[float, float]:
    """Seconds for ``tasks`` tile tasks on a 4,000² PNG: every task decoding the image (before),
    and through ``open_slide`` with the per-process cache (now)."""
    from PIL import Image

    from pipeline.io.readers import open_slide
    from pipeline.io.readers.image import ArraySlide, decode_image, decoded_image
    from pipeline.testing import synthetic_slide_image

    tile, _ = synthetic_slide_image(1000, 1000, seed=0, tissue="full")
    path = folder / "plain.png"
    Image.fromarray(np.tile(tile, (4, 4, 1))).save(path)
    windows = [(x, y) for y in range(0, 4000, 1000) for x in range(0, 4000, 1000)][:tasks]
    t0 = time.perf_counter()
    for x, y in windows:
        image, res = decode_image(path)
        ArraySlide(image, mpp=None, path=path, resolution=res).read_region(x, y, 1024, 1024)
    before = time.perf_counter() - t0
    decoded_image.cache_clear()
    t0 = time.perf_counter()
    for x, y in windows:
        with open_slide(path) as slide:
            slide.read_region(x, y, 1024, 1024)
    return before, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--baseline-limit", type=float, default=240.0, help="seconds before a baseline view is stopped")
    args = p.parse_args()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, {datetime.date.today()}")
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        folder = Path(tmp)
        files = {
            "wide 300,000×1,000": glass_tiff(folder / "wide.tif", 300_000, 1_000),
            "sparse 100,000²": glass_tiff(folder / "sparse.tif", 100_000, 100_000),
        }
        imports = measure_view(files["wide 300,000×1,000"], "imports", args.baseline_limit)
        print(f"imports: peak {imports['peak_mb']:.0f} MB")
        print("| file | size on disk | view | peak MB | seconds | outcome |")
        print("|---|---|---|---|---|---|")
        for name, path in files.items():
            results = {m: measure_view(path, m, args.baseline_limit) for m in ("baseline", "now")}
            for method, r in results.items():
                seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "—"
                size = f"{path.stat().st_size / 1e6:.1f} MB"
                print(f"| {name} | {size} | {method} | {r['peak_mb']:.0f} | {seconds} | {r['outcome']} |")
            ratio = results["baseline"]["peak_mb"] / results["now"]["peak_mb"]
            print(f"{name}: peak memory baseline / now = {ratio:.1f}×")
        before, now = plain_image_tasks(folder)
        print(f"16 tile tasks on a 4,000² PNG: decoded by every task {before:.2f} s, decoded once {now:.2f} s")
        print(f"ratio (before / now): {before / now:.1f}×")


if __name__ == "__main__":
    main()
