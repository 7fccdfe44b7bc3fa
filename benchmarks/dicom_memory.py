"""Memory and time of one tile task's DICOM read: open a slide, read one region, close it, in a
fresh process each time; the previous reader (every frame's bytes read on open, kept verbatim in
``tests/reference/dicom_eager.py``) against the lazy pydicom reader and wsidicom, in the same run.

    python benchmarks/dicom_memory.py --sides 4096 8192 --region 512 --out DIR

Setup (outside every measurement): for each side, a generated slide (a 1024² synthetic H&E image
tiled to side × side, so every frame holds tissue) written as a one-level DICOM WSI of 256²
JPEG frames, TILED_FULL, PixelSpacing 0.25 µm. Each measurement is a child process that imports
the reader, notes its peak RSS (``VmHWM``), opens the slide, reads one ``region``² window at
the slide's centre, closes it and notes its peak RSS again: the difference is what the read
cost in memory (imports excluded). ``--repeats`` rounds, readers alternating, the smallest of
each. Results: ``<out>/dicom_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

FRAME = 256  # frame side of the generated slides (a common scanner export)

CHILD = r"""
import json, sys, time
sys.path[:0] = [{root!r}]
from pathlib import Path
reader, path, side, region = {reader!r}, Path({path!r}), {side}, {region}
if reader == "previous":
    from tests.reference.dicom_eager import DicomSlide
    open_ = DicomSlide.open
else:
    import pydicom, imagecodecs
    from pipeline.io.readers import open_slide
    if reader == "wsidicom":
        import wsidicom
    open_ = lambda p: open_slide(p, reader)
from pipeline.testing.memory import own_peak_rss_bytes  # not ru_maxrss: it keeps the parent's peak
before = own_peak_rss_bytes() // 1024
t0 = time.perf_counter()
slide = open_(path)
t1 = time.perf_counter()
x = y = (side - region) // 2
block = slide.read_region(x, y, region, region)
t2 = time.perf_counter()
slide.close()
after = own_peak_rss_bytes() // 1024
print(json.dumps({{"rss_before_kib": before, "rss_peak_kib": after, "open_s": t1 - t0, "read_s": t2 - t1,
                  "mean": float(block.mean())}}))
"""


def measure(reader: str, path: Path, side: int, region: int) -> dict[str, Any]:
    code = CHILD.format(root=str(ROOT), reader=reader, path=str(path), side=side, region=region)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def generated_slide(folder: Path, side: int) -> Path:
    from pipeline.testing import synthetic_slide_image
    from pipeline.testing.dicom import write_dicom_wsi

    block, _ = synthetic_slide_image(1024, 1024, seed=4, tissue="full")
    reps = -(-side // 1024)
    image = np.tile(block, (reps, reps, 1))[:side, :side]
    (path,) = write_dicom_wsi(folder / f"side{side}", image, mpp=0.25, tile=FRAME, levels=1, name="slide")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--region", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmark_dicom"))
    args = parser.parse_args(argv)
    from pipeline.io.readers.wsidicom import wsidicom_available

    readers = ["previous", "dicom"] + (["wsidicom"] if wsidicom_available() else [])
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/dicom_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "region": args.region,
        "frame": FRAME,
        "slides": [],
    }
    with tempfile.TemporaryDirectory(prefix="dicom-memory-") as tmp:
        for side in args.sides:
            path = generated_slide(Path(tmp), side)
            runs: dict[str, list[dict[str, Any]]] = {r: [] for r in readers}
            for _ in range(args.repeats):
                for reader in readers:
                    runs[reader].append(measure(reader, path, side, args.region))
            means = {r: round(runs[r][0]["mean"], 3) for r in readers}
            if len(set(means.values())) != 1:
                raise SystemExit(f"the readers disagree on the region's pixels: {means}")
            row: dict[str, Any] = {"side": side, "file_mib": round(path.stat().st_size / 2**20, 1)}
            for reader in readers:
                row[reader] = {
                    "read_mib": round(min(r["rss_peak_kib"] - r["rss_before_kib"] for r in runs[reader]) / 1024, 1),
                    "peak_rss_mib": round(min(r["rss_peak_kib"] for r in runs[reader]) / 1024, 1),
                    "open_s": round(min(r["open_s"] for r in runs[reader]), 4),
                    "read_s": round(min(r["read_s"] for r in runs[reader]), 4),
                }
            for reader in readers:  # the baseline's read memory over this reader's
                row[reader]["previous_over_this"] = round(
                    row["previous"]["read_mib"] / max(row[reader]["read_mib"], 0.1), 1
                )
            results["slides"].append(row)
            print(json.dumps(row))
    (args.out / "dicom_memory.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"{results['date']}, {results['machine']}",
        f"`{results['command']}`: one {args.region}² region at the centre, {FRAME}² JPEG frames",
        "",
        "| side | file MiB | reader | read MiB (peak RSS − RSS after imports) | previous ÷ this | peak RSS MiB "
        "| open s | read s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["slides"]:
        for reader in readers:
            r = row[reader]
            lines.append(
                f"| {row['side']} | {row['file_mib']} | {reader} | {r['read_mib']} | {r['previous_over_this']} "
                f"| {r['peak_rss_mib']} "
                f"| {r['open_s']} | {r['read_s']} |"
            )
    (args.out / "dicom_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
