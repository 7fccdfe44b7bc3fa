"""Train the nucleus U-net: ``python -m pipeline.train [--config train.yaml] [--key value ...]``.

Data: real MoNuSeg 2018 training tiles (the training split of
:data:`pipeline.io.annotations.TRAINING_IMAGES`) plus, with ``--synthetic-fraction``,
synthetic random-polygon patches (:mod:`pipeline.training.synthetic`). Every image is
Reinhard-normalised with its own statistics first, exactly as the pipeline does.

Resumable: ``OUT/checkpoint.pt`` is rewritten every ``checkpoint_minutes``; restarting the same
command continues from it (the data stream is a function of (seed, step), so a resumed run
sees the same batches as an uninterrupted one). ``OUT/step_NNNNNN.pt`` snapshots (weights only)
are kept every ``snapshot_every`` steps for checkpoint selection and the ablation.
Progress goes to stdout and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.io.annotations import TRAINING_IMAGES, VALIDATION_IMAGES, data_dir, load_monuseg
from pipeline.io.outputs.publish import atomic_path
from pipeline.training.synthetic import SyntheticConfig, synthetic_patch
from pipeline.training.targets import augment_patch, normalised_rgb, training_targets
from pipeline.training.unet import NucleusUNet, UNetConfig


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/nuclei_unet"
    data: str = str(data_dir() / "monuseg2018_train")
    cache: str = str(Path.home() / ".cache" / "pipeline-train")
    steps: int = 3000
    batch: int = 8
    patch: int = 192  # px at 40x; a multiple of 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    synthetic_fraction: float = 0.25  # share of each batch that is synthetic (0 = real only)
    elastic: float = 0.0  # probability of an elastic deformation of a real patch
    centre_weight: float = 1.0  # loss weight of the centre channel relative to the material
    touching_gap: bool = False  # material target without the pixels where two nuclei touch
    centre_target: str = "core"  # core | distance (pipeline.training.targets.training_targets)
    seed: int = 0
    threads: int = 2  # torch CPU threads
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_minutes: float = 3.0
    snapshot_every: int = 250
    log_every: int = 10
    val_every: int = 250
    val_patches: int = 24
    max_minutes: float = 0.0  # stop (resumably) after this long in this process; 0 = no limit
    init_from: str = ""  # start a fresh run from these weights (a checkpoint or snapshot): fine-tuning
    stop_at: int = 0  # stop (resumably) at this step, keeping the schedule of ``steps``; 0 = at ``steps``
    base: int = 16
    convs_per_stage: int = 2
    outputs: int = 2  # 4: the network also learns the horizontal and vertical distance maps
    distance_weight: float = 1.0  # loss weight of the distance maps (outputs 4)

    def unet(self) -> UNetConfig:
        return UNetConfig(base=self.base, convs_per_stage=self.convs_per_stage, outputs=self.outputs)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults → YAML file (``--config``) → command-line flags (``--steps 500`` …)."""
    parser = argparse.ArgumentParser(description="Train the nucleus U-net.")
    parser.add_argument("--config", type=Path, help="YAML file with TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        kind = _flag if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        loaded = yaml.safe_load(args.config.read_text()) or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(loaded) - known
        if unknown:
            raise SystemExit(f"unknown keys in {args.config}: {sorted(unknown)}")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    cfg = TrainConfig(**values)
    if cfg.patch % 16:
        raise SystemExit("--patch must be a multiple of 16")
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PatchSampler:
    """Training batches as a deterministic function of (seed, step)."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], cfg: TrainConfig) -> None:
        self.images, self.labels, self.cfg = images, labels, cfg
        self.synth = SyntheticConfig(size=cfg.patch)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = int(rng.integers(len(self.images)))
        if rng.random() < self.cfg.synthetic_fraction:
            img, lab = synthetic_patch(self.images[k], self.labels[k], rng, self.synth)
            img, lab = augment_patch(img, lab, self.cfg.patch, rng, scale_range=(1.0, 1.0))
        else:
            img, lab = augment_patch(self.images[k], self.labels[k], self.cfg.patch, rng, p_elastic=self.cfg.elastic)
        targets = training_targets(lab, self.cfg.touching_gap, self.cfg.centre_target, self.cfg.outputs == 4)
        return img.transpose(2, 0, 1), targets

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, step])
        xs, ys = zip(*(self.sample(rng) for _ in range(self.cfg.batch)), strict=True)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def fixed_validation_patches(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    n: int,
    size: int,
    touching_gap: bool = False,
    centre_target: str = "core",
    distances: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fixed crops of the validation images (no augmentation) for the loss curve.

    Parameters
    ----------
    images : list of np.ndarray
        Stain-normalised float RGB validation images, H×W×3.
    labels : list of np.ndarray
        Their instance labels, H×W, 0 = background.
    n : int
        Number of patches, taken from the images in turn.
    size : int
        Side of a patch, in px.
    touching_gap : bool, optional
        Passed to :func:`training_targets`.
    centre_target : str, optional
        The centre target, ``"core"`` or ``"distance"`` (:func:`training_targets`).
    distances : bool, optional
        Also the horizontal and vertical distance maps (:func:`training_targets`).

    Returns
    -------
    inputs : torch.Tensor
        The patches, n×3×size×size.
    targets : torch.Tensor
        Their float32 targets (centre, material[, distance maps]), n×2×size×size or n×4×size×size.
    """
    rng = np.random.default_rng(12345)
    xs, ys = [], []
    for i in range(n):
        img, lab = images[i % len(images)], labels[i % len(images)]
        r = int(rng.integers(0, img.shape[0] - size + 1))
        c = int(rng.integers(0, img.shape[1] - size + 1))
        xs.append(img[r : r + size, c : c + size].transpose(2, 0, 1))
        ys.append(training_targets(lab[r : r + size, c : c + size], touching_gap, centre_target, distances))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).reshape(1, 1, 3, 3)


