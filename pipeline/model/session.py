"""The ONNX model as the pipeline sees it: one inference session per worker process.

The model contract (DESIGN §6): input ``image`` float32 N×3×H×W, RGB in [0, 1] after stain
normalisation, H and W multiples of 16; output ``prob`` float32 N×2×H×W (sigmoid applied;
channel 0 = nucleus centre, channel 1 = nuclear material); metadata_props carry ``mpp``,
``version``, ``training_data`` and the post-processing thresholds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
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


RUNTIMES = ("auto", "onnxruntime", "torch")


def _nvidia_device_node() -> bool:
    """A cheap hint that a CUDA device may be present, so CPU-only nodes never import torch."""
    return (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()
            or shutil.which("nvidia-smi") is not None)


def _onnxruntime_sees_gpu() -> bool:
    """onnxruntime-gpu is installed, offers the CUDA provider, and there is a device node."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and _nvidia_device_node()


def _torch_sees_gpu() -> bool:
    if not _nvidia_device_node() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_runtime(runtime: str = "auto") -> str:
    """Which runtime ``runtime`` means on this node: 'auto' = onnxruntime when its CUDA provider
    sees a GPU (TensorRT first where present), else torch when it sees a CUDA device (the node's
    CUDA has no onnxruntime-gpu build), else onnxruntime on the CPU."""
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    if _onnxruntime_sees_gpu():
        return "onnxruntime"
    if _torch_sees_gpu():
        return "torch"
    return "onnxruntime"


def provider_options(providers: list[str], device_id: int = 0, trt_cache_dir: str | None = None,
                     half: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime providers with their options: the device, and for TensorRT an engine cache
    (building an engine takes minutes; the cache makes it once per node and model) and fp16."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in providers:
        opts: dict[str, Any] = {}
        if name == "TensorrtExecutionProvider":
            opts = {"device_id": device_id, "trt_fp16_enable": half}
            if trt_cache_dir:
                Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                            trt_timing_cache_enable=True, trt_timing_cache_path=str(trt_cache_dir))
        elif name == "CUDAExecutionProvider":
            opts = {"device_id": device_id}
        out.append((name, opts))
    return out


