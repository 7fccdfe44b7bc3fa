"""The ONNX model contract (docs/model.md) of the export on a tiny, randomly initialised U-net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `train` extra
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pipeline.kernels.nuclei import NucleusThresholds  # noqa: E402
from pipeline.training.export import (  # noqa: E402
    contract_metadata,
    export_onnx,
    measure_context_px,
    onnx_probabilities,
    read_metadata,
    torch_probabilities,
)
from pipeline.training.unet import (  # noqa: E402
    NucleusUNet,
    UNetConfig,
    receptive_field_support,
    theoretical_receptive_field,
)

TINY = UNetConfig(base=2, convs_per_stage=1)
THRESHOLDS = NucleusThresholds(
    centre_sigma=1.5,
    centre_threshold=0.2,
    centre_weak_threshold=0.1,
    material_sigma=0.7,
    material_threshold=0.45,
    min_area_px=25,
)


@pytest.fixture(scope="module")
def tiny_net() -> NucleusUNet:
    torch.manual_seed(0)
    net = NucleusUNet(TINY)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def exported(tiny_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    meta = contract_metadata(tiny_net, THRESHOLDS, context_px=24, version="0.0.test", training_data="none (test)")
    return export_onnx(tiny_net, path, meta)


def test_names_dtypes_and_dynamic_axes(exported):
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and out.name == "prob"
    assert inp.type == "tensor(float)" and out.type == "tensor(float)"
    assert inp.shape[1] == 3 and out.shape[1] == 2
    assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))  # N, H, W dynamic


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 48, 80)])
def test_output_is_a_probability_and_matches_torch(exported, tiny_net, shape):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    prob = onnx_probabilities(exported, threads=1)(x)
    assert prob.shape == (shape[0], 2, shape[2], shape[3]) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert np.allclose(prob, torch_probabilities(tiny_net)(x), atol=1e-5)


def test_metadata_keys(exported):
    meta = read_metadata(exported)
    for key in (
        "mpp",
        "version",
        "training_data",
        "receptive_field_px",
        "context_px",
        "centre_sigma",
        "centre_threshold",
        "centre_weak_threshold",
        "material_sigma",
        "material_threshold",
        "min_area_px",
    ):
        assert key in meta, key
    assert float(meta["mpp"]) == 0.25
    assert NucleusThresholds.from_metadata(meta) == THRESHOLDS
    assert int(meta["receptive_field_px"]) == theoretical_receptive_field(TINY)
    onnx.checker.check_model(onnx.load(str(exported)))


def test_the_pipeline_session_accepts_the_export(exported):
    session = pytest.importorskip("pipeline.runtime.session")
    model = session.NucleusModel(exported)
    assert model.mpp == 0.25 and model.context_px == 24 and model.thresholds == THRESHOLDS
    assert model.predict(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("config", [TINY, UNetConfig(base=2, convs_per_stage=2)])
def test_receptive_field_matches_the_gradient_support(config):
    torch.manual_seed(0)
    net = NucleusUNet(config).eval()
    rf = theoretical_receptive_field(config)
    size = (rf // 16 + 3) * 16
    widest = 0
    for phase in (0, 5, 7, 8, 15):  # the support depends on the pixel's phase on the pooling grid
        x = torch.rand(1, 3, size, size, requires_grad=True)
        c = size // 2 - size // 2 % 16 + phase
        net(x)[0, 1, c, c].backward()
        rows = np.nonzero(x.grad.abs().sum(dim=(0, 1, 3)).numpy())[0] - c
        first, last = receptive_field_support(config, phase)
        # max pooling passes gradient to one input of four, so the measured support may be
        # up to one pooling window short of the theory at either end, never wider
        assert first <= rows.min() <= first + 16 and last - 16 <= rows.max() <= last
        widest = max(widest, int(rows.max() - rows.min() + 1))
    assert rf - 16 <= widest <= rf


def test_context_is_measured_within_the_receptive_field(tiny_net):
    rng = np.random.default_rng(0)
    images = [rng.random((384, 384, 3), dtype=np.float32)]
    context = measure_context_px(torch_probabilities(tiny_net), images)
    assert 0 < context <= theoretical_receptive_field(TINY) // 2 + 4


def test_whole_image_and_tiled_inference_agree(tiny_net):
    from pipeline.training.export import image_probabilities

    rgb = np.random.default_rng(1).random((200, 250, 3), dtype=np.float32)
    run = torch_probabilities(tiny_net)
    whole = image_probabilities(run, rgb, halo=64)
    tiled = image_probabilities(run, rgb, halo=64, tile=256)
    assert whole.shape == tiled.shape == (2, 200, 250)
    assert np.abs(whole - tiled).max() < 1e-3


class _Payload:
    """A pickled object that runs code when it is loaded (what a hostile checkpoint carries)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(self.marker), "ran"))


def test_checkpoints_are_loaded_as_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.training.export import load_checkpoint
    from pipeline.training.unet import NucleusUNet

    net = NucleusUNet(TINY)
    good = tmp_path / "good.pt"
    torch.save({"model": net.state_dict(), "step": 3, "config": {"unet": TINY.as_dict(), "lr": 1e-3}}, good)
    assert isinstance(load_checkpoint(good), NucleusUNet)

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    torch.save({"model": net.state_dict(), "config": {"unet": TINY.as_dict()}, "x": _Payload(str(marker))}, bad)
    with pytest.raises(Exception, match="(?i)weights"):
        load_checkpoint(bad)
    assert not marker.exists()
