"""Trainable weights from an exported model (pipeline.training.from_onnx): training may start from
the model of record, the ONNX file, with the function it computes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the `train` extra

from pipeline.kernels.nuclei import NucleusThresholds  # noqa: E402
from pipeline.training.export import contract_metadata, export_onnx, onnx_probabilities  # noqa: E402
from pipeline.training.from_onnx import unet_from_onnx  # noqa: E402
from pipeline.training.unet import NucleusUNet, UNetConfig  # noqa: E402


@pytest.mark.parametrize("outputs", [2, 4])
def test_the_network_read_back_from_its_export_computes_what_the_file_computes(tmp_path: Path, outputs: int) -> None:
    torch.manual_seed(0)
    net = NucleusUNet(UNetConfig(base=4, outputs=outputs))
    net.train()
    with torch.no_grad():  # batch norms that are not the identity, as after training
        for _ in range(3):
            net(torch.rand(4, 3, 32, 32))
    path = export_onnx(net, tmp_path / "m.onnx", contract_metadata(net, NucleusThresholds(), 16, "test", "none"))
    batches = [torch.rand(4, 3, 32, 32) for _ in range(3)]
    back = unet_from_onnx(path, batches).eval()
    assert back.config == net.config
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        got = back.probabilities(x).numpy()
    assert got.shape == (2, outputs, 48, 64)
    expected = onnx_probabilities(path, threads=1)(x.numpy())
    assert abs(got - expected).max() < 1e-4
    # in training mode on batches like those measured, its batch norms still give the file's output
    back.train()
    with torch.no_grad():
        trained_mode = back.probabilities(batches[0]).numpy()
    assert abs(trained_mode - onnx_probabilities(path, threads=1)(batches[0].numpy())).max() < 0.05
