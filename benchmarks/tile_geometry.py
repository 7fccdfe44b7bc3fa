"""Model pixels inferred per pixel of tissue, by tile core, on real tissue outlines.

    python benchmarks/tile_geometry.py [--cores 1024,1536,2176,3072] [--out DIR]

Square benchmark slides covered with tissue put exactly (core + 2 halos)² / core² window pixels
through the model per core pixel. A real slide's tissue has an outline: every tile whose core
touches it is read whole, so a larger core also takes in more glass. This plans real slides
(``wsi_fixtures`` in the project's data folder) with the pipeline's own ``plan_slide`` (its tissue view, artifact
exclusion, scale and tile grid, the shipped model's halo) once per core size, and reports, per
slide and core: tissue tiles, window pixels inferred (tiles × model window²) over the tissue's
area at the model's resolution, and the same over the 1024-px core's. Planning only: no tile is
read or segmented. Results: ``<out>/tile_geometry.json`` and ``.md``.

The fixtures' resolutions are the pipeline's: stated (CMU-1-Small-Region, 0.499 µm/px) or
estimated from the nuclei (TCGA-CR-7395, a frozen section without metadata, ~1 µm/px by eye).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FIXTURES = ROOT.parent / "shared" / "data" / "wsi_fixtures"
SLIDES = ("tcga-cr-7395-01a-01-ts1.svs", "CMU-1-Small-Region.svs")  # small_dicom: 4.64 µm/px, refused


def plan_geometry(path: Path, core: int, out: Path) -> dict[str, Any]:
    import warnings

    from pipeline.config import Config
    from pipeline.manifest import SlideEntry
    from pipeline.slide.plan import plan_slide

    config = Config(tile_px=core)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the slides' scale notes: reported below as their mpp
        plan = plan_slide(SlideEntry(path.stem, path), str(out), config)
    grid = plan.grid
    model_px_mm2 = (grid.scale * plan.mpp / 1000) ** 2  # grid.scale: level-0 px per model px
    tissue_model_px = plan.tissue_mm2 / model_px_mm2
    window_px = len(plan.tiles) * grid.model_input_side**2
    return {
        "slide": path.name,
        "mpp": round(plan.mpp, 4),
        "mpp_source": plan.mpp_source,
        "core_px": core,
        "tissue_mm2": round(plan.tissue_mm2, 2),
        "tiles": len(plan.tiles),
        "window_px_per_tissue_px": round(window_px / tissue_model_px, 3),
        "square_ratio": round(grid.model_input_side**2 / core**2, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="1024,1536,2176,3072")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    cores = [int(c) for c in args.cores.split(",")]
    slides = [FIXTURES / name for name in SLIDES if (FIXTURES / name).exists()]
    if not slides:
        sys.exit(f"error: no fixture slides under {FIXTURES}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in slides:
            for core in cores:
                started = time.perf_counter()
                row = plan_geometry(path, core, Path(tmp) / f"{path.stem}_{core}")
                row["plan_s"] = round(time.perf_counter() - started, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    for row in rows:
        base = next(r for r in rows if r["slide"] == row["slide"] and r["core_px"] == cores[0])
        row[f"over_{cores[0]}"] = round(row["window_px_per_tissue_px"] / base["window_px_per_tissue_px"], 3)
    meta = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tile_geometry.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        f"{meta['date']}, {meta['machine']}: `{meta['command']}`",
        "",
        "| slide | µm/px (source) | tissue mm² | core | tiles | window px per tissue px | square slide "
        f"| over {cores[0]} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['slide']} | {r['mpp']} ({r['mpp_source']}) | {r['tissue_mm2']} | {r['core_px']} | {r['tiles']} "
            f"| {r['window_px_per_tissue_px']} | {r['square_ratio']} | {r[f'over_{cores[0]}']} |"
        )
    (args.out / "tile_geometry.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
