"""An int8 variant of a contract ONNX model for the CPU, and what it costs in validation scores.

    python -m pipeline.training.int8 pipeline/runtime/weights/nuclei_unet.onnx nuclei_unet.int8.onnx

ONNX Runtime's static quantisation: the convolutions' weights in int8 (one scale per output
channel), their activations in uint8 with ranges calibrated on crops of the *training* images
(never the validation ones), written as QuantizeLinear/DequantizeLinear pairs around float
operators (the QDQ format), so that the input, the output and the model contract stay float32.
On a CPU with 8-bit dot-product instructions (VNNI) the convolutions run about twice as fast.

The int8 file is only worth using if it segments like the float one: after writing it, both are
scored on the validation split with the float model's own thresholds, and the scores are recorded
in the int8 file's metadata (``fp32_validation_aji``, ``int8_validation_aji``) beside
``precision=int8`` and the source's sha256, so that whoever ships it can check the difference
(the project's rule: within 0.005 AJI).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_IMAGES = 12  # training images whose crops calibrate the activation ranges
CALIBRATION_CROP_PX = 512


def training_crops(n_images: int = CALIBRATION_IMAGES, size: int = CALIBRATION_CROP_PX) -> Iterator[np.ndarray]:
    """1×3×size×size float32 crops (the model's input: stain-normalised RGB in [0, 1]) from the
    first ``n_images`` training images."""
    from pipeline.io.annotations import TRAINING_IMAGES, data_dir, read_rgb
    from pipeline.training.targets import normalised_rgb

    folder = data_dir() / "monuseg2018_train"
    for name in TRAINING_IMAGES[:n_images]:
        rgb = normalised_rgb(read_rgb(folder / name / "images" / f"{name}.png"))
        yield np.ascontiguousarray(rgb[:size, :size].transpose(2, 0, 1)[None], dtype=np.float32)


def quantise_int8(source: Path, target: Path, crops: Iterator[np.ndarray]) -> Path:
    """Write the int8 (QDQ) variant of ``source`` to ``target``, calibrated on ``crops`` (model
    inputs); its metadata is the source's plus ``precision=int8`` and ``fp32_source_sha256``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pipeline.runtime.session import file_sha256

    class _Crops(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            crop = next(crops, None)
            return None if crop is None else {"image": crop}

    source, target = Path(source).resolve(), Path(target).resolve()
    # the calibration writes scratch files into the working folder: keep them in a temporary one
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        prepared = Path(tmp) / "prepared.onnx"
        # no graph optimisation: it would write ONNX Runtime's CPU-only operators into the file
        quant_pre_process(str(source), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantised = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantised),
            _Crops(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "ConvTranspose"],
        )
        model = onnx.load(str(quantised))
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    meta.update({"precision": "int8", "fp32_source_sha256": file_sha256(source)})
    _set_metadata(model, meta)
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def _set_metadata(model: Any, meta: dict[str, str]) -> None:  # model: an onnx.ModelProto
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def validation_scores(path: Path, thresholds: dict[str, str], threads: int) -> dict[str, float]:
    """The overall validation scores of an ONNX file with the given thresholds (metadata keys)."""
    from pipeline.io.annotations import VALIDATION_IMAGES, data_dir, load_monuseg
    from pipeline.kernels.nuclei import NucleusThresholds
    from pipeline.training.tune import model_function, score, validation_probabilities

    images = load_monuseg(data_dir() / "monuseg2018_train", VALIDATION_IMAGES)
    run, _ = model_function(path, threads)
    _, overall = score(validation_probabilities(run, images), images, NucleusThresholds.from_metadata(thresholds))
    return overall


def main(argv: list[str] | None = None) -> None:
    import onnx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="float32 contract ONNX model")
    p.add_argument("target", type=Path, help="where the int8 variant goes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-score", action="store_true", help="skip scoring both on the validation split")
    args = p.parse_args(argv)
    quantise_int8(args.source, args.target, training_crops())
    print(f"wrote {args.target}")
    if args.no_score:
        return
    meta = {p.key: p.value for p in onnx.load(str(args.source)).metadata_props}
    fp32 = validation_scores(args.source, meta, args.threads)
    int8 = validation_scores(args.target, meta, args.threads)
    for name, overall in (("fp32", fp32), ("int8", int8)):
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in overall.items() if isinstance(v, float)))
    print(f"int8 − fp32 validation AJI: {int8['aji'] - fp32['aji']:+.4f}")
    model = onnx.load(str(args.target))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({"fp32_validation_aji": f"{fp32['aji']:.4f}", "int8_validation_aji": f"{int8['aji']:.4f}"})
    _set_metadata(model, meta)
    onnx.save(model, str(args.target))


if __name__ == "__main__":
    main()
