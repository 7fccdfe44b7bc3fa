"""The contract ONNX model through PyTorch (the GPU fallback runtime) against ONNX Runtime, the
fp16 variant, and the session's runtime choice. CPU here; the ``gpu``-marked twins run on a device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `train` / `gpu` extras
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from pipeline.evaluation.metrics import aggregated_jaccard_index  # noqa: E402
from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities  # noqa: E402
from pipeline.runtime import ModelError, NucleusModel, choose_runtime  # noqa: E402
from pipeline.runtime.onnxruntime_backend import provider_options  # noqa: E402
from pipeline.runtime.torch_onnx import TorchOnnxModel, UnsupportedOperator  # noqa: E402
from pipeline.training.export import contract_metadata, export_onnx, onnx_probabilities  # noqa: E402
from pipeline.training.fp16 import convert_to_fp16  # noqa: E402
from pipeline.training.unet import NucleusUNet, UNetConfig  # noqa: E402

FP32_TOLERANCE = 1e-4  # max |Δprob| of the torch runtime against ONNX Runtime in fp32
FP16_TOLERANCE = 0.02  # max |Δprob| of fp16 against fp32
AJI_TOLERANCE = 0.005  # the largest AJI change accepted for the fp16 variant


@pytest.fixture(scope="module")
def unet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised U-net (2 convs per stage, batch norm with non-trivial running
    statistics) exported with pipeline.training.export, as tests/training/test_export.py does."""
    torch.manual_seed(0)
    net = NucleusUNet(UNetConfig(base=4, convs_per_stage=2))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    meta = contract_metadata(net, NucleusThresholds(), context_px=24, version="0.0.test", training_data="none")
    return export_onnx(net, tmp_path_factory.mktemp("onnx") / "unet.onnx", meta)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    return onnx_probabilities(path, threads=1)(x)


