"""The ONNX model as the pipeline sees it: one inference session per worker process.

The model contract (DESIGN §6): input ``image`` float32 N×3×H×W, RGB in [0, 1] after stain
normalisation, H and W multiples of 16; output ``prob`` float32 N×2×H×W (sigmoid applied;
channel 0 = nucleus centre, channel 1 = nuclear material); metadata_props carry ``mpp``,
``version``, ``training_data`` and the post-processing thresholds.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.kernels.nuclei import NucleusThresholds

SHIPPED_MODEL = Path(__file__).parent / "weights" / "nuclei_unet.onnx"
INPUT_MULTIPLE = 16  # four 2× poolings
# Context margin assumed when a model does not state `context_px` in its metadata: about half
# the paper's 100 px inference-window overlap, enough for a 4-level U-net's effective field.
DEFAULT_CONTEXT_PX = 64


class ModelError(Exception):
    """The model file is missing or does not meet the contract."""


def resolve_model_path(model: str | Path | None) -> Path:
    """The configured model, or the one shipped in the package."""
    path = Path(model) if model else SHIPPED_MODEL
    if not path.exists():
        if not model:
            raise ModelError(
                f"the shipped model is missing ({path}); reinstall the package or pass --model FILE.onnx"
            )
        raise ModelError(f"model file not found: {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def available_providers() -> list[str]:
    """ONNX Runtime execution providers to use, best first (TensorRT, CUDA, then CPU)."""
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in present]


@dataclass
class NucleusModel:
    """An ONNX Runtime session plus the model's metadata."""

    path: Path
    intra_op_threads: int = 1
    providers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.intra_op_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = self.providers or available_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:
            raise ModelError(f"{self.path}: ONNX Runtime cannot load the model: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if "image" not in inputs or "prob" not in outputs:
            raise ModelError(
                f"{self.path}: model must have input 'image' and output 'prob' "
                f"(has inputs {sorted(inputs)}, outputs {sorted(outputs)})"
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if "mpp" not in self.metadata:
            raise ModelError(f"{self.path}: model metadata lacks 'mpp' (the resolution it was trained at)")

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
        """float32 N×3×H×W in [0, 1] → float32 N×2×H×W probabilities."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected N×3×H×W images, got {images.shape}")
        if images.shape[2] % INPUT_MULTIPLE or images.shape[3] % INPUT_MULTIPLE:
            raise ValueError(f"H and W must be multiples of {INPUT_MULTIPLE}, got {images.shape[2:]}")
        out = self.session.run(["prob"], {"image": np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(out[0])


_MODELS: dict[tuple[str, int], NucleusModel] = {}
_LOCK = threading.Lock()


def load_model(path: str | Path | None, intra_op_threads: int = 1) -> NucleusModel:
    """The process-wide session for ``path`` (created once per worker process, then reused)."""
    resolved = resolve_model_path(path)
    key = (str(resolved.resolve()), intra_op_threads)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = NucleusModel(resolved, intra_op_threads=intra_op_threads)
            _MODELS[key] = model
    return model


def model_summary(path: str | Path | None) -> dict[str, Any]:
    """What run.json records about the model, without building a session."""
    resolved = resolve_model_path(path)
    return {"path": str(resolved), "sha256": file_sha256(resolved)}
