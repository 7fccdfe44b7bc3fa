"""The kernels of a slide's ``tissue_view`` planning stage, current code against the previous code,
in the same run on the same low-resolution views: seconds and whether the outputs are identical.

    python benchmarks/tissue_view.py [--side 2048] [--repeats 5] [--plan] [--out DIR]

The views (outside every clock): a generated slide image of ``--side``² px, tissue everywhere
(``synthetic_slide_image(side, side, seed=1, tissue="full", spacing=24)``), and the same image
with four semi-opaque marker strokes painted across it, green, blue, black and red (as
``benchmarks/ink_mask.py`` paints them). Each view is taken as the view of a slide at 0.25 µm/px
read at downsample 32 (the smallest artifact region: ``min_artifact_px(32, 0.25)`` pixels).

What ``plan_slide`` runs on the view, one thread: ``tissue_mask``, ``artifact_masks``, the
ink-free tissue, ``reinhard_stats`` of it, then (``find_artifacts``) ``artifacts_on_tissue`` and
the excluded pixels. The previous code is kept verbatim in ``tests/reference/tissue_view.py``.
``--repeats`` times, previous and current alternately (so that a busy machine slows both
alike), the best time of each kernel and of the whole. Identical: every mask equal and the
``StainStats`` floats equal. With ``--plan``, also the whole stage as ``plan_slide`` times it
(``stage_seconds["tissue_view"]``: reading the view too) on a generated ``--side``² slide (as
``gpu_benchmark.py``, blob model), with the five kernels of ``pipeline.slide.plan`` swapped for
the previous ones and back, alternately. Results: ``<out>/tissue_view.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

STAGES = ("tissue_mask", "artifact_masks", "reinhard_stats", "artifacts_on_tissue")


def views(side: int) -> dict[str, np.ndarray]:
    from ink_mask import INKS, stroke_mask

    from pipeline.testing import synthetic_slide_image

    clean, _ = synthetic_slide_image(side, side, seed=1, tissue="full", spacing=24)
    inked = clean.copy()
    for k, colour in enumerate(INKS.values()):
        band = stroke_mask(clean.shape[:2], seed=k, width=max(4, side // 34))
        inked[band] = (0.15 * clean[band] + 0.85 * np.array(colour)).astype(np.uint8)
    return {"no ink": clean, "four inks": inked}


def tissue_view(kernels: Any, view: np.ndarray, min_px: int, clock: dict[str, float]) -> dict[str, Any]:
    """The planning's kernels on a view, each timed into ``clock`` (seconds, added)."""
    t0 = time.perf_counter()
    tissue = kernels.tissue_mask(view)
    t1 = time.perf_counter()
    masks = kernels.artifact_masks(view, min_px)
    t2 = time.perf_counter()
    clean = tissue & ~kernels.artifact_mask(masks)
    stain = kernels.reinhard_stats(view, clean)
    t3 = time.perf_counter()
    on_tissue = kernels.artifacts_on_tissue(masks, tissue)
    excluded = kernels.artifact_mask(on_tissue)
    t4 = time.perf_counter()
    for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
        clock[stage] = clock.get(stage, 0.0) + seconds
    return {"tissue": tissue, "masks": masks, "stain": stain, "on_tissue": on_tissue, "excluded": excluded}


def identical(a: dict[str, Any], b: dict[str, Any]) -> bool:
    same = a["stain"] == b["stain"] and all(np.array_equal(a[k], b[k]) for k in ("tissue", "excluded"))
    for k in ("masks", "on_tissue"):
        same &= a[k].keys() == b[k].keys() and all(np.array_equal(a[k][kind], b[k][kind]) for kind in a[k])
    return bool(same)