def distance_map_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HoVer-Net's loss of the distance maps (channels 2 and 3, targets in [0, 1] for [-1, 1]):
    mean squared error over all pixels plus the mean squared error of their gradients (Sobel,
    along x for the horizontal map, along y for the vertical) over the nuclear pixels, where the
    gradient is what separates touching nuclei."""
    pred = 2 * torch.sigmoid(logits[:, 2:4]) - 1
    true = 2 * target[:, 2:4] - 1
    mse = ((pred - true) ** 2).mean()
    kernels = torch.cat([_SOBEL_X, _SOBEL_X.transpose(2, 3)]).to(pred)  # ∂/∂x of channel 0, ∂/∂y of 1
    grad_pred = F.conv2d(pred, kernels, padding=1, groups=2)
    grad_true = F.conv2d(true, kernels, padding=1, groups=2)
    nuclear = (target[:, 1:2] > 0).to(pred).expand_as(grad_pred)
    msge = (((grad_pred - grad_true) ** 2) * nuclear).sum() / nuclear.sum().clamp_min(1.0)
    return mse + msge


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, centre_weight: float, distance_weight: float = 1.0
) -> torch.Tensor:
    """Binary cross-entropy + soft Dice, per channel; the centre channel weighted; with four
    outputs plus the distance maps' loss (:func:`distance_map_loss`), weighted.

    Parameters
    ----------
    logits : torch.Tensor
        The network's output before its sigmoid, N×C×H×W (C = 2 or 4).
    target : torch.Tensor
        The targets in [0, 1] (:func:`pipeline.training.targets.training_targets`), same shape.
    centre_weight : float
        Weight of the centre channel's loss against the material's.
    distance_weight : float, optional
        Weight of the distance maps' loss (four outputs only).

    Returns
    -------
    torch.Tensor
        The loss, a scalar.
    """
    bce = F.binary_cross_entropy_with_logits(logits[:, :2], target[:, :2], reduction="none").mean(dim=(0, 2, 3))
    p = torch.sigmoid(logits[:, :2])
    inter = (p * target[:, :2]).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + target[:, :2].sum(dim=(0, 2, 3)) + 1)
    per_channel = bce + dice
    total = centre_weight * per_channel[0] + per_channel[1]
    if logits.shape[1] == 4:
        total = total + distance_weight * distance_map_loss(logits, target)
    return total


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _start_weights(
    net: NucleusUNet, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device
) -> tuple[int, float]:
    """Resume from ``OUT/checkpoint.pt`` (weights, optimizer, step, seconds spent), else start from
    ``init_from`` when it is a checkpoint or snapshot; returns (step, seconds already spent)."""
    ckpt_path = Path(cfg.out) / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state["config"]["unet"] != cfg.unet().as_dict():
            raise SystemExit(f"{ckpt_path} was trained with another network: {state['config']['unet']}")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        print(f"resumed from {ckpt_path} at step {int(state['step'])}", flush=True)
        return int(state["step"]), float(state["train_seconds"])
    if cfg.init_from and not cfg.init_from.endswith(".onnx"):
        init = torch.load(cfg.init_from, map_location=device, weights_only=True)
        if init["config"]["unet"] != cfg.unet().as_dict():
            raise SystemExit(f"{cfg.init_from} has another network: {init['config']['unet']}")
        net.load_state_dict(init["model"])
        print(f"initialised from {cfg.init_from} (its step {init['step']})", flush=True)
    return 0, 0.0


def _weights_from_onnx(net: NucleusUNet, cfg: TrainConfig, sampler: PatchSampler, device: torch.device) -> None:
    """Start from an exported model (the model of record), its batch-norm statistics measured on
    training batches of a seed no training step uses."""
    from pipeline.training.from_onnx import unet_from_onnx
    from pipeline.training.widen import grow_outputs, widen_unet

    measure = PatchSampler(sampler.images, sampler.labels, dataclasses.replace(cfg, seed=cfg.seed + 1000))
    batches = (measure.batch(k)[0] for k in range(20))
    source = unet_from_onnx(Path(cfg.init_from), batches)
    # a network grows (wider stages, more outputs), never shrinks, and keeps its other settings
    grows = cfg.base >= source.config.base and cfg.outputs >= source.config.outputs
    if not grows or dataclasses.replace(source.config, base=cfg.base, outputs=cfg.outputs) != cfg.unet():
        raise SystemExit(f"{cfg.init_from} has the network {source.config}, which cannot grow into {cfg.unet()}")
    widened = ""
    if source.config.base != cfg.base:
        source = widen_unet(source, cfg.base, seed=cfg.seed)
        widened = f", widened to base {cfg.base}"
    if source.config.outputs != cfg.outputs:
        source = grow_outputs(source, cfg.outputs, seed=cfg.seed)
        widened += f", {cfg.outputs} outputs (the new ones untrained)"
    net.load_state_dict(source.state_dict())
    net.to(device)
    print(f"initialised from {cfg.init_from} (batch norm measured on 20×{cfg.batch} patches{widened})", flush=True)


def _training_data(cfg: TrainConfig) -> tuple[PatchSampler, torch.Tensor, torch.Tensor]:
    """The training batches' sampler and the fixed validation patches (inputs, targets)."""
    t_load = time.time()
    cache = Path(cfg.cache) if cfg.cache else None
    train_set = load_monuseg(Path(cfg.data), TRAINING_IMAGES, cache)
    val_set = load_monuseg(Path(cfg.data), VALIDATION_IMAGES, cache)
    sampler = PatchSampler([normalised_rgb(a.rgb) for a in train_set], [a.labels for a in train_set], cfg)
    vx, vy = fixed_validation_patches(
        [normalised_rgb(a.rgb) for a in val_set],
        [a.labels for a in val_set],
        cfg.val_patches,
        cfg.patch,
        cfg.touching_gap,
        cfg.centre_target,
        cfg.outputs == 4,
    )
    print(
        f"data: {len(train_set)} training / {len(val_set)} validation images ({time.time() - t_load:.0f} s); "
        f"{cfg.steps} steps of {cfg.batch}×{cfg.patch}²",
        flush=True,
    )
    return sampler, vx, vy


