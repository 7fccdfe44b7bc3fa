"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers, with I/O binding so that
device arrays (cupy, torch) are read and written in place."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.errors import ModelError

PROVIDER_ORDER = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def available_providers() -> list[str]:
    """ONNX Runtime execution providers to use, best first (TensorRT, CUDA, then CPU)."""
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in present]


def default_providers(device_id: int) -> list[str]:
    """The providers a session uses when none are given: the best present, or the CPU alone for
    a negative ``device_id`` (inference kept on the CPU on a GPU node)."""
    return ["CPUExecutionProvider"] if device_id < 0 else available_providers()


def provider_options(
    providers: list[str], device_id: int = 0, trt_cache_dir: str | None = None, half: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime providers with their options: the device, and for TensorRT an engine cache
    (building an engine takes minutes; the cache makes it once per node and model) and fp16.

    Parameters
    ----------
    providers : list of str
        ONNX Runtime execution provider names, in order of preference.
    device_id : int, optional
        The GPU the CUDA and TensorRT providers use.
    trt_cache_dir : str or None, optional
        Folder of TensorRT's engine and timing caches (created); None: no cache.
    half : bool, optional
        Let TensorRT run in fp16.

    Returns
    -------
    list of (str, dict)
        Each provider with its options, as ``InferenceSession(providers=...)`` takes them.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for name in providers:
        opts: dict[str, Any] = {}
        if name == "TensorrtExecutionProvider":
            opts = {"device_id": device_id, "trt_fp16_enable": half}
            if trt_cache_dir:
                Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(trt_cache_dir),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(trt_cache_dir),
                )
        elif name == "CUDAExecutionProvider":
            opts = {"device_id": device_id}
        out.append((name, opts))
    return out


def prob_channels(session: Any) -> int | None:
    """The channels of the session's output ``prob`` as its graph declares them (2, or 4 with the
    distance maps); None where the graph leaves them open or has no such output."""
    for output in session.get_outputs():
        if output.name == "prob" and len(output.shape) == 4 and isinstance(output.shape[1], int):
            return int(output.shape[1])
    return None


def bound_run(session: Any, images: Any, device_id: int = 0, channels: int = 2) -> Any:
    """One ONNX Runtime run with I/O binding: the input is read from, and the output written to,
    memory that the caller's array library owns (cupy or torch on the GPU: no host round trip;
    numpy or CPU torch on the host).

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        The session to run.
    images : array
        float32 N×3×H×W input: numpy, cupy or torch.
    device_id : int, optional
        The GPU the arrays are on (ignored on the host).
    channels : int, optional
        Channels of the output ``prob``, as its graph declares them (:func:`prob_channels`).

    Returns
    -------
    array
        float32 N×C×H×W probabilities, of the input's array library and device.
    """
    module = type(images).__module__.split(".")[0]
    n, _, h, w = (int(v) for v in images.shape)
    c = channels
    if module == "cupy":
        import cupy

        x = cupy.ascontiguousarray(images, dtype=cupy.float32)
        out = cupy.empty((n, c, h, w), dtype=cupy.float32)
        where, x_ptr, out_ptr = "cuda", x.data.ptr, out.data.ptr
    elif module == "torch":
        import torch

        x = images.to(torch.float32).contiguous()
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=x.device)
        where = "cuda" if x.is_cuda else "cpu"
        device_id = (x.device.index or 0) if x.is_cuda else 0
        x_ptr, out_ptr = x.data_ptr(), out.data_ptr()
    else:
        x = np.ascontiguousarray(images, dtype=np.float32)
        out = np.empty((n, c, h, w), dtype=np.float32)
        where, device_id, x_ptr, out_ptr = "cpu", 0, x.ctypes.data, out.ctypes.data
    binding = session.io_binding()
    binding.bind_input("image", where, device_id, np.float32, list(x.shape), x_ptr)
    binding.bind_output("prob", where, device_id, np.float32, [n, c, h, w], out_ptr)
    session.run_with_iobinding(binding)
    return out


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` on the best providers present (or those given).

    On the CPU, predictions made at once (a worker's task threads) each run on a session of their
    own, made when first needed (tens of ms) and kept: a session's memory arena then only ever
    serves one run at a time and stays the size of one run. Runs sharing one arena fragment it,
    and it grew by a few hundred MB at random points of a slide (benchmarks/RESULTS-pipeline.md).
    On a GPU one session serves every thread (the device runs one batch at a time anyway).
    """

    def __init__(
        self,
        path: Path,
        intra_op_threads: int = 1,
        device_id: int = 0,
        half: bool = False,
        trt_cache_dir: str | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, intra_op_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.device_id = device_id
        try:
            providers = providers or default_providers(device_id)
            self.on_cpu = providers == ["CPUExecutionProvider"]
            # On the CPU the memory pattern (a block planned per input shape from the second run
            # on) sits beside the arena the first run filled: ~640 MB more per 1408² tile and per
            # concurrent run, at the same speed; without it the arena is reused run to run.
            options.enable_mem_pattern = not self.on_cpu
            configured = provider_options(providers, device_id, trt_cache_dir, half)
            self._new_session = lambda: ort.InferenceSession(str(path), sess_options=options, providers=configured)
            self.session = self._new_session()
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        self._idle = [self.session]  # CPU sessions no run is using
        self._made = 1
        self._lock = threading.Lock()
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.prob_channels = prob_channels(self.session)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    @staticmethod
    def sees_gpu() -> bool:
        """onnxruntime-gpu is installed and offers the CUDA provider."""
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        return "CUDAExecutionProvider" in ort.get_available_providers()

    @property
    def device(self) -> str:
        gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(self.session.get_providers())
        return f"cuda:{self.device_id}" if gpu else "cpu"

    @contextmanager
    def _leased(self) -> Iterator[Any]:
        """A session for one run: on the CPU one that no other run is using (a new one when all
        are busy), else the session."""
        if not self.on_cpu:
            yield self.session
            return
        with self._lock:
            session = self._idle.pop() if self._idle else None
            self._made += session is None
        if session is None:
            session = self._new_session()
        try:
            yield session
        finally:
            with self._lock:
                self._idle.append(session)

    @property
    def sessions(self) -> int:
        """CPU sessions made so far (at most the number of runs ever made at once)."""
        return self._made

    def predict(self, images: np.ndarray) -> np.ndarray:
        with self._leased() as session:
            out = session.run(["prob"], {"image": np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(out[0])

    def predict_device(self, images: Any) -> Any:
        with self._leased() as session:
            return bound_run(session, images, self.device_id, self.prob_channels or 2)