def plan_stage(side: int, repeats: int) -> dict[str, Any]:
    """Best ``stage_seconds["tissue_view"]`` of ``plan_slide`` with the previous and the current
    kernels, and whether the plans' stain statistics, tiles and artifact areas are the same."""
    import shutil
    import tempfile
    import warnings

    import gpu_benchmark as gb

    import pipeline.slide.plan as plan_module
    import tests.reference.tissue_view as old_kernels
    from pipeline.config import Config
    from pipeline.manifest import SlideEntry

    names = ("tissue_mask", "artifact_masks", "artifact_mask", "reinhard_stats", "artifacts_on_tissue")
    kernels = {
        "previous": {n: getattr(old_kernels, n) for n in names},
        "current": {n: getattr(plan_module, n) for n in names},
    }
    work = Path(tempfile.mkdtemp(prefix="tissue-view-"))
    model_path, _ = gb.benchmark_model("blob", work)
    slide, _ = gb.generated_slide(work, side, 15.0, (6.0, 9.0))
    config = Config(model=str(model_path), progress=False, device="cpu")
    best: dict[str, float] = {}
    plans: dict[str, Any] = {}
    try:
        for i in range(repeats):
            for label, fns in kernels.items():
                for n, f in fns.items():
                    setattr(plan_module, n, f)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    plan = plan_module.plan_slide(SlideEntry(slide.stem, slide), str(work / f"{label}{i}"), config)
                best[label] = min(best.get(label, float("inf")), plan.stage_seconds["tissue_view"])
                plans[label] = (plan.stain, plan.tiles, plan.artifact_mm2)
    finally:
        for n, f in kernels["current"].items():
            setattr(plan_module, n, f)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "previous_s": round(best["previous"], 3),
        "current_s": round(best["current"], 3),
        "ratio_previous_over_current": round(best["previous"] / best["current"], 2),
        "same_plan": plans["previous"] == plans["current"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--plan", action="store_true", help="also time plan_slide's tissue_view stage")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import tests.reference.tissue_view as old_kernels
    from pipeline.kernels import artifacts, stain, tissue
    from pipeline.slide.plan import min_artifact_px

    new_kernels = SimpleNamespace(
        tissue_mask=tissue.tissue_mask,
        artifact_masks=artifacts.artifact_masks,
        artifact_mask=artifacts.artifact_mask,
        reinhard_stats=stain.reinhard_stats,
        artifacts_on_tissue=artifacts.artifacts_on_tissue,
    )
    min_px = min_artifact_px(32, 0.25)
    rows, same = {}, {}
    for name, view in views(args.side).items():
        new_kernels.artifact_masks(view[:64, :64], min_px)  # the rule table, built once per process
        best = {"previous": {}, "current": {}}
        for _ in range(args.repeats):
            for label, kernels in (("previous", old_kernels), ("current", new_kernels)):
                clock: dict[str, float] = {}
                tissue_view(kernels, view, min_px, clock)
                clock["total"] = sum(clock.values())
                for stage, seconds in clock.items():
                    best[label][stage] = min(best[label].get(stage, float("inf")), seconds)
        outputs = [tissue_view(k, view, min_px, {}) for k in (old_kernels, new_kernels)]
        same[name] = identical(*outputs)
        found = {k: int(m.sum()) for k, m in outputs[1]["masks"].items() if m.any()}
        rows[name] = {
            "artifact_px": found,
            "stages": {
                stage: {
                    "previous_s": round(best["previous"][stage], 4),
                    "current_s": round(best["current"][stage], 4),
                    "ratio_previous_over_current": round(best["previous"][stage] / best["current"][stage], 2),
                }
                for stage in (*STAGES, "total")
            },
        }
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python benchmarks/tissue_view.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "view_px": [args.side, args.side],
        "min_region_px": min_px,
        "repeats": args.repeats,
        "views": rows,
        "identical": same,
    }
    if args.plan:
        data["plan_tissue_view"] = plan_stage(args.side, args.repeats)
    lines = [
        f"date: {data['date']}  ",
        f"machine: {data['machine']}  ",
        f"command: `{data['command']}`  ",
        f"view {args.side}² px, smallest artifact region {min_px} px, best of {args.repeats}  ",
        "",
        "| view | stage | previous s | current s | previous / current |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        for stage, v in row["stages"].items():
            ratio = v["ratio_previous_over_current"]
            lines.append(f"| {name} | {stage} | {v['previous_s']:.3f} | {v['current_s']:.3f} | {ratio}× |")
    lines += [""] + [
        f"{name}: artifact pixels {row['artifact_px']}; outputs identical (masks, StainStats): {same[name]}  "
        for name, row in rows.items()
    ]
    if args.plan:
        v = data["plan_tissue_view"]
        lines.append(
            f"plan_slide tissue_view stage ({args.side}² slide, view read included): previous {v['previous_s']:.3f} s, "
            f"current {v['current_s']:.3f} s, {v['ratio_previous_over_current']}×; same plan: {v['same_plan']}  "
        )
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tissue_view.json").write_text(json.dumps(data, indent=2))
        (args.out / "tissue_view.md").write_text(text)
    return 0 if all(same.values()) and data.get("plan_tissue_view", {}).get("same_plan", True) else 1


if __name__ == "__main__":
    sys.exit(main())
