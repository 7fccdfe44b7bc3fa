"""The models loaded in this process: one inference session per model and settings, created on
first use and reused by every task after it (a worker process loads its model once).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pipeline.runtime.session import NucleusModel, resolve_model_path

_MODELS: dict[tuple[Any, ...], NucleusModel] = {}
_LOCK = threading.Lock()


def load_model(
    path: str | Path | None,
    intra_op_threads: int = 1,
    runtime: str = "auto",
    device_id: int = 0,
    half: bool = False,
    trt_cache_dir: str | None = None,
) -> NucleusModel:
    """The process-wide session for ``path`` (created once per worker process, then reused).

    Parameters
    ----------
    path : str, Path or None
        The contract ONNX model; None = the shipped one (``resolve_model_path``).
    intra_op_threads : int
        Threads one inference may use (ONNX Runtime's intra-op pool on the CPU).
    runtime : str
        A key of ``BACKENDS``, or ``"auto"`` (``choose_runtime``).
    device_id : int
        The GPU of this worker; ``CPU_DEVICE_ID`` = the CPU.
    half : bool
        float16 compute on a GPU (TensorRT fp16, or torch half).
    trt_cache_dir : str or None
        TensorRT's engine cache; None = no cache.

    Returns
    -------
    NucleusModel
        The same object for the same arguments within one process.
    """
    resolved = resolve_model_path(path)
    key = (str(resolved.resolve()), intra_op_threads, runtime, device_id, half, trt_cache_dir)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = NucleusModel(
                resolved,
                intra_op_threads=intra_op_threads,
                runtime=runtime,
                device_id=device_id,
                half=half,
                trt_cache_dir=trt_cache_dir,
            )
            _MODELS[key] = model
    return model
