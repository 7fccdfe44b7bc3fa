"""Export a trained U-net to ONNX per the model contract (docs/model.md), and measure its context.

    python -m pipeline.training.export --checkpoint runs/x/step_003000.pt \
        --thresholds runs/x/thresholds.json --out pipeline/runtime/weights/nuclei_unet.onnx

Input ``image``: float32 N×3×H×W (dynamic N, H, W; H, W multiples of 16), stain-normalised RGB in
[0, 1]. Output ``prob``: float32 N×2×H×W, sigmoid applied (0 = nucleus centre, 1 = material), or
N×4×H×W for a network with the distance maps (2 = horizontal, 3 = vertical).
metadata_props: ``mpp``, ``version``, ``training_data``, the five
:class:`~pipeline.kernels.nuclei.NucleusThresholds` fields, ``receptive_field_px`` (from the layer
arithmetic) and ``context_px`` (measured: input changes farther than this from an output pixel
change it by less than ``CONTEXT_TOLERANCE``), plus ``architecture`` and ``sha256`` of nothing
(the file's own hash cannot be inside it; it goes into the model card).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io.outputs.publish import atomic_path
from pipeline.kernels.nuclei import NucleusThresholds
from pipeline.training.unet import (
    DOWNSAMPLING,
    NucleusUNet,
    ProbabilityHead,
    UNetConfig,
    theoretical_receptive_field,
)

MODEL_MPP = 0.25  # µm/px of the training data (MoNuSeg, 40x)
CONTEXT_TOLERANCE = 1e-3  # max |Δprob| allowed from input changes beyond context_px
OPSET = 17

ProbabilityFn = Callable[[np.ndarray], np.ndarray]  # N×3×H×W float32 → N×C×H×W float32 (C = 2 or 4)


def load_checkpoint(path: Path, device: str = "cpu") -> NucleusUNet:
    """The U-net of a training checkpoint or snapshot, in eval mode."""
    state = torch.load(path, map_location=device, weights_only=True)
    net = NucleusUNet(UNetConfig(**state["config"]["unet"]))
    net.load_state_dict(state["model"])
    return net.eval()


def torch_probabilities(net: NucleusUNet) -> ProbabilityFn:
    """A numpy → numpy probability function running the torch network (no gradients)."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.probabilities(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def onnx_probabilities(path: Path, threads: int = 2) -> ProbabilityFn:
    """A numpy → numpy probability function running an ONNX graph on the pipeline's own ONNX
    Runtime backend (CPU), without the contract checks (graphs under test need not carry them)."""
    from pipeline.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, intra_op_threads=threads, providers=["CPUExecutionProvider"]).predict


