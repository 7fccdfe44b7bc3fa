"""A wider U-net that starts as a narrower one: ``widen_unet(net, base)``; and one with more
outputs that starts with the same ones: ``grow_outputs(net, outputs)``.

Capacity is added to a trained network without starting over (Net2WiderNet, Chen et al. 2016):
each stage's extra channels are copies of existing channels of the same stage, and every layer
reading a copied channel divides that channel's weights by the number of copies, so the wider
network computes the same function. Batch norm, the transposed convolutions and the decoders'
concatenated inputs (upsampled path, then skip) are carried through the same channel maps. The
copies' incoming weights get a little noise (``noise`` times the layer's weight spread) so that
training can pull them apart; with ``noise=0`` the output is the narrow network's exactly (in
evaluation, up to float rounding).
"""

from __future__ import annotations

import dataclasses
from typing import cast

import numpy as np
import torch
from torch import nn

from pipeline.training.unet import NucleusUNet

__all__ = ["grow_outputs", "widen_unet"]


@dataclasses.dataclass(frozen=True)
class _Channels:
    """Where each channel of a wider feature map comes from: ``source[j]`` is the narrow map's
    channel that wide channel ``j`` copies, ``copies[i]`` how many wide channels copy channel ``i``."""

    source: np.ndarray

    @property
    def copies(self) -> np.ndarray:
        return np.bincount(self.source, minlength=int(self.source.max()) + 1)

    @staticmethod
    def identity(n: int) -> _Channels:
        return _Channels(np.arange(n))

    @staticmethod
    def widened(narrow: int, wide: int, rng: np.random.Generator) -> _Channels:
        extra = rng.choice(narrow, size=wide - narrow, replace=wide - narrow > narrow)
        return _Channels(np.concatenate([np.arange(narrow), extra]))

    def then(self, other: _Channels, offset: int) -> _Channels:
        """The concatenation of this map and ``other``, whose narrow channels start at ``offset``."""
        return _Channels(np.concatenate([self.source, other.source + offset]))


def _scaled_inputs(weight: torch.Tensor, cin: _Channels, axis: int) -> torch.Tensor:
    """``weight`` with its input axis expanded along ``cin`` and divided by each channel's copies."""
    index = torch.from_numpy(cin.source)
    scale = torch.from_numpy(1.0 / cin.copies[cin.source]).to(weight.dtype)
    shape = [1] * weight.dim()
    shape[axis] = -1
    return weight.index_select(axis, index) * scale.reshape(shape)


def _copy_conv(
    narrow: nn.Conv2d, wide: nn.Conv2d, cin: _Channels, cout: _Channels, noise: float, rng: torch.Generator
) -> None:
    weight = _scaled_inputs(narrow.weight, cin, axis=1).index_select(0, torch.from_numpy(cout.source))
    if noise > 0:
        copied = torch.from_numpy(np.arange(len(cout.source)) >= narrow.out_channels)
        spread = float(narrow.weight.std())
        jitter = torch.randn(weight.shape, generator=rng, dtype=weight.dtype) * noise * spread
        weight = weight + jitter * copied.reshape(-1, 1, 1, 1)
    wide.weight.copy_(weight)
    if narrow.bias is not None and wide.bias is not None:
        wide.bias.copy_(narrow.bias.index_select(0, torch.from_numpy(cout.source)))


def _copy_norm(narrow: nn.BatchNorm2d, wide: nn.BatchNorm2d, cout: _Channels) -> None:
    index = torch.from_numpy(cout.source)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(wide, name).copy_(getattr(narrow, name).index_select(0, index))


def _copy_stage(
    narrow: nn.Sequential,
    wide: nn.Sequential,
    cin: _Channels,
    np_rng: np.random.Generator,
    rng: torch.Generator,
    noise: float,
) -> _Channels:
    """Copy one stage (conv, batch norm, activation, ...); returns its output's channel map."""
    for a, b in zip(narrow, wide, strict=True):
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d):
            cout = _Channels.widened(a.out_channels, b.out_channels, np_rng)
            _copy_conv(a, b, cin, cout, noise, rng)
            cin = cout
        elif isinstance(a, nn.BatchNorm2d) and isinstance(b, nn.BatchNorm2d):
            _copy_norm(a, b, cin)
    return cin


