"""PyTorch backend: the same ONNX graph run by :mod:`pipeline.runtime.torch_onnx`, for GPU nodes
whose CUDA has no onnxruntime-gpu build. torch is imported only when this backend is used."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.errors import ModelError


class TorchBackend:
    def __init__(
        self,
        path: Path,
        intra_op_threads: int = 1,
        device_id: int = 0,
        half: bool = False,
        trt_cache_dir: str | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import torch

        from pipeline.runtime.torch_onnx import TorchOnnxModel, UnsupportedOperator

        device = f"cuda:{device_id}" if device_id >= 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, intra_op_threads))
        try:
            self.model = TorchOnnxModel(
                path, device=device, half=half and device != "cpu", channels_last=device != "cpu"
            )
        except UnsupportedOperator as exc:
            raise ModelError(str(exc)) from exc
        except Exception as exc:
            raise ModelError(f"{path}: cannot load the model for the torch runtime: {exc}") from exc
        self.inputs = list(self.model.inputs)
        self.outputs = list(self.model.outputs)
        self.prob_channels = self.model.prob_channels
        self.metadata: dict[str, str] = dict(self.model.metadata)

    @staticmethod
    def sees_gpu() -> bool:
        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        return bool(torch.cuda.is_available())

    @property
    def device(self) -> str:
        return str(self.model.device)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.run_numpy(images)

    def predict_device(self, images: Any) -> Any:
        return self.model.run_dlpack(images)