def image_probabilities(run: ProbabilityFn, rgb: np.ndarray, halo: int = 64, tile: int = 0) -> np.ndarray:
    """C×H×W probabilities of one normalised float image (H×W×3), any size (C: the model's outputs).

    ``tile`` = 0: the whole image in one pass, reflect-padded by ``halo`` and up to a multiple of
    16. Otherwise tiles of ``tile`` px whose central ``tile − 2·halo`` px are kept (as the
    pipeline does); both agree to within the context tolerance when ``halo`` ≥ ``context_px``.

    Parameters
    ----------
    run : ProbabilityFn
        The model: N×3×H×W float input → N×C×H×W probabilities (H and W multiples of 16).
    rgb : np.ndarray
        Stain-normalised float image, H×W×3, at model resolution.
    halo : int, optional
        Context added around the image or cut from each tile's edges, in model px.
    tile : int, optional
        Side of the tiles, in model px (a multiple of 16 over ``2 * halo``); 0: one pass.

    Returns
    -------
    np.ndarray
        Probabilities, C×H×W (centre, material[, horizontal and vertical distance maps]).
    """
    h, w = rgb.shape[:2]
    if tile == 0:
        ph = -(-(h + 2 * halo) // DOWNSAMPLING) * DOWNSAMPLING
        pw = -(-(w + 2 * halo) // DOWNSAMPLING) * DOWNSAMPLING
        padded = np.pad(rgb, ((halo, ph - h - halo), (halo, pw - w - halo), (0, 0)), mode="reflect")
        return run(padded.transpose(2, 0, 1)[None])[0, :, halo : halo + h, halo : halo + w]
    core = tile - 2 * halo
    ny, nx = -(-h // core), -(-w // core)
    pad = ((halo, ny * core - h + halo), (halo, nx * core - w + halo), (0, 0))
    padded = np.pad(rgb, pad, mode="reflect")
    out: np.ndarray | None = None
    for iy in range(ny):
        for ix in range(nx):
            y, x = iy * core, ix * core
            window = run(padded[y : y + tile, x : x + tile].transpose(2, 0, 1)[None])[0]
            if out is None:
                out = np.zeros((window.shape[0], ny * core, nx * core), dtype=np.float32)
            out[:, y : y + core, x : x + core] = window[:, halo : halo + core, halo : halo + core]
    assert out is not None  # an image of at least one pixel is at least one tile
    return out[:, :h, :w]


def measure_context_px(run: ProbabilityFn, images: list[np.ndarray], tolerance: float = CONTEXT_TOLERANCE) -> int:
    """Smallest margin ``m`` (px, a multiple of 4) such that replacing all input farther than
    ``m`` from a 16×16 output window (by another tissue image, black, or white) changes the
    window's probabilities by less than ``tolerance``, for every image and replacement tried.
    The pipeline's tile halo must be at least this."""
    size = 384
    core = 16
    lo = (size - core) // 2
    worst = 0
    for k, img in enumerate(images):
        other = images[(k + 1) % len(images)]
        x = img[:size, :size].transpose(2, 0, 1)[None].astype(np.float32)
        fills = [other[-size:, -size:].transpose(2, 0, 1)[None], np.zeros_like(x), np.ones_like(x)]
        ref = run(x)[0, :, lo : lo + core, lo : lo + core]
        for fill in fills:
            m = 0
            while lo - m > 0:
                y = fill.astype(np.float32).copy()
                a, b = lo - m, lo + core + m
                y[..., a:b, a:b] = x[..., a:b, a:b]
                diff = float(np.abs(run(y)[0, :, lo : lo + core, lo : lo + core] - ref).max())
                if diff < tolerance:
                    break
                m += 4
            worst = max(worst, m)
    return worst


def export_onnx(net: NucleusUNet, path: Path, metadata: dict[str, str]) -> Path:
    """Write ``net`` (sigmoid appended) as ONNX with the contract's names, dynamic axes and
    ``metadata`` as metadata_props."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    head = ProbabilityHead(net.eval().cpu()).eval()
    dummy = torch.zeros(1, 3, 4 * DOWNSAMPLING, 4 * DOWNSAMPLING)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            head,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=["prob"],
            dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "prob": {0: "N", 2: "H", 3: "W"}},
            opset_version=OPSET,
            dynamo=False,
        )
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return path


def contract_metadata(
    net: NucleusUNet,
    thresholds: NucleusThresholds,
    context_px: int,
    version: str,
    training_data: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The model file's metadata (the model contract): every value a string.

    Parameters
    ----------
    net : NucleusUNet
        The trained network; its architecture and receptive field are recorded.
    thresholds : NucleusThresholds
        The post-processing thresholds tuned for it.
    context_px : int
        Context the model needs around a pixel, in model px.
    version : str
        The model's version.
    training_data : str
        What it was trained on.
    extra : dict or None, optional
        More entries, added last (they may replace the others).

    Returns
    -------
    dict of str to str
        The metadata entries, ``mpp`` in µm per model px.
    """
    meta = {
        "mpp": str(MODEL_MPP),
        "version": version,
        "training_data": training_data,
        **{k: str(v) for k, v in dataclasses.asdict(thresholds).items()},
        "receptive_field_px": str(theoretical_receptive_field(net.config)),
        "context_px": str(context_px),
        "architecture": json.dumps({"name": "NucleusUNet", **net.config.as_dict()}),
        "input_normalisation": "Reinhard lab, per-slide tissue statistics -> pipeline.kernels.stain.REINHARD_TARGET",
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


TRAINING_DATA = (
    "MoNuSeg 2018 training set (Kumar et al. 2017), 23 of 30 images (validation: 7, one per organ, "
    "see pipeline.io.annotations.VALIDATION_IMAGES) + synthetic random-polygon nuclei"
)


def main(argv: list[str] | None = None) -> None:
    from pipeline.io.annotations import VALIDATION_IMAGES, data_dir, read_rgb
    from pipeline.training.targets import normalised_rgb

    parser = argparse.ArgumentParser(description="Export a U-net checkpoint to ONNX.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--thresholds", type=Path, help="JSON with NucleusThresholds fields (tuned)")
    parser.add_argument("--out", type=Path, default=Path("pipeline/runtime/weights/nuclei_unet.onnx"))
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--training-data", default=TRAINING_DATA)
    parser.add_argument("--data", type=Path, default=data_dir() / "monuseg2018_train")
    parser.add_argument("--context-px", type=int, help="skip the measurement and use this value")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint)
    thresholds = NucleusThresholds()
    if args.thresholds:
        thresholds = NucleusThresholds(**json.loads(args.thresholds.read_text())["thresholds"])
    context = args.context_px
    if context is None:
        imgs = [normalised_rgb(read_rgb(args.data / n / "images" / f"{n}.png")) for n in VALIDATION_IMAGES[:3]]
        context = measure_context_px(torch_probabilities(net), imgs)
    step = torch.load(args.checkpoint, map_location="cpu", weights_only=True).get("step")
    meta = contract_metadata(net, thresholds, context, args.version, args.training_data, {"training_step": step})
    export_onnx(net, args.out, meta)
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size, **meta}, indent=1))


if __name__ == "__main__":
    main()
