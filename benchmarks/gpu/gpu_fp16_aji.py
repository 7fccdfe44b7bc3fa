"""AJI of the fp16 variant against fp32 on the validation images (fp16 is accepted within 0.005).

DATA is the project's data folder (``pipeline.io.annotations.data_dir()``).

    python benchmarks/gpu/gpu_fp16_aji.py --model pipeline/runtime/weights/nuclei_unet.onnx \
        --data DATA/monuseg2018_train --device cuda --out $OUT/fp16_aji.json

For the lent GPU machine, which sees only what a call carries (and the MoNuSeg folder is 126 MB
of PNG masks), pack the 7 validation images once, here, with their labels made from the masks:

    python benchmarks/gpu/gpu_fp16_aji.py --pack benchmarks/gpu/fp16-data/validation.npz \
        --data DATA/monuseg2018_train
    # then, there (benchmarks/gpu/fp16-data is git-ignored: the call carries it; docs/gpu.md):
    python3 benchmarks/gpu/gpu_fp16_aji.py --packed benchmarks/gpu/fp16-data/validation.npz --out $OUT/fp16_aji.json

Both precisions run the same ONNX file through the torch runtime (``half=False`` / ``True``),
whole images tiled as in training evaluation (``pipeline.training.export.image_probabilities``),
post-processed with the model's own thresholds, scored against the MoNuSeg masks of the 7
validation images (never the test set). On a CPU the fp16 run is emulated (float16 rounding of
every tensor, float32 arithmetic, as tensor cores accumulate); on a GPU it is native float16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def pack(data: Path, names: tuple[str, ...], path: Path) -> Path:
    """The validation images and their instance labels (from the per-nucleus masks) in one
    compressed file: what the device call carries instead of the dataset folder."""
    from pipeline.io.annotations import load_monuseg_image

    arrays: dict[str, np.ndarray] = {"names": np.array(names)}
    for i, name in enumerate(names):
        image = load_monuseg_image(data, name)
        if int(image.labels.max()) >= 2**16:
            raise ValueError(f"{name}: {int(image.labels.max())} nuclei do not fit the packed uint16 labels")
        arrays[f"rgb_{i}"] = image.rgb
        arrays[f"labels_{i}"] = image.labels.astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def packed_images(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB uint8, int32 labels) for each packed image, in order."""
    with np.load(path) as z:
        return [(str(name), z[f"rgb_{i}"], z[f"labels_{i}"].astype(np.int32)) for i, name in enumerate(z["names"])]


def main(argv: list[str] | None = None) -> dict:
    from pipeline.io.annotations import VALIDATION_IMAGES

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=Path("pipeline/runtime/weights/nuclei_unet.onnx"))
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="monuseg2018_train folder")
    data.add_argument("--packed", type=Path, help="validation images packed with --pack (what a device call carries)")
    p.add_argument("--pack", type=Path, default=None, help="write the validation images of --data here, and stop")
    p.add_argument("--device", default=None, help="default: cuda where torch sees it, else cpu")
    p.add_argument("--images", type=int, default=len(VALIDATION_IMAGES))
    p.add_argument(
        "--emulate",
        action="store_true",
        help="fp16 as float16 rounding of every tensor with float32 arithmetic (default on a CPU, "
        "whose float16 convolutions are ~30x slower)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.pack:
        if not args.data:
            p.error("--pack needs --data")
        path = pack(args.data, VALIDATION_IMAGES[: args.images], args.pack)
        print(f"packed {args.images} images into {path} ({path.stat().st_size:,} B)")
        return {"packed": str(path), "bytes": path.stat().st_size}

    import torch

    from pipeline.evaluation.metrics import aggregated_jaccard_index
    from pipeline.io.annotations import load_monuseg_image
    from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities
    from pipeline.runtime.torch_onnx import TorchOnnxModel
    from pipeline.training.export import image_probabilities
    from pipeline.training.targets import normalised_rgb

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.packed:
        images = packed_images(args.packed)[: args.images]
    else:
        images = [
            (n, im.rgb, im.labels)
            for n, im in ((n, load_monuseg_image(args.data, n)) for n in VALIDATION_IMAGES[: args.images])
        ]
    emulate = args.emulate or args.device == "cpu"
    runs = {
        half: TorchOnnxModel(
            args.model,
            device=args.device,
            half=half and not emulate,
            emulate_half=half and emulate,
            channels_last=args.device != "cpu",
        )
        for half in (False, True)
    }
    params = NucleusThresholds.from_metadata(runs[False].metadata)
    rows = []
    for name, rgb, labels in images:
        x = normalised_rgb(rgb)
        row: dict = {"image": name}
        for half, model in runs.items():
            t0 = time.perf_counter()
            prob = image_probabilities(model.run_numpy, x)
            row[f"{'fp16' if half else 'fp32'}_seconds"] = round(time.perf_counter() - t0, 3)
            row["fp16_aji" if half else "fp32_aji"] = aggregated_jaccard_index(
                labels, instances_from_probabilities(prob, params)
            )
            if half:
                row["max_abs_prob_diff"] = float(np.abs(prob - row.pop("_prob32")).max())
            else:
                row["_prob32"] = prob
        rows.append(row)
        print(json.dumps(row), flush=True)
    fp32 = float(np.mean([r["fp32_aji"] for r in rows]))
    fp16 = float(np.mean([r["fp16_aji"] for r in rows]))
    result = {
        "model": str(args.model),
        "device": args.device,
        "fp16": "emulated" if emulate else "native",
        "images": rows,
        "fp32_aji_mean": fp32,
        "fp16_aji_mean": fp16,
        "aji_difference": fp16 - fp32,
        "within_0.005": abs(fp16 - fp32) <= 0.005,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "images"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
