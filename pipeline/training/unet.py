"""The nucleus U-net (torch), in the spirit of the paper's network.

Four down-sampling and four up-sampling stages, ``base`` filters doubling per stage
(16/32/64/128/256 by default, as the paper), skip connections by concatenation, a transposed
convolution decoder, leaky ReLU, and two sigmoid outputs: channel 0 = nucleus centre,
channel 1 = nuclear material (with ``outputs=4`` also channels 2 and 3, each nucleus' horizontal
and vertical distance maps, :func:`pipeline.training.targets.distance_maps`). The paper used 3–6
convolutions per stage; two per stage (batch-normalised) keep CPU training affordable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from pipeline.kernels.nuclei import OUTPUT_CHANNELS

DOWNSAMPLING = 16  # 4 pooling stages: input sides must be multiples of 2**4


@dataclass(frozen=True)
class UNetConfig:
    base: int = 16  # filters of the first stage; doubled at each of the 4 down-sampling stages
    convs_per_stage: int = 2
    depth: int = 4  # number of down-sampling (and up-sampling) stages
    negative_slope: float = 0.1  # leaky ReLU, as the paper
    outputs: int = 2  # 2: centre, material; 4: also the horizontal and vertical distance maps

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


def _stage(cin: int, cout: int, n: int, slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(n):
        layers += [
            nn.Conv2d(cin if k == 0 else cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(slope, inplace=True),
        ]
    return nn.Sequential(*layers)


class NucleusUNet(nn.Module):
    """N×3×H×W RGB in [0, 1] (stain-normalised) → N×C×H×W logits (``forward``) or
    probabilities (``probabilities``, what is exported); C = ``config.outputs``."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        if config.outputs not in OUTPUT_CHANNELS:
            raise ValueError(f"a nucleus U-net has 2 or 4 outputs, not {config.outputs}")
        self.config = config
        widths = [config.base * 2**k for k in range(config.depth + 1)]
        n, s = config.convs_per_stage, config.negative_slope
        self.encoders = nn.ModuleList()
        cin = 3
        for w in widths[:-1]:
            self.encoders.append(_stage(cin, w, n, s))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _stage(widths[-2], widths[-1], n, s)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.ups.append(nn.ConvTranspose2d(w_low, w, 2, stride=2))
            self.decoders.append(_stage(2 * w, w, n, s))
        self.head = nn.Conv2d(widths[0], config.outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


class ProbabilityHead(nn.Module):
    """Wraps the U-net so that the exported graph ends in the sigmoid (the model contract)."""

    def __init__(self, net: NucleusUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def receptive_field_support(config: UNetConfig, phase: int) -> tuple[int, int]:
    """Input offsets (first, last), relative to the output pixel, that can influence an output
    pixel at ``phase`` (its position modulo 2**depth) — interval arithmetic backwards through
    the layers (1-D; the network is separable in its support)."""
    n, depth = config.convs_per_stage, config.depth

    def encoder(level: int, a: int, b: int) -> tuple[int, int]:
        a, b = a - n, b + n  # the stage's 3×3 convolutions
        if level == 0:
            return a, b
        return encoder(level - 1, 2 * a, 2 * b + 1)  # 2×2/2 max pooling of the level above

    def decoder(level: int, a: int, b: int) -> tuple[int, int]:
        if level == depth:  # bottleneck
            return encoder(depth - 1, 2 * (a - n), 2 * (b + n) + 1)
        a, b = a - n, b + n  # the decoder stage's convolutions
        skip = encoder(level, a, b)
        up = decoder(level + 1, a // 2, b // 2)  # 2×2/2 transposed convolution
        return min(skip[0], up[0]), max(skip[1], up[1])

    first, last = decoder(0, phase, phase)
    return first - phase, last - phase


def theoretical_receptive_field(config: UNetConfig) -> int:
    """Receptive field (px, side length) of an output pixel: the widest support over the
    2**depth phases of the pooling grid (:func:`receptive_field_support`)."""
    widths = [b - a + 1 for a, b in (receptive_field_support(config, p) for p in range(2**config.depth))]
    return max(widths)