@pytest.mark.parametrize("name", ["blob", "unet"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_parity_with_onnxruntime(name, channels_last, blob_model, unet_model, images) -> None:
    path = blob_model if name == "blob" else unet_model
    ours = TorchOnnxModel(path, channels_last=channels_last).run_numpy(images)
    assert ours.dtype == np.float32 and ours.shape == (2, 2, 64, 96)
    assert float(np.abs(ours - reference(path, images)).max()) < FP32_TOLERANCE


def test_the_unet_graph_uses_the_ops_it_should(unet_model) -> None:
    ops = {n.op_type for n in onnx.load(str(unet_model)).graph.node}
    assert {"Conv", "ConvTranspose", "MaxPool", "Concat", "LeakyRelu", "Sigmoid"} <= ops


def test_a_run_keeps_only_the_activations_a_later_node_reads(unet_model, images) -> None:
    """Device memory per tile: an activation goes once no later node reads it (the U-net's skip
    connections stay until their decoder stage), not at the end of the run."""
    import weakref

    model = TorchOnnxModel(unet_model)
    last_reader = {n: i for i, (_, names_in, _, _) in enumerate(model.nodes) for n in names_in if n}
    produced: list[tuple[str, weakref.ref]] = []
    excess = []

    def watched(i: int, fn):  # type: ignore[no-untyped-def]
        def run(inputs, attrs):  # type: ignore[no-untyped-def]
            alive = {name for name, ref in produced if ref() is not None}
            needed = {name for name, _ in produced if last_reader.get(name, -1) >= i}
            excess.append(len(alive - needed))
            out = fn(inputs, attrs)
            produced.extend((name, weakref.ref(t)) for name, t in zip(model.nodes[i][2], out, strict=False))
            return out

        return run

    model.nodes = [(watched(i, fn), a, b, c) for i, (fn, a, b, c) in enumerate(model.nodes)]
    out = model.run_numpy(images)
    assert len(model.nodes) > 20 and len(produced) == len(model.nodes)
    assert max(excess) == 0  # no activation outlives its last reader
    np.testing.assert_allclose(out, reference(unet_model, images), atol=FP32_TOLERANCE)


@pytest.mark.parametrize("name", ["blob", "unet"])
def test_half_precision(name, blob_model, unet_model, images) -> None:
    path = blob_model if name == "blob" else unet_model
    half = TorchOnnxModel(path, half=True, channels_last=True).run_numpy(images)
    assert half.dtype == np.float32
    assert float(np.abs(half - reference(path, images)).max()) < FP16_TOLERANCE
    emulated = TorchOnnxModel(path, emulate_half=True).run_numpy(images)  # float16 rounding, float32 arithmetic
    assert float(np.abs(emulated - half).max()) < 0.005


@pytest.mark.parametrize("name", ["blob", "unet"])
def test_fp16_onnx_variant(name, blob_model, unet_model, images, tmp_path) -> None:
    path = blob_model if name == "blob" else unet_model
    fp16 = convert_to_fp16(path, tmp_path / "fp16.onnx")
    model = onnx.load(str(fp16))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "fp16" and meta["mpp"] == "0.25"
    assert all(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert fp16.stat().st_size < 0.6 * path.stat().st_size or name == "blob"
    ref = reference(path, images)
    via_ort = reference(fp16, images)  # the contract's float32 I/O is kept
    assert via_ort.dtype == np.float32 and float(np.abs(via_ort - ref).max()) < FP16_TOLERANCE
    via_torch = TorchOnnxModel(fp16).run_numpy(images)
    assert float(np.abs(via_torch - ref).max()) < FP16_TOLERANCE


def test_fp16_keeps_the_segmentation_score(blob_model) -> None:
    """AJI against the generated truth, fp16 vs fp32, on a generated slide crop."""
    from pipeline.kernels.stain import reinhard_stats
    from pipeline.slide.model_input import model_input, normalise_stain
    from pipeline.testing import synthetic_slide_image

    rgb, nuclei = synthetic_slide_image(256, 256, seed=4, tissue="full")
    yy, xx = np.mgrid[:256, :256]
    truth = np.zeros((256, 256), np.int32)
    for k, n in enumerate(nuclei, 1):
        truth[np.hypot(yy - n.y, xx - n.x) <= n.radius] = k
    x = model_input([normalise_stain(rgb, reinhard_stats(rgb))], 256)
    meta = TorchOnnxModel(blob_model).metadata
    params = NucleusThresholds.from_metadata(meta)
    scores = []
    for half in (False, True):
        prob = TorchOnnxModel(blob_model, half=half).run_numpy(x)[0]
        scores.append(aggregated_jaccard_index(truth, instances_from_probabilities(prob, params)))
    assert scores[0] > 0.6
    assert abs(scores[1] - scores[0]) <= AJI_TOLERANCE


def test_dlpack_in_and_out_without_copies(blob_model, images) -> None:
    model = TorchOnnxModel(blob_model)
    out = model.run_dlpack(images)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, model.run_numpy(images), atol=1e-6)
    t = torch.from_numpy(images)
    assert isinstance(model.run_dlpack(t), torch.Tensor)
    assert torch.from_dlpack(images).data_ptr() == images.ctypes.data  # the input is shared, not copied


def test_unsupported_operator_is_named(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["image"], ["prob"], axis=1)],
        "softmax",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedOperator, match="Softmax"):
        TorchOnnxModel(path)


