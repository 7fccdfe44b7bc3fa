"""How often the scale cross-check flags a correctly labelled slide, and how often it catches one
labelled 2x (or 4x) wrong: the per-slide check (``scale_tolerance``) and the cohort QC's comparison
with the cancer type's median (``pipeline.qc.scale_outliers``).

    python benchmarks/scale_check.py [--rows rows.json] [--threads 2]

Correctly labelled images: the 30 MoNuSeg 2018 training tiles (7 organs; the project data folder, never the
test set) at their 40x (0.25 µm/px) and area-averaged to 20x (0.5 µm/px), read as slides without
metadata so that the estimate is the pipeline's own (``estimate_mpp``), whose ratio to the true
resolution is what a slide stating it would show; the real example slide CMU-1-Small-Region (20x,
Aperio MPP 0.499) planned and cross-checked as a run does, under its own id and 11 others (the
sample windows follow the id); and the throughput benchmark's generated slide. A mislabel is
simulated by halving or doubling the stated resolution (the estimate does not depend on it), so the
ratio doubles or halves. The cohort rule is measured per organ and magnification (groups of six:
breast, kidney, liver, prostate; bladder, colon and stomach have two images each, below the rule's
minimum), each slide in turn mislabelled while the others stay right. ``--rows`` keeps the measured
ratios in a JSON file and reuses them when it exists (the figures then take a second).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.io.annotations import MONUSEG_ORGANS, data_dir, read_rgb
from pipeline.qc import scale_outliers
from pipeline.qc._rules import SCALE_COHORT_FACTOR, SCALE_COHORT_MIN_SLIDES

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE_ID = "CMU-1-Small-Region"
OTHER_IDS = ("cmu",) + tuple(f"slide-{i}" for i in range(10))
FACTOR_SWEEP = (1.4, 1.5, 1.6, 1.7, 1.8, 2.0)


def monuseg_rows(threads: int) -> list[dict[str, object]]:
    from scale_estimate import resample, slide_inputs

    from pipeline.runtime import load_model
    from pipeline.slide.scale import estimate_mpp

    model = load_model(None, threads)
    root = data_dir() / "monuseg2018_train"
    rows = []
    for name, organ in MONUSEG_ORGANS.items():
        full = read_rgb(root / name / "images" / f"{name}.png")
        for factor in (1.0, 2.0):
            slide, tissue, stain = slide_inputs(resample(full, factor))
            found = estimate_mpp(slide, tissue, 1.0, model, stain)
            truth = 0.25 * factor
            ratio = found.mpp / truth if found else float("nan")
            rows.append({"image": name, "organ": organ, "mpp": truth, "ratio": ratio})
            print(f"{name} ({organ}) at {truth:g} µm/px: estimate/truth {ratio:.2f}", flush=True)
    return rows


def cross_checked(path: Path, slide_id: str, threads: int, work: Path) -> float:
    """The estimate/metadata ratio of a slide planned and cross-checked as a run does."""
    from pipeline.manifest import SlideEntry
    from pipeline.slide import check_slide_scale, plan_slide

    config = Config(intra_op_threads=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plan = plan_slide(SlideEntry(slide_id, path), str(work / slide_id), config)
        check = check_slide_scale(plan)
    assert check is not None and check.estimate is not None, f"{slide_id}: no cross-check"
    return check.estimate.mpp / plan.mpp


def slide_rows(threads: int) -> list[dict[str, object]]:
    from pipeline_throughput import generated_slide

    rows = []
    cmu = data_dir() / "wsi_fixtures" / "CMU-1-Small-Region.svs"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for sid in (EXAMPLE_ID, *OTHER_IDS):
            ratio = cross_checked(cmu, sid, threads, work)
            rows.append({"image": f"CMU-1-Small-Region as {sid}", "organ": "skin", "mpp": 0.499, "ratio": ratio})
            print(f"CMU-1-Small-Region as {sid!r}: estimate/metadata {ratio:.2f}", flush=True)
        generated = generated_slide(work, 2048, 0)
        ratio = cross_checked(generated, "generated", threads, work)
        rows.append({"image": "generated 2048² slide", "organ": "generated", "mpp": 0.25, "ratio": ratio})
        print(f"the throughput benchmark's generated slide: estimate/metadata {ratio:.2f}", flush=True)
    return rows


def outside(ratio: np.ndarray, tolerance: float) -> np.ndarray:
    return (ratio > tolerance) | (ratio < 1 / tolerance)


def cohort_trials(
    rows: list[dict[str, object]], factor: float, wrong_by: float = 2.0
) -> tuple[int, int, int, int, int]:
    """Per organ and magnification, the cohort rule on the correct group and on each slide in turn
    mislabelled ``wrong_by`` either way: (false alarms, correct slides examined, caught, mislabels,
    caught by either check)."""
    tolerance = Config().scale_tolerance
    groups: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        groups[(str(r["organ"]), float(r["mpp"]))].append(float(r["ratio"]))  # type: ignore[arg-type]
    false_alarms = examined = caught = trials = either = 0
    for (organ, _), values in sorted(groups.items()):
        x = np.array(values)
        if x.size < SCALE_COHORT_MIN_SLIDES:
            continue
        flagged = np.array([bool(n) for n in scale_outliers([organ] * x.size, x, factor)])
        false_alarms, examined = false_alarms + int(flagged.sum()), examined + x.size
        for i in range(x.size):
            for k in (wrong_by, 1 / wrong_by):
                wrong = x.copy()
                wrong[i] *= k
                flagged = np.array([bool(n) for n in scale_outliers([organ] * x.size, wrong, factor)])
                trials += 1
                caught += int(flagged[i])
                either += int(flagged[i] or outside(wrong[i : i + 1], tolerance)[0])
                false_alarms += int(np.delete(flagged, i).sum())
                examined += x.size - 1
    return false_alarms, examined, caught, trials, either


def report(rows: list[dict[str, object]]) -> None:
    tolerance = Config().scale_tolerance
    monuseg = [r for r in rows if r["organ"] in set(MONUSEG_ORGANS.values())]
    x = np.array([float(r["ratio"]) for r in monuseg])  # type: ignore[arg-type]
    cmu = np.array([float(r["ratio"]) for r in rows if r["organ"] == "skin"])  # type: ignore[arg-type]
    example = next(float(r["ratio"]) for r in rows if r["image"] == f"CMU-1-Small-Region as {EXAMPLE_ID}")  # type: ignore[arg-type]
    generated = [float(r["ratio"]) for r in rows if r["organ"] == "generated"]  # type: ignore[arg-type]
    print(f"\nMoNuSeg, correctly labelled (n={x.size}, 40x and 20x): estimate/metadata ratio")
    print(
        f"  min {x.min():.2f}, 5 % {np.quantile(x, 0.05):.2f}, median {np.median(x):.2f}, "
        f"95 % {np.quantile(x, 0.95):.2f}, max {x.max():.2f}"
    )
    print(f"CMU-1-Small-Region under {cmu.size} ids: {cmu.min():.2f}-{cmu.max():.2f} (as the example: {example:.2f})")
    if generated:
        print(f"generated slide: {generated[0]:.2f}")
    organs = sorted({str(r["organ"]) for r in monuseg})
    logs = np.log2(x)
    within = np.concatenate(
        [
            np.log2([float(r["ratio"]) for r in monuseg if r["organ"] == o and r["mpp"] == m])  # type: ignore[arg-type]
            - np.median(np.log2([float(r["ratio"]) for r in monuseg if r["organ"] == o and r["mpp"] == m]))  # type: ignore[arg-type]
            for o in organs
            for m in (0.25, 0.5)
        ]
    )
    around = logs - np.median(logs)
    print(
        "organ medians (40x / 20x): "
        + ", ".join(
            f"{o} {np.median([r['ratio'] for r in monuseg if r['organ'] == o and r['mpp'] == 0.25]):.2f}"
            f" / {np.median([r['ratio'] for r in monuseg if r['organ'] == o and r['mpp'] == 0.5]):.2f}"
            for o in organs
        )
    )
    rms_all, rms_within = np.sqrt(np.mean(around**2)), np.sqrt(np.mean(within**2))
    print(
        f"spread of log2 ratio (rms): around the overall median {rms_all:.3f}, around the organ's median "
        f"{rms_within:.3f} ({rms_within / rms_all:.2f} of it)"
    )

    print(f"\nper-slide check at {tolerance:g}× (the default scale_tolerance):")
    correct = np.concatenate([x, cmu])
    print(
        f"  false alarms: {outside(x, tolerance).mean():.1%} of {x.size} MoNuSeg, "
        f"{int(outside(cmu, tolerance).sum())} of {cmu.size} CMU ids, "
        f"{int(outside(correct, tolerance).sum())} of {correct.size} in all"
    )
    for k in (2.0, 4.0):
        wrong = np.concatenate([x * k, x / k])
        print(f"  slides labelled {k:g}x wrong caught: {outside(wrong, tolerance).mean():.1%} (n={wrong.size})")
    for t in (1.5, 2.0, 2.25, 2.5, 3.0):
        wrong = np.concatenate([x * 2, x / 2])
        print(
            f"    at {t:g}×: false alarms {outside(x, t).mean():.1%}, CMU {int(outside(cmu, t).sum())}/{cmu.size}, "
            f"2x caught {outside(wrong, t).mean():.1%}"
        )

    print(f"\ncohort rule (ratio against the cancer type's median; groups of ≥ {SCALE_COHORT_MIN_SLIDES}):")
    for factor in FACTOR_SWEEP:
        fa, n, caught, trials, either = cohort_trials(monuseg, factor)
        mark = "  <- SCALE_COHORT_FACTOR" if factor == SCALE_COHORT_FACTOR else ""
        print(
            f"  at {factor:g}×: false alarms {fa}/{n} = {fa / n:.1%}; labelled 2x wrong caught {caught}/{trials} = "
            f"{caught / trials:.1%}, by either check {either / trials:.1%}{mark}"
        )
    fa, n, caught, trials, either = cohort_trials(monuseg, SCALE_COHORT_FACTOR, 4.0)
    print(
        f"  labelled 4x wrong at {SCALE_COHORT_FACTOR:g}×: caught {caught / trials:.1%}, "
        f"by either check {either / trials:.1%}"
    )
    pooled = [dict(r, organ="UNKNOWN") for r in monuseg]
    fa, n, caught, trials, either = cohort_trials(pooled, SCALE_COHORT_FACTOR)
    print(
        f"  one cohort without cancer types (all organs as UNKNOWN) at {SCALE_COHORT_FACTOR:g}×: false alarms "
        f"{fa / n:.1%}; 2x caught {caught / trials:.1%}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=Path, help="JSON file of measured ratios: reused when present, else written")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.rows and args.rows.exists():
        rows = json.loads(args.rows.read_text())
    else:
        if not (data_dir() / "monuseg2018_train").exists():
            print(f"{data_dir()} holds no MoNuSeg training tiles", file=sys.stderr)
            return 2
        started = time.perf_counter()
        rows = monuseg_rows(args.threads) + slide_rows(args.threads)
        print(f"measured in {time.perf_counter() - started:.0f} s")
        if args.rows:
            args.rows.write_text(json.dumps(rows, indent=1))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
