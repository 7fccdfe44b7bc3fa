"""``python -m pipeline.predict IMAGE... --out DIR``: segment plain image files (PNG/TIFF tiles of
any size) with the slide pipeline's own code path and write ``DIR/<stem>_labels.tif`` (uint32
instance labels, same height and width as the input), to check the model on annotated tiles.

Each image is treated as a one-level slide at ``--mpp``, else its own metadata, else the
resolution estimated from its nuclei (written to ``DIR/scales.csv``), tiled with
halos, normalised with its own statistics, segmented and assembled exactly as a slide is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli._console import safe_console
from pipeline.cli._parser import EXIT_BAD_INPUT, CommandLineParser
from pipeline.config import FINEST_SCANNER_MPP, Config, load_config
from pipeline.io.outputs.maps import open_labels
from pipeline.io.outputs.publish import atomic_path, final_slide_dir
from pipeline.io.outputs.spreadsheet import write_csv_atomic
from pipeline.manifest import SlideEntry
from pipeline.slide import process_slide_inline


def predict_labels(image_path: Path, config: Config, mpp: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Instance labels (uint32, the image's height × width) for one image file, and its stats
    (the resolution used and where it came from: ``mpp``, the image's own metadata, or an
    estimate from its nuclei)."""
    entry = SlideEntry(slide_id="image", slide_path=image_path, mpp=mpp)
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        stats = process_slide_inline(entry, tmp, config)
        labels = open_labels(final_slide_dir(Path(tmp), "image"))[:]
    return np.asarray(labels, dtype=np.uint32), stats


def output_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct ``<name>_labels.tif`` for every input: the file's stem, and where two inputs
    share it, as much of their paths as tells them apart (never one result overwriting another).

    >>> names = output_names([Path("a/x.png"), Path("b/x.png"), Path("b/x.tif"), Path("c/y.png")])
    >>> [names[Path(p)] for p in ("a/x.png", "b/x.png", "b/x.tif", "c/y.png")]
    ['a_x.png_labels.tif', 'b_x.png_labels.tif', 'x.tif_labels.tif', 'y_labels.tif']
    """
    unique = list(dict.fromkeys(paths))

    def name(path: Path, level: int) -> str:
        """0: the stem; 1: the file name; 2, 3, ...: with 1, 2, ... of its folders in front."""
        if level == 0:
            return path.stem
        folders = path.absolute().parent.parts[1:]
        return "_".join([*folders[max(0, len(folders) - (level - 1)) :], path.name]) if level > 1 else path.name

    level = dict.fromkeys(unique, 0)
    while True:
        names = {p: name(p, level[p]) for p in unique}
        groups: dict[str, list[Path]] = {}
        for p, n in names.items():
            groups.setdefault(n, []).append(p)
        clashes = [group for group in groups.values() if len(group) > 1]
        if not clashes:
            return {p: f"{n}_labels.tif" for p, n in names.items()}
        for group in clashes:
            for p in group:
                if level[p] > len(p.absolute().parts) + 1:  # the same file twice: same result
                    return {q: f"{names[q]}_labels.tif" for q in unique}
                level[p] += 1


def main(argv: list[str] | None = None) -> int:
    safe_console()
    p = CommandLineParser(
        prog="python -m pipeline.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", help="ONNX model (default: the shipped model)")
    p.add_argument(
        "--mpp",
        type=float,
        help="microns per pixel of the images (default: each image's metadata, else estimated from its nuclei)",
    )
    p.add_argument("--config", type=Path, help="YAML config (tile size, stain, ...)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, {"model": args.model, "intra_op_threads": 0})
        if args.mpp is not None and not FINEST_SCANNER_MPP <= args.mpp <= config.max_mpp:
            raise ValueError(
                f"--mpp {args.mpp:g} must be the images' microns per pixel, between {FINEST_SCANNER_MPP} and "
                f"max_mpp ({config.max_mpp})"
            )
        args.out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import tifffile

    failed = 0
    names = output_names(args.images)
    scales = []
    for path in dict.fromkeys(args.images):
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:  # said once below, not as a traceback
                warnings.simplefilter("always", UserWarning)
                labels, stats = predict_labels(path, config, args.mpp)
        except Exception as exc:
            print(f"FAILED {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        target = args.out / names[path]
        with atomic_path(target) as tmp:
            tifffile.imwrite(tmp, labels, compression="zlib")
        scales.append(
            (
                str(path),
                stats["mpp"],
                stats["mpp_source"],
                stats["mpp_field"] or "",
                stats["mpp_estimate"],
                ",".join(stats["flags"]),
            )
        )
        print(
            f"{path.name}: {int(len(np.unique(labels)) - 1)} nuclei at {stats['mpp']:.3g} µm/px "
            f"({stats['mpp_source']}) → {target} ({time.perf_counter() - t0:.1f} s)"
        )
        for w in caught:
            print(f"  {w.message}", file=sys.stderr)
    if scales:
        write_csv_atomic(
            args.out / "scales.csv", ["image", "mpp", "mpp_source", "mpp_field", "mpp_estimate", "flags"], scales
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
