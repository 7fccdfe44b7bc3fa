"""Trainable weights from an exported model: ``unet_from_onnx(path, batches)``.

The exported ONNX file is the model of record (checkpoints are not committed), so a new training
phase may have to start from it. Export folds each batch norm into the convolution before it
(weight W·γ/σ, a bias), which leaves the folded convolution but not the statistics. They are
recovered by measuring: each folded convolution is loaded with its bias moved into the batch norm
that follows it, the network runs over training batches, and each batch norm gets the mean μ and
variance σ² of its input, with γ = √(σ² + ε) and β = bias + μ. Its output is then the folded
layer's exactly in evaluation, and in training on batches like those measured, so fine-tuning
starts from the exported model's behaviour, not from a perturbed one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch

from pipeline.training.unet import NucleusUNet, UNetConfig


def _onnx_layers(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], dict[str, np.ndarray], dict]:
    """The 3×3 convolutions' (weight, bias) in execution order, the named initializers, and the
    metadata."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type == "Conv" and not node.input[1].startswith("net.head"):
            weight = values[node.input[1]]
            bias = values[node.input[2]] if len(node.input) > 2 else None
            convs.append((weight, bias))
    metadata = {p.key: p.value for p in model.metadata_props}
    return convs, values, metadata


def unet_from_onnx(path: Path, batches: Iterable[torch.Tensor], config: UNetConfig | None = None) -> NucleusUNet:
    """A :class:`NucleusUNet` whose evaluation output equals the exported model's, with batch-norm
    statistics measured on ``batches`` (N×3×H×W training inputs)."""
    import json

    convs, values, metadata = _onnx_layers(Path(path))
    if config is None:
        arch = json.loads(metadata.get("architecture", "{}"))
        config = UNetConfig(
            base=int(arch.get("base", 16)),
            convs_per_stage=int(arch.get("convs_per_stage", 2)),
            outputs=int(arch.get("outputs", 2)),
        )
    net = NucleusUNet(config)
    stages = [*net.encoders, net.bottleneck, *net.decoders]
    pairs = [
        (layer, stage[i + 1]) for stage in stages for i, layer in enumerate(stage) if isinstance(layer, torch.nn.Conv2d)
    ]
    if len(pairs) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, the network {config} has {len(pairs)}")
    biases = []
    with torch.no_grad():
        for (conv, norm), (weight, bias) in zip(pairs, convs, strict=True):
            if tuple(conv.weight.shape) != weight.shape:
                raise ValueError(f"{path}: a convolution of shape {weight.shape} where {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(weight)))
            b = torch.from_numpy(np.array(bias)) if bias is not None else torch.zeros(weight.shape[0])
            biases.append(b)
            norm.weight.fill_(1.0)
            norm.bias.copy_(b)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # identity: the folded layer
        for k, up in enumerate(cast(list[torch.nn.ConvTranspose2d], list(net.ups))):
            assert up.bias is not None  # the U-net's transposed convolutions have one
            up.weight.copy_(torch.from_numpy(np.array(values[f"net.ups.{k}.weight"])))
            up.bias.copy_(torch.from_numpy(np.array(values[f"net.ups.{k}.bias"])))
        assert net.head.bias is not None
        net.head.weight.copy_(torch.from_numpy(np.array(values["net.head.weight"])))
        net.head.bias.copy_(torch.from_numpy(np.array(values["net.head.bias"])))

    # Each batch norm is the identity plus its bias now, so the whole network is the exported one;
    # its inputs (the bare convolution outputs) are measured over the batches in one pass.
    sums = [torch.zeros_like(b, dtype=torch.float64) for b in biases]
    squares = [torch.zeros_like(b, dtype=torch.float64) for b in biases]
    counts = [0] * len(biases)

    def hook(k: int):
        def record(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().double()
            sums[k] += x.sum(dim=(0, 2, 3))
            squares[k] += (x * x).sum(dim=(0, 2, 3))
            counts[k] += x.shape[0] * x.shape[2] * x.shape[3]

        return record

    handles = [norm.register_forward_pre_hook(hook(k)) for k, (_, norm) in enumerate(pairs)]
    net.eval()
    try:
        with torch.no_grad():
            for x in batches:
                net(x)
    finally:
        for h in handles:
            h.remove()
    if counts[0] == 0:
        raise ValueError("no batches to measure the batch-norm statistics on")
    with torch.no_grad():
        for k, (_, norm) in enumerate(pairs):
            mean = sums[k] / counts[k]
            var = (squares[k] / counts[k] - mean * mean).clamp_min(0.0)
            norm.running_mean.copy_(mean.float())
            norm.running_var.copy_(var.float())
            norm.weight.copy_(torch.sqrt(var + norm.eps).float())
            norm.bias.copy_(biases[k] + mean.float())
    return net