@dataclass
class NucleusModel:
    """The contract model behind one interface, on ONNX Runtime (CPU, CUDA, TensorRT) or on
    PyTorch (:mod:`pipeline.model.torch_runtime`, for GPU nodes without onnxruntime-gpu).

    ``predict`` is numpy in, numpy out on every runtime; ``predict_device`` keeps device arrays
    (cupy, torch) on the device: I/O binding on ONNX Runtime, DLPack on torch.
    """

    path: Path
    intra_op_threads: int = 1
    providers: list[str] = field(default_factory=list)
    runtime: str = "auto"  # 'auto' | 'onnxruntime' | 'torch' (see choose_runtime)
    device_id: int = 0  # the GPU of this worker (dask-cuda gives each worker one)
    half: bool = False  # float16 compute on a GPU (TensorRT fp16, or torch half)
    trt_cache_dir: str | None = None  # TensorRT engine cache; None = no cache

    def __post_init__(self) -> None:
        self.runtime = choose_runtime(self.runtime)
        if self.runtime == "torch":
            self._load_torch()
        else:
            self._load_onnxruntime()
        if "mpp" not in self.metadata:
            raise ModelError(f"{self.path}: model metadata lacks 'mpp' (the resolution it was trained at)")

    def _load_onnxruntime(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.intra_op_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = self.providers or available_providers()
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options,
                providers=provider_options(providers, self.device_id, self.trt_cache_dir, self.half),
            )
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

    def _load_torch(self) -> None:
        import torch

        from pipeline.model.torch_runtime import TorchOnnxModel, UnsupportedOperator

        device = f"cuda:{self.device_id}" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, self.intra_op_threads))
        try:
            self.torch_model = TorchOnnxModel(self.path, device=device, half=self.half and device != "cpu",
                                              channels_last=device != "cpu")
        except UnsupportedOperator as exc:
            raise ModelError(str(exc)) from exc
        except Exception as exc:
            raise ModelError(f"{self.path}: cannot load the model for the torch runtime: {exc}") from exc
        if self.torch_model.inputs != ["image"] or "prob" not in self.torch_model.outputs:
            raise ModelError(
                f"{self.path}: model must have input 'image' and output 'prob' "
                f"(has inputs {self.torch_model.inputs}, outputs {self.torch_model.outputs})"
            )
        self.metadata = dict(self.torch_model.metadata)

    @property
    def device(self) -> str:
        """Where inference runs: 'cpu' or 'cuda:<id>'."""
        if self.runtime == "torch":
            return str(self.torch_model.device)
        gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(self.session.get_providers())
        return f"cuda:{self.device_id}" if gpu else "cpu"

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
        check_input_shape(images.shape)
        if self.runtime == "torch":
            return self.torch_model.run_numpy(images)
        out = self.session.run(["prob"], {"image": np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(out[0])

    def predict_device(self, images: Any) -> Any:
        """Like :meth:`predict` for arrays that should not leave their device: cupy or torch in,
        the same library's float32 N×2×H×W out, on the same device (numpy works too)."""
        check_input_shape(tuple(images.shape))
        if self.runtime == "torch":
            return self.torch_model.run_dlpack(images)
        return bound_run(self.session, images, self.device_id)


def check_input_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"expected N×3×H×W images, got {shape}")
    if shape[2] % INPUT_MULTIPLE or shape[3] % INPUT_MULTIPLE:
        raise ValueError(f"H and W must be multiples of {INPUT_MULTIPLE}, got {shape[2:]}")


def bound_run(session: Any, images: Any, device_id: int = 0) -> Any:
    """One ONNX Runtime run with I/O binding: the input is read from, and the output written to,
    memory that the caller's array library owns (cupy or torch on the GPU: no host round trip;
    numpy or CPU torch on the host)."""
    module = type(images).__module__.split(".")[0]
    n, _, h, w = (int(v) for v in images.shape)
    if module == "cupy":
        import cupy

        x = cupy.ascontiguousarray(images, dtype=cupy.float32)
        out = cupy.empty((n, 2, h, w), dtype=cupy.float32)
        where, x_ptr, out_ptr = "cuda", x.data.ptr, out.data.ptr
    elif module == "torch":
        import torch

        x = images.to(torch.float32).contiguous()
        out = torch.empty((n, 2, h, w), dtype=torch.float32, device=x.device)
        where = "cuda" if x.is_cuda else "cpu"
        device_id = (x.device.index or 0) if x.is_cuda else 0
        x_ptr, out_ptr = x.data_ptr(), out.data_ptr()
    else:
        x = np.ascontiguousarray(images, dtype=np.float32)
        out = np.empty((n, 2, h, w), dtype=np.float32)
        where, device_id, x_ptr, out_ptr = "cpu", 0, x.ctypes.data, out.ctypes.data
    binding = session.io_binding()
    binding.bind_input("image", where, device_id, np.float32, list(x.shape), x_ptr)
    binding.bind_output("prob", where, device_id, np.float32, [n, 2, h, w], out_ptr)
    session.run_with_iobinding(binding)
    return out


_MODELS: dict[tuple[Any, ...], NucleusModel] = {}
_LOCK = threading.Lock()


def load_model(path: str | Path | None, intra_op_threads: int = 1, runtime: str = "auto",
               device_id: int = 0, half: bool = False, trt_cache_dir: str | None = None) -> NucleusModel:
    """The process-wide session for ``path`` (created once per worker process, then reused)."""
    resolved = resolve_model_path(path)
    key = (str(resolved.resolve()), intra_op_threads, runtime, device_id, half, trt_cache_dir)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = NucleusModel(resolved, intra_op_threads=intra_op_threads, runtime=runtime,
                                 device_id=device_id, half=half, trt_cache_dir=trt_cache_dir)
            _MODELS[key] = model
    return model


def model_summary(path: str | Path | None) -> dict[str, Any]:
    """What run.json records about the model, without building a session."""
    resolved = resolve_model_path(path)
    return {"path": str(resolved), "sha256": file_sha256(resolved)}