def _validation_loss(net: NucleusUNet, vx: torch.Tensor, vy: torch.Tensor, cfg: TrainConfig) -> float:
    device = next(net.parameters()).device
    net.eval()
    with torch.no_grad():
        value = float(loss_fn(net(vx.to(device)), vy.to(device), cfg.centre_weight, cfg.distance_weight))
    net.train()
    return value


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    net = NucleusUNet(cfg.unet()).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed_before = _start_weights(net, opt, cfg, device)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    sampler, vx, vy = _training_data(cfg)
    if step == 0 and cfg.init_from.endswith(".onnx"):
        _weights_from_onnx(net, cfg, sampler, device)
    print(f"device {device}", flush=True)

    def state_dict() -> dict[str, Any]:
        return {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "train_seconds": elapsed_before + (time.time() - t0),
            "config": {**dataclasses.asdict(cfg), "unet": cfg.unet().as_dict()},
        }

    stop_requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_requested.append(signum))  # `kill PID`: checkpoint, exit
    t0 = time.time()
    start_step = step
    last_ckpt = time.time()
    log = (out / "log.jsonl").open("a")
    running = 0.0
    net.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step)
        x, y = sampler.batch(step)
        loss = loss_fn(net(x.to(device)), y.to(device), cfg.centre_weight, cfg.distance_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running = 0.9 * running + 0.1 * loss.item() if step > start_step + 1 else loss.item()
        record: dict[str, Any] = {}
        if step % cfg.log_every == 0:
            spent = elapsed_before + time.time() - t0
            record = {"step": step, "loss": round(running, 4), "lr": learning_rate(cfg, step), "seconds": round(spent)}
            record["s_per_step"] = round((time.time() - t0) / max(step - start_step, 1), 2)
        if step % cfg.val_every == 0 or step == cfg.steps:
            vl = _validation_loss(net, vx, vy, cfg)
            record.update({"step": step, "val_loss": round(vl, 4), "seconds": round(elapsed_before + time.time() - t0)})
        if record:
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            snapshot = {"model": net.state_dict(), "step": step, "config": state_dict()["config"]}
            save_atomic(snapshot, out / f"step_{step:06d}.pt")
        timed_out = (
            (cfg.max_minutes > 0 and time.time() - t0 > cfg.max_minutes * 60)
            or step == cfg.stop_at
            or bool(stop_requested)
        )
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60 or step == cfg.steps or timed_out:
            save_atomic(state_dict(), ckpt_path)
            last_ckpt = time.time()
        if timed_out:
            print(f"stopping at step {step} (resumable)", flush=True)
            break
    log.close()
    return ckpt_path


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(argv)
    print(json.dumps(dataclasses.asdict(cfg)), flush=True)
    train(cfg)


if __name__ == "__main__":
    main()
