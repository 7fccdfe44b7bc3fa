"""Where inference runs: ``device="cpu"`` keeps it on the CPU on a GPU node too (the GPU
benchmark's CPU path and any CPU-only run rely on it). The GPU node is simulated: every backend
says it sees a GPU and ONNX Runtime offers a CUDA provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.runtime import CPU_DEVICE_ID, backends, cache, session
from pipeline.runtime import onnxruntime_backend as ort_backend
from pipeline.slide.work import model_for


@pytest.fixture
def gpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_nvidia_device_node", lambda: True)
    for backend in session.BACKENDS.values():
        monkeypatch.setattr(backend, "sees_gpu", staticmethod(lambda: True))

    def gpu_providers() -> list[str]:
        raise AssertionError("a CPU session must not ask for the GPU providers")

    monkeypatch.setattr(ort_backend, "available_providers", gpu_providers)
    monkeypatch.setattr(cache, "_MODELS", {})


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


# a CPU backend of the shipped model and a 512² input, in a fresh process (its memory alone)
_CPU_BACKEND = """
import json, threading
import numpy as np
from pipeline.runtime.onnxruntime_backend import OnnxRuntimeBackend
from pipeline.runtime.session import resolve_model_path
from pipeline.testing.memory import current_rss_bytes

backend = OnnxRuntimeBackend(resolve_model_path(None), providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((1, 3, 512, 512), dtype=np.float32)
"""


def in_fresh_process(script: str) -> dict:
    """What ``script`` prints last (JSON), run by a fresh interpreter."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_RUN_TWICE = (
    _CPU_BACKEND
    + """
first = backend.predict(x)
after_one = current_rss_bytes()
second = backend.predict(x)
after_two = current_rss_bytes()
print(json.dumps({"grew": after_two - after_one, "same": bool(np.array_equal(first, second))}))
"""
)


def test_a_cpu_session_takes_no_new_memory_for_a_second_tile_of_the_same_shape() -> None:
    """Worker memory must not depend on how many tiles a worker has inferred. ONNX Runtime's
    memory pattern (on by default) plans one block per input shape on the second run and keeps
    it beside the arena the first run filled: ~640 MB more for a 1408² tile on the CPU, for no
    speed (benchmarks/RESULTS-pipeline.md). A CPU session reuses its arena instead."""
    result = in_fresh_process(_RUN_TWICE)
    assert result["same"]
    assert result["grew"] < 16 * 2**20, f"a second run took {result['grew'] / 2**20:.0f} MB more"


_RUN_AT_ONCE = (
    _CPU_BACKEND
    + """
for _ in range(3):
    backend.predict(x)
one_at_a_time = backend.sessions

def two_at_once():
    barrier = threading.Barrier(2)
    def run():
        barrier.wait()
        backend.predict(x)
    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]

two_at_once()
after_first = current_rss_bytes()
for _ in range(8):
    two_at_once()
print(json.dumps({"one_at_a_time": one_at_a_time, "sessions": backend.sessions,
                  "grew": current_rss_bytes() - after_first}))
"""
)


def test_cpu_runs_made_at_once_each_have_a_session_and_memory_stays_put() -> None:
    """A worker's task threads infer at once. Sharing one session, their runs would share one
    memory arena, which fragments and grows by a few hundred MB at random points of a slide (worker
    peaks of 2.0–2.7 GB measured for the same slide). Each run has a session to itself: memory is
    that of one run per thread, whatever the interleaving."""
    result = in_fresh_process(_RUN_AT_ONCE)
    assert result["one_at_a_time"] == 1  # runs one after another share a session
    assert result["sessions"] == 2  # two at once: one each, kept for the next time
    assert result["grew"] < 8 * 2**20, f"eight more rounds took {result['grew'] / 2**20:.0f} MB more"
