"""Inference only: the model facade (:mod:`pipeline.runtime.session`), its backends (ONNX Runtime,
PyTorch), and the shipped weights with their model card. Nothing here imports torch unless the
torch backend is chosen, and nothing imports training code."""

from pipeline.runtime.session import (
    BACKENDS,
    CPU_DEVICE_ID,
    RUNTIME_CHOICES,
    SHIPPED_MODEL,
    ModelError,
    NucleusModel,
    choose_runtime,
    file_sha256,
    load_model,
    model_summary,
    resolve_model_path,
)

__all__ = [
    "BACKENDS",
    "CPU_DEVICE_ID",
    "RUNTIME_CHOICES",
    "SHIPPED_MODEL",
    "ModelError",
    "NucleusModel",
    "choose_runtime",
    "file_sha256",
    "load_model",
    "model_summary",
    "resolve_model_path",
]
