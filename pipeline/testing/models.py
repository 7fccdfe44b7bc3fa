"""A small classical model that meets the ONNX model contract, for tests and benchmarks
that measure the pipeline's own cost. Nothing here is used by a real run: the pipeline's default
model is the trained one shipped in ``pipeline/runtime/weights``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def build_blob_model(path: Path, mpp: float = 0.25, distance_maps: bool = False) -> Path:
    """A classical nucleus detector written as an ONNX graph that meets the model contract:
    darkness (1 − mean RGB) blurred at two scales and squashed by sigmoids gives the
    nuclear-material map (small blur) and the centre map (large blur, peaks at blob centres).
    ``distance_maps``: a four-output model, whose distance maps (channels 2 and 3) are flat
    (0.5: no direction anywhere), so that it finds what the two-output one finds."""
    from onnx import TensorProto, helper, numpy_helper

    def gaussian(sigma: float, radius: int) -> np.ndarray:
        ax = np.arange(-radius, radius + 1, dtype=np.float32)
        g = np.exp(-(ax**2) / (2 * sigma**2))
        k = np.outer(g, g)
        return (k / k.sum()).astype(np.float32)

    small, large = gaussian(1.0, 3), gaussian(3.0, 9)
    w_dark = np.full((1, 3, 1, 1), -1.0 / 3.0, dtype=np.float32)
    inits = [
        numpy_helper.from_array(w_dark, "w_dark"),
        numpy_helper.from_array(np.array([1.0], np.float32), "b_dark"),
        numpy_helper.from_array(small[None, None], "w_small"),
        numpy_helper.from_array(large[None, None], "w_large"),
        numpy_helper.from_array(np.array([30.0], np.float32), "gain_m"),
        numpy_helper.from_array(np.array([-0.35], np.float32), "shift_m"),
        numpy_helper.from_array(np.array([40.0], np.float32), "gain_c"),
        numpy_helper.from_array(np.array([-0.42], np.float32), "shift_c"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w_dark", "b_dark"], ["dark"]),
        helper.make_node("Conv", ["dark", "w_small"], ["dark_s"], pads=[3, 3, 3, 3]),
        helper.make_node("Conv", ["dark", "w_large"], ["dark_l"], pads=[9, 9, 9, 9]),
        helper.make_node("Add", ["dark_s", "shift_m"], ["m0"]),
        helper.make_node("Mul", ["m0", "gain_m"], ["m1"]),
        helper.make_node("Add", ["dark_l", "shift_c"], ["c0"]),
        helper.make_node("Mul", ["c0", "gain_c"], ["c1"]),
    ]
    channels = ["c1", "m1"]
    if distance_maps:  # logits 0 from a convolution with zero weights: 0.5 everywhere
        inits.append(numpy_helper.from_array(np.zeros((2, 3, 1, 1), np.float32), "w_flat"))
        nodes.append(helper.make_node("Conv", ["image", "w_flat"], ["flat"]))
        channels.append("flat")
    nodes += [
        helper.make_node("Concat", channels, ["logits"], axis=1),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes,
        "blob_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4 if distance_maps else 2, "H", "W"])],
        inits,
    )
    metadata = _blob_metadata(mpp, "test-blob-1")
    if distance_maps:
        metadata.update(version="test-blob-4", distance_weight="1.0")
    return _save_contract_model(graph, path, metadata)


def _blob_metadata(mpp: float, version: str) -> dict[str, str]:
    return {
        "mpp": str(mpp),
        "version": version,
        "training_data": "none (classical detector for tests)",
        "centre_sigma": "1.0",
        "centre_threshold": "0.5",
        "material_sigma": "0.5",
        "material_threshold": "0.5",
        "min_area_px": "20",
        "context_px": "16",
        "receptive_field_px": "25",
        # what it finds on synthetic_slide_image's nuclei at their true scale (for the scale estimate)
        "median_nucleus_area_px": "213",
    }


def _save_contract_model(graph: Any, path: Path, metadata: dict[str, str]) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_constant_model(path: Path, value: float, mpp: float = 0.25) -> Path:
    """A model with the contract's input, output and metadata whose output is ``value`` at every
    pixel of both channels, whatever the image: NaN as a model overflowing in fp16 gives, 1.0 as
    one that calls everything a nucleus, or a value outside [0, 1] as a graph without its sigmoid.
    For the checks on what a network returns and on what a slide yields."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.zeros((2, 3, 1, 1), np.float32), "w_zero"),
        numpy_helper.from_array(np.full(2, value, np.float32), "b_value"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w_zero", "b_value"], ["prob"])],
        "constant_output",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        inits,
    )
    return _save_contract_model(graph, path, _blob_metadata(mpp, f"test-constant-{value}"))