def widen_unet(net: NucleusUNet, base: int, *, noise: float = 0.01, seed: int = 0) -> NucleusUNet:
    """A :class:`NucleusUNet` of ``base`` first-stage filters computing ``net``'s function.

    Parameters
    ----------
    net : NucleusUNet
        The trained network; its ``base`` must not exceed ``base``.
    base : int
        Filters of the wider network's first stage (doubled at each down-sampling stage).
    noise : float
        Noise on the copied channels' incoming weights, as a fraction of each layer's weight
        standard deviation; 0 keeps the function exactly.
    seed : int
        Seed of the channel choice and the noise.

    Returns
    -------
    NucleusUNet
        The wider network, in ``net``'s training/evaluation mode.
    """
    if base < net.config.base:
        raise ValueError(f"cannot widen a network of base {net.config.base} to {base}")
    wide = NucleusUNet(dataclasses.replace(net.config, base=base))
    np_rng = np.random.default_rng(seed)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        channels = _Channels.identity(3)
        skips = []
        for a, b in zip(net.encoders, wide.encoders, strict=True):
            channels = _copy_stage(cast(nn.Sequential, a), cast(nn.Sequential, b), channels, np_rng, rng, noise)
            skips.append(channels)
        channels = _copy_stage(net.bottleneck, wide.bottleneck, channels, np_rng, rng, noise)
        for up_a, up_b, dec_a, dec_b, skip in zip(
            cast(list[nn.ConvTranspose2d], list(net.ups)),
            cast(list[nn.ConvTranspose2d], list(wide.ups)),
            cast(list[nn.Sequential], list(net.decoders)),
            cast(list[nn.Sequential], list(wide.decoders)),
            reversed(skips),
            strict=True,
        ):
            up_out = _Channels.widened(up_a.out_channels, up_b.out_channels, np_rng)
            # A transposed convolution's weight is (in, out, kh, kw): inputs on axis 0.
            weight = _scaled_inputs(up_a.weight, channels, axis=0).index_select(1, torch.from_numpy(up_out.source))
            up_b.weight.copy_(weight)
            if up_a.bias is not None and up_b.bias is not None:  # the U-net's have one
                up_b.bias.copy_(up_a.bias.index_select(0, torch.from_numpy(up_out.source)))
            channels = _copy_stage(dec_a, dec_b, up_out.then(skip, offset=up_a.out_channels), np_rng, rng, noise)
        _copy_conv(net.head, wide.head, channels, _Channels.identity(net.head.out_channels), 0.0, rng)
    wide.train(net.training)
    return wide


def grow_outputs(net: NucleusUNet, outputs: int, *, seed: int = 0) -> NucleusUNet:
    """``net`` with ``outputs`` output channels: its own outputs unchanged (the same weights
    everywhere), the new ones read the last decoder's features through a freshly initialised
    head (PyTorch's default initialisation, seeded), to be trained.

    Parameters
    ----------
    net : NucleusUNet
        The trained network.
    outputs : int
        Output channels of the new network, at least ``net``'s.
    seed : int
        Seed of the new head rows' initialisation.

    Returns
    -------
    NucleusUNet
        The network with more outputs, in ``net``'s training/evaluation mode.
    """
    if outputs < net.config.outputs:
        raise ValueError(f"cannot shrink a network of {net.config.outputs} outputs to {outputs}")
    torch.manual_seed(seed)
    grown = NucleusUNet(dataclasses.replace(net.config, outputs=outputs))
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    grown.load_state_dict(state, strict=False)
    with torch.no_grad():
        n = net.config.outputs
        grown.head.weight[:n].copy_(net.head.weight)
        if net.head.bias is not None and grown.head.bias is not None:
            grown.head.bias[:n].copy_(net.head.bias)
    grown.train(net.training)
    return grown
