"""The int8 variant of a contract model (pipeline.training.int8): the same contract, int8
convolutions, and a segmentation that matches the float model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto  # noqa: E402

from pipeline.evaluation.metrics import aggregated_jaccard_index  # noqa: E402
from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities  # noqa: E402
from pipeline.kernels.stain import reinhard_stats  # noqa: E402
from pipeline.runtime.session import SHIPPED_MODEL  # noqa: E402
from pipeline.slide.model_input import model_input, normalise_stain  # noqa: E402
from pipeline.testing import synthetic_slide_image  # noqa: E402
from pipeline.training.int8 import quantise_int8  # noqa: E402

MIN_AJI_TO_FLOAT = 0.95  # int8 labels against the float model's labels, on a generated image


def _probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's output through ONNX Runtime on the CPU (no PyTorch needed)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["prob"], {"image": x})[0]


def _inputs(seed: int, size: int = 256) -> np.ndarray:
    rgb, _ = synthetic_slide_image(size, size, seed=seed, tissue="full")
    return model_input([normalise_stain(rgb, reinhard_stats(rgb))], size)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("int8") / "nuclei_unet.int8.onnx"
    return quantise_int8(SHIPPED_MODEL, target, iter([_inputs(seed) for seed in (11, 12, 13)]))


def test_int8_variant_keeps_the_contract(int8_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(int8_model))
    meta = {p.key: p.value for p in model.metadata_props}
    source = {p.key: p.value for p in onnx.load(str(SHIPPED_MODEL)).metadata_props}
    assert meta["precision"] == "int8" and len(meta["fp32_source_sha256"]) == 64
    assert all(meta[key] == value for key, value in source.items())  # mpp, thresholds, context …
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("image", TensorProto.FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [("prob", TensorProto.FLOAT)]
    int8_weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    n_convs = sum(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(SHIPPED_MODEL)).graph.node)
    assert len(int8_weights) == n_convs
    assert int8_model.stat().st_size < 0.4 * SHIPPED_MODEL.stat().st_size
    assert not list(Path.cwd().glob("*.data")) and not list(Path.cwd().glob("*_temp*.onnx"))


def test_int8_variant_segments_like_the_float_model(int8_model: Path) -> None:
    x = _inputs(seed=4, size=512)  # not among the calibration images
    params = NucleusThresholds.from_metadata({p.key: p.value for p in onnx.load(str(SHIPPED_MODEL)).metadata_props})
    labels = []
    for path in (SHIPPED_MODEL, int8_model):
        prob = _probabilities(path, x)[0]
        assert prob.dtype == np.float32 and prob.shape == (2, 512, 512)
        labels.append(np.asarray(instances_from_probabilities(prob, params)))
    assert labels[0].max() > 50  # the float model finds the generated nuclei
    assert aggregated_jaccard_index(labels[0], labels[1]) >= MIN_AJI_TO_FLOAT
