"""``python -m pipeline.evaluate --pred DIR --truth DIR_OR_FILES [--subset validation] [--errors] [--out results]``:
score nucleus segmentations against ground truth (see :mod:`pipeline.evaluation.scoring`); with
``--errors``, also where they lose: matches, false positives, misses, merges and splits at IoU 0.5
with their sizes (:mod:`pipeline.evaluation.errors`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.evaluation.errors import error_counts, errors_document, format_errors
from pipeline.evaluation.scoring import (
    PATCH_PX,
    find_predictions,
    find_truths,
    format_table,
    score_image,
    summarise,
    write_results,
)
from pipeline.io.annotations import VALIDATION_IMAGES, read_label_image, read_truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score instance segmentations against ground truth.")
    parser.add_argument("--pred", type=Path, required=True, help="folder of <stem>_labels.tif")
    parser.add_argument("--truth", type=Path, nargs="+", required=True)
    parser.add_argument(
        "--subset",
        choices=["all", "validation"],
        default="all",
        help="validation: only the 7 held-out MoNuSeg images (pipeline.io.annotations)",
    )
    parser.add_argument("--patch", type=int, default=PATCH_PX)
    parser.add_argument(
        "--errors",
        action="store_true",
        help="also count matches, false positives, misses, merges and splits at IoU 0.5, with their sizes",
    )
    parser.add_argument("--out", type=Path, help="write OUT.csv and OUT.json (and OUT_errors.json with --errors)")
    args = parser.parse_args(argv)
    preds = find_predictions(args.pred)
    truths = find_truths(args.truth)
    stems = sorted(set(preds) & set(truths))
    if args.subset == "validation":
        stems = [s for s in stems if s in VALIDATION_IMAGES]
    if not stems:
        print(f"no prediction in {args.pred} matches a ground truth in {args.truth}", file=sys.stderr)
        return 2
    missing = sorted(set(truths) - set(preds))
    if args.subset == "validation":
        missing = [s for s in missing if s in VALIDATION_IMAGES]
    scores, errors = [], {}
    for stem in stems:
        pred = read_label_image(preds[stem])
        truth = read_truth(truths[stem], shape=pred.shape)
        scores.append(score_image(stem, truth, pred, args.patch))
        if args.errors:
            errors[stem] = error_counts(truth, pred)
    overall = summarise(scores)
    print(format_table(scores, overall))
    if args.errors:
        print()
        print(format_errors(errors))
    if missing:
        print(f"warning: no prediction for {len(missing)} ground-truth image(s): {missing}", file=sys.stderr)
    if args.out:
        write_results(args.out, scores, overall, {"pred": str(args.pred), "truth": [str(t) for t in args.truth]})
        if args.errors:
            path = args.out.with_name(args.out.name + "_errors.json")
            path.write_text(json.dumps(errors_document(errors), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
