"""The previous Reinhard normalisation, verbatim (step by step: RGB → lαβ, shift, back; 10^x),
the reference ``benchmarks/host_stages.py`` times the fused one against."""

from __future__ import annotations

from typing import Any

from pipeline.kernels.dispatch import array_module
from pipeline.kernels.stain import REINHARD_TARGET, StainStats, lab_reinhard_to_rgb, rgb_to_lab_reinhard


def reinhard_normalise(rgb: Any, source: StainStats, target: StainStats = REINHARD_TARGET) -> Any:
    xp = array_module(rgb)
    lab = rgb_to_lab_reinhard(rgb)
    src_m = xp.asarray(source.mean, dtype=xp.float32)
    src_s = xp.asarray(source.std, dtype=xp.float32)
    tgt_m = xp.asarray(target.mean, dtype=xp.float32)
    tgt_s = xp.asarray(target.std, dtype=xp.float32)
    lab = (lab - src_m) * (tgt_s / src_s) + tgt_m
    return lab_reinhard_to_rgb(lab)