def test_constant_resize_and_batchnorm(tmp_path) -> None:
    """Operators our exports may contain besides the U-net's: Constant, BatchNormalization,
    Resize (nearest and linear), Relu, Reshape/Shape, Upsample-free graphs of opset 17."""
    rng = np.random.default_rng(1)
    c = 3
    inits = [
        onnx.numpy_helper.from_array(rng.random(c, dtype=np.float32) + 0.5, "scale"),
        onnx.numpy_helper.from_array(rng.random(c, dtype=np.float32), "bias"),
        onnx.numpy_helper.from_array(rng.random(c, dtype=np.float32), "mean"),
        onnx.numpy_helper.from_array(rng.random(c, dtype=np.float32) + 0.5, "var"),
        onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("BatchNormalization", ["image", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Mul", ["r", "k"], ["h"]),
        helper.make_node("MaxPool", ["h"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["up_n"], mode="nearest"),
        helper.make_node("Resize", ["p", "", "scales"], ["up_l"], mode="linear"),
        helper.make_node("Sub", ["up_n", "up_l"], ["d"]),
        helper.make_node("Shape", ["d"], ["s"]),
        helper.make_node("Reshape", ["d", "s"], ["d2"]),
        helper.make_node("Concat", ["d2", "up_l"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w"], ["prob"], pads=[0, 1, 2, 1]),
    ]
    inits.append(onnx.numpy_helper.from_array(rng.random((2, 2 * c, 3, 3), dtype=np.float32) - 0.5, "w"))
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        inits,
    )
    path = tmp_path / "ops.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.random((1, 3, 32, 48), dtype=np.float32)
    ref = reference(path, x)
    ours = TorchOnnxModel(path).run_numpy(x)
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).max()) < FP32_TOLERANCE


# ------------------------------------------------------------------ the session's runtimes ----


def test_auto_runtime_on_this_node() -> None:
    from pipeline.kernels.dispatch import gpu_available

    expected = {"onnxruntime", "torch"} if gpu_available() else {"onnxruntime"}
    assert choose_runtime("auto") in expected
    assert choose_runtime("torch") == "torch"
    with pytest.raises(ModelError, match="unknown runtime"):
        choose_runtime("tensorflow")


def test_tensorrt_engine_cache_options(tmp_path) -> None:
    opts = dict(
        provider_options(
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            device_id=1,
            trt_cache_dir=str(tmp_path / "trt"),
            half=True,
        )
    )
    trt = opts["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_fp16_enable"] and trt["device_id"] == 1 and (tmp_path / "trt").is_dir()
    assert opts["CUDAExecutionProvider"] == {"device_id": 1} and opts["CPUExecutionProvider"] == {}


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_session_runtimes_agree(runtime, unet_model, images) -> None:
    model = NucleusModel(unet_model, runtime=runtime)
    assert model.runtime == runtime and model.mpp == 0.25 and model.context_px == 24
    ref = reference(unet_model, images)
    assert float(np.abs(model.predict(images) - ref).max()) < FP32_TOLERANCE
    # predict_device: I/O binding (onnxruntime) or DLPack (torch); host arrays work as well
    out = model.predict_device(images)
    assert isinstance(out, np.ndarray) and float(np.abs(out - ref).max()) < FP32_TOLERANCE
    out_t = model.predict_device(torch.from_numpy(images))
    assert isinstance(out_t, torch.Tensor) and float(np.abs(out_t.numpy() - ref).max()) < FP32_TOLERANCE
    with pytest.raises(ValueError, match="multiples of 16"):
        model.predict(np.zeros((1, 3, 20, 32), np.float32))


def test_torch_session_refuses_a_model_it_cannot_run(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["image", "image"], ["prob"], equation="nchw,nchw->nchw")],
        "einsum",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    path = tmp_path / "einsum.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="mpp", value="0.25")
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="Einsum"):
        NucleusModel(path, runtime="torch")


# ------------------------------------------------------------------------------- GPU twins ----


TF32_TOLERANCE = 2e-2  # fp32 with TF32 convolutions (10-bit mantissa inputs): a bound, not the parity check


@pytest.fixture
def tf32(request: pytest.FixtureRequest):
    """TF32 for cuDNN convolutions and matmuls on (True) or off (False) for one test, then restored.
    PyTorch allows TF32 convolutions by default; the fp32 parity bound (1e-4) holds only without."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(request.param)
    yield request.param
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("half", "tf32"), [(False, False), (False, True), (True, False)], indirect=["tf32"], ids=["fp32", "tf32", "fp16"]
)
def test_gpu_torch_runtime_keeps_probabilities_on_the_device(half, tf32, unet_model, images, record_property) -> None:
    import cupy

    model = NucleusModel(unet_model, runtime="torch", half=half)
    assert model.device.startswith("cuda")
    out = model.predict_device(cupy.asarray(images))
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32
    diff = float(np.abs(out.get() - reference(unet_model, images)).max())
    record_property("max_abs_prob_diff", diff)  # the measured figure, in the JUnit XML
    tolerance = FP16_TOLERANCE if half else TF32_TOLERANCE if tf32 else FP32_TOLERANCE
    assert diff < tolerance


@pytest.mark.gpu
def test_gpu_onnxruntime_io_binding(unet_model, images) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed on this node")
    import cupy

    model = NucleusModel(unet_model, runtime="onnxruntime")
    assert model.device.startswith("cuda")
    out = model.predict_device(cupy.asarray(images))
    assert isinstance(out, cupy.ndarray)
    assert float(np.abs(out.get() - reference(unet_model, images)).max()) < 1e-3
