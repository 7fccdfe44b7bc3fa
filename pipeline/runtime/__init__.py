"""Inference only: the model facade (:mod:`pipeline.runtime.session`), the registry of its
backends (:mod:`pipeline.runtime.backends`: ONNX Runtime, PyTorch), the process-wide session cache
(:mod:`pipeline.runtime.cache`), and the shipped weights with their model card. Nothing here
imports torch unless the torch backend is chosen, and nothing imports training code."""

from pipeline.runtime.backends import BACKENDS, CPU_DEVICE_ID, RUNTIME_CHOICES, choose_runtime
from pipeline.runtime.cache import load_model
from pipeline.runtime.errors import ModelError
from pipeline.runtime.session import SHIPPED_MODEL, NucleusModel, file_sha256, model_summary, resolve_model_path

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
