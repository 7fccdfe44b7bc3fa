"""The ONNX model as the pipeline sees it: the facade every caller infers through, and the checks
of the model file and of what it returns.

The model contract (docs/model.md): input ``image`` float32 N×3×H×W, RGB in [0, 1] after stain
normalisation, H and W multiples of 16; output ``prob`` float32 N×2×H×W (sigmoid applied;
channel 0 = nucleus centre, channel 1 = nuclear material), or N×4×H×W (channels 2 and 3: the
horizontal and vertical distance maps, stored as (d + 1) / 2); metadata_props carry ``mpp``,
``version``, ``training_data`` and the post-processing thresholds.

:class:`NucleusModel` is the one interface; the runtime behind it is a backend registered in
:data:`pipeline.runtime.backends.BACKENDS`. The process-wide sessions are kept by
:mod:`pipeline.runtime.cache`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.kernels.nuclei import OUTPUT_CHANNELS, NucleusThresholds
from pipeline.runtime.backends import BACKENDS, CPU_DEVICE_ID, Backend, choose_runtime
from pipeline.runtime.errors import ModelError

SHIPPED_MODEL = Path(__file__).parent / "weights" / "nuclei_unet.onnx"
INPUT_MULTIPLE = 16  # four 2× poolings
# Context margin assumed when a model does not state `context_px` in its metadata: about half
# the paper's 100 px inference-window overlap, enough for a 4-level U-net's effective field.
DEFAULT_CONTEXT_PX = 64


def resolve_model_path(model: str | Path | None) -> Path:
    """The configured model, or the one shipped in the package."""
    path = Path(model) if model else SHIPPED_MODEL
    if not path.exists():
        if not model:
            raise ModelError(f"the shipped model is missing ({path}); reinstall the package or pass --model FILE.onnx")
        raise ModelError(f"model file not found: {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class NucleusModel:
    """The contract model behind one interface, on any registered backend.

    ``predict`` is numpy in, numpy out on every runtime; ``predict_device`` keeps device arrays
    (cupy, torch) on the device: I/O binding on ONNX Runtime, DLPack on torch.
    """

    path: Path
    intra_op_threads: int = 1
    providers: list[str] = field(default_factory=list)  # ONNX Runtime providers; empty = the best present
    runtime: str = "auto"  # a key of BACKENDS, or 'auto' (see choose_runtime)
    device_id: int = 0  # the GPU of this worker (dask-cuda gives each worker one); CPU_DEVICE_ID = the CPU
    half: bool = False  # float16 compute on a GPU (TensorRT fp16, or torch half)
    trt_cache_dir: str | None = None  # TensorRT engine cache; None = no cache

    def __post_init__(self) -> None:
        self.runtime = choose_runtime(self.runtime, cpu=self.device_id == CPU_DEVICE_ID)
        self.backend: Backend = BACKENDS[self.runtime](
            self.path,
            intra_op_threads=self.intra_op_threads,
            device_id=self.device_id,
            half=self.half,
            trt_cache_dir=self.trt_cache_dir,
            providers=self.providers or None,
        )
        if "image" not in self.backend.inputs or "prob" not in self.backend.outputs:
            raise ModelError(
                f"{self.path}: model must have input 'image' and output 'prob' "
                f"(has inputs {sorted(self.backend.inputs)}, outputs {sorted(self.backend.outputs)})"
            )
        self.metadata: dict[str, str] = self.backend.metadata
        if "mpp" not in self.metadata:
            raise ModelError(f"{self.path}: model metadata lacks 'mpp' (the resolution it was trained at)")
        channels = self.backend.prob_channels
        if channels is not None and channels not in OUTPUT_CHANNELS:
            raise ModelError(
                f"{self.path}: the output 'prob' has {channels} channels where the contract has 2 (centre, material) "
                "or 4 (centre, material and the horizontal and vertical distance maps)"
            )
        try:
            weight = self.thresholds.distance_weight
        except ValueError as exc:
            raise ModelError(f"{self.path}: a post-processing value in its metadata is not a number: {exc}") from None
        if weight > 0 and channels != 4:
            raise ModelError(
                f"{self.path}: its metadata sets distance_weight {weight:g}, which reads the distance maps "
                f"of a four-output model, but its output 'prob' has {channels or 'undeclared'} channels"
            )

    @property
    def device(self) -> str:
        """Where inference runs: 'cpu' or 'cuda:<id>'."""
        return self.backend.device

    @property
    def mpp(self) -> float:
        return float(self.metadata["mpp"])

    @property
    def context_px(self) -> int:
        """Input margin (px at model resolution) that influences an output pixel measurably."""
        return int(float(self.metadata.get("context_px", DEFAULT_CONTEXT_PX)))

    @property
    def thresholds(self) -> NucleusThresholds:
        return NucleusThresholds.from_metadata(self.metadata)

    @cached_property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 N×3×H×W in [0, 1] → float32 N×C×H×W probabilities, C = 2 or 4 (checked: see
        :func:`check_probabilities`)."""
        check_input_shape(images.shape)
        return check_probabilities(self.backend.predict(images), self.path)

    def predict_device(self, images: Any) -> Any:
        """Like :meth:`predict` for arrays that should not leave their device: cupy or torch in,
        the same library's float32 N×C×H×W out, on the same device (numpy works too)."""
        check_input_shape(tuple(images.shape))
        return check_probabilities(self.backend.predict_device(images), self.path)


