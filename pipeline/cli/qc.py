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
from pipeline.io.outputs.lock import describe_holder, output_holder
from pipeline.io.outputs.status import RunStatus
from pipeline.qc._build import PATCH_MODES, REPORT, build_qc
from pipeline.qc._patches import N_PATCHES
from pipeline.qc._reviews import ReviewError, ReviewStoreError
from pipeline.qc._rules import DEFAULT_OUTER_PERCENT

EXIT_OK, EXIT_SOME_LEFT_OUT = 0, 1
RUN_RECORD = "run.json"


def unfinished_run(out_dir: Path) -> str | None:
    """Why the QC of ``out_dir`` covers only part of its run (a run still writing it, or one that
    stopped before it finished), or None."""
    holder = output_holder(out_dir)
    if holder is not None:
        return (
            f"{out_dir} is still being written by a run ({describe_holder(holder)}): the QC covers the slides "
            "finished so far; build it again when the run has ended"
        )
    try:
        status = json.loads((out_dir / RUN_RECORD).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    if status == RunStatus.RUNNING:
        return (
            f"the run that wrote {out_dir} did not finish (run.json says running, and no run holds the folder): "
            "the QC covers the slides finished; rerun the same pipeline.run command to finish the others"
        )
    return None


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
    missing = [
        name
        for name, there in (
            ("slides/", (args.dir / "slides").is_dir()),
            ("run.json", (args.dir / RUN_RECORD).is_file()),
        )
        if not there
    ]
    if missing:
        print(
            f"error: {args.dir} is not the output folder of a run (it has no {' and no '.join(missing)}): give "
            "the --out folder of python -m pipeline.run",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    unfinished = unfinished_run(args.dir)
    if unfinished:
        print(f"warning: {unfinished}", file=sys.stderr)
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
