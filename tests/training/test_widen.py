"""Widening a trained U-net (pipeline.training.widen): the wider network starts as the narrow one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the `train` extra

from pipeline.training.unet import NucleusUNet, UNetConfig  # noqa: E402
from pipeline.training.widen import grow_outputs, widen_unet  # noqa: E402


def trained_like(config: UNetConfig) -> NucleusUNet:
    """A network whose batch norms are not the identity, as after training."""
    torch.manual_seed(0)
    net = NucleusUNet(config)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("convs", [1, 2])
def test_a_widened_network_computes_the_narrow_ones_function(convs: int) -> None:
    narrow = trained_like(UNetConfig(base=4, convs_per_stage=convs))
    wide = widen_unet(narrow, 7, noise=0.0).eval()
    assert wide.config.base == 7
    assert wide.encoders[0][0].out_channels == 7 and wide.bottleneck[0].out_channels == 7 * 16
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        expected, got = narrow(x), wide(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_noise_parts_the_copies_without_changing_much() -> None:
    narrow = trained_like(UNetConfig(base=4, convs_per_stage=2))
    wide = widen_unet(narrow, 6, noise=0.01, seed=1).eval()
    first = wide.encoders[0][0].weight
    # channel 4 and 5 are copies of two of the first four: with noise none equals its source
    assert not any(torch.equal(first[c], first[s]) for c in (4, 5) for s in range(4))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        difference = (torch.sigmoid(wide(x)) - torch.sigmoid(narrow(x))).abs().max()
    assert 0 < float(difference) < 0.05


def test_a_network_is_not_narrowed() -> None:
    with pytest.raises(ValueError, match="cannot widen"):
        widen_unet(trained_like(UNetConfig(base=4)), 3)


def test_grown_outputs_keep_the_first_ones() -> None:
    """Two more outputs (the distance maps): the network's centre and material outputs are what
    they were; the new ones differ from them and learn from there."""
    net = trained_like(UNetConfig(base=4))
    grown = grow_outputs(net, 4, seed=2).eval()
    assert grown.config.outputs == 4 and grown.head.out_channels == 4
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        before, after = net(x), grown(x)
    assert after.shape == (2, 4, 32, 48)
    torch.testing.assert_close(after[:, :2], before, atol=0, rtol=0)
    assert not torch.allclose(after[:, 2:], before)
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_outputs(grown, 2)