# How far beyond [0, 1] a sigmoid's output may stray by rounding: ONNX Runtime's vectorised sigmoid
# on the CPU returns up to 1 + 1.2e-7 (measured on the shipped and the blob model), and one float16
# step above 1 is 9.8e-4. A graph without its sigmoid returns logits, units or tens beyond.
PROBABILITY_SLACK = 1e-3


class ModelOutputError(ModelError):
    """The network returned what no probability map holds (NaN, infinity, values outside [0, 1])."""


def check_probabilities(prob: Any, path: Path) -> Any:
    """``prob`` unchanged when every value is a probability; else ModelOutputError naming the
    model and what it returned. Two reductions on the array's own device (numpy, cupy or torch;
    a NaN propagates through min and max): 1.3 ms for a 1376² window on this 2-core VM, against seconds of
    inference. A NaN is what fp16 overflow gives; values outside [0, 1] a graph without its sigmoid.

    >>> bool(check_probabilities(np.array([0.0, 0.5, 1.0000001], np.float32), Path("m.onnx")).max() > 1)
    True
    >>> try:
    ...     check_probabilities(np.array([0.2, np.nan], np.float32), Path("m.onnx"))
    ... except ModelOutputError as exc:
    ...     print(str(exc).split(" where")[0])
    m.onnx: the model's output 'prob' holds NaN
    """
    lo, hi = float(prob.min()), float(prob.max())
    if -PROBABILITY_SLACK <= lo and hi <= 1.0 + PROBABILITY_SLACK:
        return prob
    if lo != lo or hi != hi:
        found = "NaN"
    else:
        found = f"values from {lo:.4g} to {hi:.4g}"
    raise ModelOutputError(
        f"{path.name}: the model's output 'prob' holds {found} where it must hold probabilities in [0, 1] "
        f"({'a broken or fp16-overflowing model' if found == 'NaN' else 'is its last sigmoid missing?'}): "
        "no nuclei can be found from it"
    )


def check_input_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"expected N×3×H×W images, got {shape}")
    if shape[2] % INPUT_MULTIPLE or shape[3] % INPUT_MULTIPLE:
        raise ValueError(f"H and W must be multiples of {INPUT_MULTIPLE}, got {shape[2:]}")


def model_summary(path: str | Path | None, check: bool = False) -> dict[str, Any]:
    """What run.json records about the model. ``check`` also opens it once on the CPU (ONNX
    Runtime) and checks its inputs, outputs and metadata, so that a file that is not a usable
    model is refused before any work starts (raises ModelError naming the file)."""
    resolved = resolve_model_path(path)
    if check:
        check_model(resolved)
    return {"path": str(resolved), "sha256": file_sha256(resolved)}


def check_model(path: Path) -> None:
    """Raise ModelError unless ``path`` is an ONNX model that meets the contract (docs/model.md)."""
    if not path.is_file():
        raise ModelError(f"{path}: the model is not a file")
    try:
        NucleusModel(path, runtime="onnxruntime", providers=["CPUExecutionProvider"])
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: not a usable model: {' '.join(str(exc).split())}") from None
