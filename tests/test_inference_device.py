"""Where inference runs: ``device="cpu"`` keeps it on the CPU on a GPU node too (the GPU
benchmark's CPU path and any CPU-only run rely on it). The GPU node is simulated: every backend
says it sees a GPU and ONNX Runtime offers a CUDA provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.runtime import CPU_DEVICE_ID, session
from pipeline.runtime import onnxruntime_backend as ort_backend
from pipeline.slide.plan import model_for


@pytest.fixture
def gpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "_nvidia_device_node", lambda: True)
    for backend in session.BACKENDS.values():
        monkeypatch.setattr(backend, "sees_gpu", staticmethod(lambda: True))

    def gpu_providers() -> list[str]:
        raise AssertionError("a CPU session must not ask for the GPU providers")

    monkeypatch.setattr(ort_backend, "available_providers", gpu_providers)
    monkeypatch.setattr(session, "_MODELS", {})


def test_auto_would_pick_a_gpu_runtime_on_a_gpu_node(gpu_node) -> None:
    assert session.choose_runtime("auto") == next(iter(session.BACKENDS))  # the first that sees a GPU
    assert session.choose_runtime("auto", cpu=True) == "onnxruntime"
    assert session.choose_runtime("torch", cpu=True) == "torch"  # an explicit runtime stays


def test_device_cpu_infers_on_the_cpu(gpu_node, blob_model: Path) -> None:
    model = model_for(Config(model=str(blob_model), device="cpu", half=True))
    assert model.runtime == "onnxruntime" and model.device == "cpu"
    assert model.device_id == CPU_DEVICE_ID and not model.half
    assert model.backend.session.get_providers() == ["CPUExecutionProvider"]
    assert model_for(Config(model=str(blob_model), device="cpu")) is model  # half means nothing there: one session


def test_device_auto_asks_for_the_gpu_providers(gpu_node, blob_model: Path) -> None:
    """The other side of the same switch: without device="cpu" the session asks for the best
    providers (here the simulated GPU's, which the fixture refuses)."""
    with pytest.raises(session.ModelError, match="GPU providers"):
        model_for(Config(model=str(blob_model), device="auto", runtime="onnxruntime"))
