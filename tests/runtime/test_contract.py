"""The model contract's output: two channels (centre, material) or four (with the horizontal and
vertical distance maps); a model file that breaks it is refused when it is opened, by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pipeline.kernels.nuclei import NucleusThresholds
from pipeline.runtime.backends import CPU_DEVICE_ID
from pipeline.runtime.errors import ModelError
from pipeline.runtime.session import NucleusModel, check_model
from pipeline.slide.segment import segment_window
from pipeline.testing import build_blob_model, synthetic_slide_image


def test_a_four_output_model_runs_and_finds_what_its_two_output_twin_finds(tmp_path: Path) -> None:
    two = NucleusModel(build_blob_model(tmp_path / "two.onnx"), runtime="onnxruntime")
    four = NucleusModel(build_blob_model(tmp_path / "four.onnx", distance_maps=True), runtime="onnxruntime")
    assert four.thresholds.distance_weight == 1.0 and two.thresholds.distance_weight == 0.0
    x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    assert four.predict(x).shape == (1, 4, 64, 96)
    assert four.predict_device(x).shape == (1, 4, 64, 96)  # I/O binding sizes the output from the graph
    np.testing.assert_array_equal(four.predict(x)[:, :2], two.predict(x))
    if importlib.util.find_spec("torch") is not None:  # the torch runtime reads the graph's channels too
        on_torch = NucleusModel(four.path, runtime="torch", device_id=CPU_DEVICE_ID)
        assert on_torch.backend.prob_channels == 4
        np.testing.assert_allclose(on_torch.predict(x), four.predict(x), atol=1e-6)
    rgb, _ = synthetic_slide_image(256, 224, seed=3)
    labels_two, prob_two, _, _ = segment_window(rgb, two, two.thresholds, None, 256)
    labels_four, prob_four, _, _ = segment_window(rgb, four, four.thresholds, None, 256)
    assert labels_two.max() >= 10
    # flat distance maps part nothing: the same nuclei, and the probability maps kept are the two
    np.testing.assert_array_equal(labels_four, labels_two)
    assert prob_four is not None and prob_two is not None and prob_four.shape == prob_two.shape == (2, 224, 256)


def output_model(path: Path, channels: int, metadata: dict[str, str]) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["prob"]),
        ],
        "outputs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [numpy_helper.from_array(np.zeros((channels, 3, 1, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"mpp": "0.25", **metadata}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    save(model, str(path))
    return path


def test_an_output_of_other_than_two_or_four_channels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"three\.onnx: the output 'prob' has 3 channels where the contract has 2"):
        check_model(output_model(tmp_path / "three.onnx", 3, {}))


def test_distance_weight_on_a_two_output_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"two\.onnx: its metadata sets distance_weight 0\.5.* has 2 channels"):
        check_model(output_model(tmp_path / "two.onnx", 2, {"distance_weight": "0.5"}))
    check_model(output_model(tmp_path / "four.onnx", 4, {"distance_weight": "0.5"}))
    assert NucleusThresholds.from_metadata({"distance_weight": "0.5"}).distance_weight == 0.5
