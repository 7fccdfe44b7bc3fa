"""``python -m pipeline.qc DIR [--reviews sheet.csv ...] [--outer-percent 4] [--seed 0]``.

Exit status: 0 the QC was built from every slide's stats.json; 1 it was built, but some stats.json
were left out (each named on a ``warning:`` line and in ``qc/qc.json``); 2 nothing was built: a
malformed review file, a damaged review store, a folder that is not a run's, a qc/ that cannot be
written (one ``error:`` line, with every bad review row under it).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli._console import safe_console
from pipeline.cli._parser import EXIT_BAD_INPUT, CommandLineParser, number_in
from pipeline.qc._build import PATCH_MODES, REPORT, build_qc
from pipeline.qc._patches import N_PATCHES
from pipeline.qc._reviews import ReviewError, ReviewStoreError
from pipeline.qc._rules import DEFAULT_OUTER_PERCENT

EXIT_OK, EXIT_SOME_LEFT_OUT = 0, 1


def main(argv: Sequence[str] | None = None) -> int:
    safe_console()
    parser = CommandLineParser(
        prog="python -m pipeline.qc",
        description="Build DIR/qc/ (QC tables, outlier flags, review sheets, report.html) from a run's slides.",
    )
    parser.add_argument("dir", type=Path, help="the run's output folder (holds slides/<slide_id>/stats.json)")
    parser.add_argument(
        "--reviews",
        type=Path,
        nargs="+",
        default=[],
        metavar="CSV",
        help="filled patch review sheets and/or WSI verdict CSVs (WSI-ID, SegmentationUnacceptableOrNot, "
        "VisualAssessmentComment) to fold in",
    )
    parser.add_argument(
        "--outer-percent",
        type=number_in(float, 0, 50, high_open=True),
        default=DEFAULT_OUTER_PERCENT,
        help="per-tail percent of each cancer type selected for review (paper: 2, widened to 4)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random review patches")
    parser.add_argument(
        "--patches",
        choices=PATCH_MODES,
        default="all",
        help="extract review patches for all ok slides, only the selected ones, or none",
    )
    parser.add_argument("--n-patches", type=number_in(int, 1), default=N_PATCHES, help="patches per slide (paper: 15)")
    parser.add_argument(
        "--workers", type=number_in(int, 1), default=1, help="slides whose patches are extracted at once"
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    args = parser.parse_args(argv)
    if not (args.dir / "slides").is_dir():
        print(f"error: {args.dir} has no slides/ folder: not the output folder of a run", file=sys.stderr)
        return EXIT_BAD_INPUT
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:  # said once below, not as a traceback
            warnings.simplefilter("always", UserWarning)
            qc_dir = build_qc(
                args.dir,
                reviews=args.reviews,
                outer_percent=args.outer_percent,
                seed=args.seed,
                patches=args.patches,
                n_patches=args.n_patches,
                workers=args.workers,
                report=not args.no_report,
            )
    except (ReviewError, ReviewStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: the QC cannot be written to {args.dir / 'qc'}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    extra = f", {qc_dir / REPORT}" if not args.no_report else ""
    print(f"QC written to {qc_dir}{extra} in {time.perf_counter() - t0:.2f} s")
    left_out = json.loads((qc_dir / "qc.json").read_text())["unusable_stats"]
    return EXIT_SOME_LEFT_OUT if left_out else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
