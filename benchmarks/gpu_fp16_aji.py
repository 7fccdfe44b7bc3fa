"""AJI of the fp16 variant against fp32 on the validation images (the issue: within 0.005).

    python benchmarks/gpu_fp16_aji.py --model pipeline/runtime/weights/nuclei_unet.onnx \
        --data ../shared/data/monuseg2018_train --device cuda --out $OUT/fp16_aji.json

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


def main(argv: list[str] | None = None) -> dict:
    import torch

    from pipeline.evaluation.metrics import aggregated_jaccard_index
    from pipeline.io.annotations import VALIDATION_IMAGES, load_monuseg_image
    from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities
    from pipeline.runtime.torch_onnx import TorchOnnxModel
    from pipeline.training.export import image_probabilities
    from pipeline.training.targets import normalised_rgb

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="monuseg2018_train folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=len(VALIDATION_IMAGES))
    p.add_argument(
        "--emulate",
        action="store_true",
        help="fp16 as float16 rounding of every tensor with float32 arithmetic (default on a CPU, "
        "whose float16 convolutions are ~30x slower)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
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
    for name in VALIDATION_IMAGES[: args.images]:
        image = load_monuseg_image(args.data, name)
        x = normalised_rgb(image.rgb)
        row: dict = {"image": name}
        for half, model in runs.items():
            t0 = time.perf_counter()
            prob = image_probabilities(model.run_numpy, x)
            row[f"{'fp16' if half else 'fp32'}_seconds"] = round(time.perf_counter() - t0, 3)
            row["fp16_aji" if half else "fp32_aji"] = aggregated_jaccard_index(
                image.labels, instances_from_probabilities(prob, params)
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
