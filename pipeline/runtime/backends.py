"""The runtimes a model can run on, by name: each backend is a class meeting :class:`Backend`
(one module each: ``onnxruntime_backend``, ``torch_backend``), registered in :data:`BACKENDS`;
:func:`choose_runtime` says which one ``auto`` means on this node.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.runtime.errors import ModelError
from pipeline.runtime.onnxruntime_backend import OnnxRuntimeBackend
from pipeline.runtime.torch_backend import TorchBackend

CPU_DEVICE_ID = -1  # ``device_id`` that keeps inference on the CPU, whatever GPUs the node has


class Backend(Protocol):
    """What a runtime gives the facade (numpy in and out; device arrays stay on their device)."""

    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, str]
    prob_channels: int | None  # channels of ``prob`` as the graph declares them; None: left open

    def __init__(
        self,
        path: Path,
        intra_op_threads: int = 1,
        device_id: int = 0,
        half: bool = False,
        trt_cache_dir: str | None = None,
        providers: list[str] | None = None,
    ) -> None: ...

    @staticmethod
    def sees_gpu() -> bool: ...

    @property
    def device(self) -> str: ...

    def predict(self, images: np.ndarray) -> np.ndarray: ...

    def predict_device(self, images: Any) -> Any: ...


# Runtime name → backend, in order of preference on a GPU node ('auto' takes the first that
# sees a GPU, else the first: onnxruntime on the CPU).
BACKENDS: dict[str, type[Backend]] = {
    "onnxruntime": OnnxRuntimeBackend,
    "torch": TorchBackend,
}
RUNTIME_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)


def _nvidia_device_node() -> bool:
    """A cheap hint that a CUDA device may be present, so CPU-only nodes never import torch."""
    return (
        Path("/dev/nvidiactl").exists()
        or Path("/proc/driver/nvidia/version").exists()
        or shutil.which("nvidia-smi") is not None
    )


def choose_runtime(runtime: str = "auto", cpu: bool = False) -> str:
    """Which runtime ``runtime`` means on this node: 'auto' = the first backend of
    :data:`BACKENDS` that sees a GPU (onnxruntime when its CUDA provider is installed, TensorRT
    first where present; else torch, for nodes whose CUDA has no onnxruntime-gpu build), else
    onnxruntime on the CPU. With ``cpu`` (inference kept on the CPU) 'auto' is onnxruntime."""
    if runtime not in RUNTIME_CHOICES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    if runtime != "auto":
        return runtime
    if not cpu and _nvidia_device_node():
        for name, backend in BACKENDS.items():
            if backend.sees_gpu():
                return name
    return next(iter(BACKENDS))
