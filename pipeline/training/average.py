"""Average the weights of several snapshots of the same network (a "model soup" / stochastic
weight average), then re-estimate the batch-norm statistics on training patches.

    python -m pipeline.training.average runs/a/step_002400.pt runs/b/step_002400.pt --out runs/soup.pt

Snapshots fine-tuned from one set of weights sit in one basin of the loss, so their average is a
network of the same size and cost whose predictions are usually better than either's. Averaged
weights no longer match the running batch-norm statistics, so those are measured again: the
averaged network runs in training mode (no gradients) over ``--bn-batches`` batches drawn exactly
as training draws them, from the training images only. The output is a snapshot
(``{"model", "step", "config", "averaged_from"}``) that ``pipeline.training.tune`` and
``pipeline.training.export`` read like any other.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.io.annotations import TRAINING_IMAGES, load_monuseg
from pipeline.training.targets import normalised_rgb
from pipeline.training.unet import NucleusUNet, UNetConfig


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; integer buffers (batch counters) from the first."""
    if not states:
        raise ValueError("nothing to average")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError("snapshots hold different networks (parameter names differ)")
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].to(torch.float64) for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def recalibrate_batch_norm(net: torch.nn.Module, batches: Any) -> None:
    """Replace every batch-norm layer's running mean/variance by their average over ``batches``
    (an iterable of input tensors), with the weights untouched."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    with torch.no_grad():
        for x in batches:
            net(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    net.eval()


def main(argv: list[str] | None = None) -> None:
    from pipeline.training.train import PatchSampler, TrainConfig, save_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshots", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bn-batches", type=int, default=60)
    parser.add_argument("--seed", type=int, default=99, help="seed of the batch-norm batches")
    parser.add_argument("--data", type=Path, help="MoNuSeg training folder (default: the snapshot's)")
    parser.add_argument("--cache", type=Path, help="label cache (default: the snapshot's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = [torch.load(p, map_location="cpu", weights_only=True) for p in args.snapshots]
    unets = {repr(s["config"]["unet"]) for s in loaded}
    if len(unets) != 1:
        raise SystemExit(f"snapshots hold different networks: {sorted(unets)}")
    config = loaded[0]["config"]
    net = NucleusUNet(UNetConfig(**config["unet"]))
    net.load_state_dict(average_state_dicts([s["model"] for s in loaded]))

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in fields})
    cfg = dataclasses.replace(cfg, seed=args.seed, data=str(args.data or cfg.data), cache=str(args.cache or cfg.cache))
    train_set = load_monuseg(Path(cfg.data), TRAINING_IMAGES, Path(cfg.cache) if cfg.cache else None)
    sampler = PatchSampler([normalised_rgb(a.rgb) for a in train_set], [a.labels for a in train_set], cfg)
    recalibrate_batch_norm(net, (sampler.batch(step)[0] for step in range(args.bn_batches)))
    print(
        f"averaged {len(loaded)} snapshots; batch norm re-estimated on {args.bn_batches}×{cfg.batch} "
        f"training patches of {cfg.patch}²",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(
        {
            "model": net.state_dict(),
            "step": max(int(s["step"]) for s in loaded),
            "config": config,
            "averaged_from": [str(p) for p in args.snapshots],
        },
        args.out,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
