"""Stain normalisation and colour deconvolution (pure xp arithmetic: numpy or cupy).

Reinhard et al. (2001) in the lαβ space, as the paper; statistics are computed once per slide
from its tissue pixels so all tiles of a slide get the same transform (the paper used
statistics per tile, so neighbouring tiles disagreed). Macenko et al. (2009) as an option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.kernels.dispatch import array_module, to_host

# RGB → LMS → log → lαβ (Reinhard et al. 2001, eq. 4 and 6).
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], dtype=np.float64)
_LMS2LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)
_LAB2LMS = np.linalg.inv(_LMS2LAB)
_LMS2RGB = np.linalg.inv(_RGB2LMS)

# Haematoxylin / eosin / DAB optical-density vectors (Ruifrok & Johnston 2001).
_HED_FROM_RGB = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64))


@dataclass(frozen=True)
class StainStats:
    """Mean and standard deviation of the three lαβ channels over a slide's tissue."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


# Target statistics: lαβ mean/std of the tissue pixels of the 23 training-split MoNuSeg 2018 images
# taken together (the model's training distribution). Measured with
# `python -m pipeline.training.stain_target` and recorded in the model card.
REINHARD_TARGET = StainStats(mean=(-0.5178, -0.0549, 0.0237), std=(0.3210, 0.0601, 0.0153))


def rgb_to_lab_reinhard(rgb: Any) -> Any:
    """uint8 or [0, 1] float RGB (…×3) → Reinhard lαβ (float32)."""
    xp = array_module(rgb)
    x = rgb.astype(xp.float32)
    if rgb.dtype == np.uint8:
        x /= 255.0
    lms = x @ xp.asarray(_RGB2LMS.T, dtype=xp.float32)
    xp.maximum(lms, 1.0 / 255.0, out=lms)
    xp.log10(lms, out=lms)
    return lms @ xp.asarray(_LMS2LAB.T, dtype=xp.float32)


def lab_reinhard_to_rgb(lab: Any) -> Any:
    """Reinhard lαβ → RGB float32 clipped to [0, 1]."""
    xp = array_module(lab)
    lms = 10.0 ** (lab @ xp.asarray(_LAB2LMS.T, dtype=xp.float32))
    rgb = lms @ xp.asarray(_LMS2RGB.T, dtype=xp.float32)
    return xp.clip(rgb, 0.0, 1.0)


def reinhard_stats(rgb: Any, tissue: Any | None = None) -> StainStats:
    """lαβ statistics over the tissue pixels of an RGB image (the slide's low-resolution view)."""
    xp = array_module(rgb)
    lab = rgb_to_lab_reinhard(rgb).reshape(-1, 3)
    if tissue is not None:
        sel = tissue.reshape(-1)
        if int(sel.sum()) >= 100:
            lab = lab[sel]
    mean = to_host(xp.asarray(lab.mean(axis=0), dtype=xp.float64))  # one small copy off the device
    std = to_host(xp.asarray(lab.std(axis=0), dtype=xp.float64))
    m = [float(v) for v in mean]
    s = [max(float(v), 1e-4) for v in std]
    return StainStats(mean=(m[0], m[1], m[2]), std=(s[0], s[1], s[2]))


def reinhard_transform(source: StainStats, target: StainStats = REINHARD_TARGET) -> tuple[np.ndarray, ...]:
    """The Reinhard mapping folded into three 3×3 matrices and an offset (float64), for
    ``clip(exp(ln(max(rgb_u8 @ M1, 1/255)) @ M2 + b) @ M3, 0, 1)``: RGB → LMS (with the 1/255 of
    uint8 input), log-LMS → lαβ → per-channel affine → lαβ → log-LMS (natural logs: the log10 and
    10^x of the definition cancel into the offset), LMS → RGB."""
    k = np.asarray(target.std, dtype=np.float64) / np.asarray(source.std, dtype=np.float64)
    shift = np.asarray(target.mean, dtype=np.float64) - k * np.asarray(source.mean, dtype=np.float64)
    m2 = _LMS2LAB.T @ np.diag(k) @ _LAB2LMS.T
    b = np.log(10.0) * (shift @ _LAB2LMS.T)
    return _RGB2LMS.T, m2, b, _LMS2RGB.T


def reinhard_normalise(rgb: Any, source: StainStats, target: StainStats = REINHARD_TARGET) -> Any:
    """Map an RGB tile from the slide's statistics to the target's; returns float32 RGB in [0, 1].

    Only pixels are changed, never geometry; background stays near white because the transform
    is affine in log-LMS space. One pass of three 3×3 products, a log and an exp in float32
    (:func:`reinhard_transform`); equal to the step-by-step definition
    (``lab_reinhard_to_rgb`` of the shifted ``rgb_to_lab_reinhard``) within float32 rounding.
    """
    xp = array_module(rgb)
    m1, m2, b, m3 = reinhard_transform(source, target)
    if rgb.dtype == np.uint8:
        m1 = m1 / 255.0
    x = rgb.astype(xp.float32, copy=False)
    lms = x @ xp.asarray(m1, dtype=xp.float32)
    xp.maximum(lms, xp.float32(1.0 / 255.0), out=lms)
    xp.log(lms, out=lms)
    mixed = lms @ xp.asarray(m2, dtype=xp.float32)
    add_per_channel(mixed, xp.asarray(b, dtype=xp.float32))
    xp.exp(mixed, out=mixed)
    out = mixed @ xp.asarray(m3, dtype=xp.float32)
    return xp.clip(out, 0.0, 1.0, out=out)


def add_per_channel(pixels: Any, offset: Any, rows: int = 256) -> None:
    """``pixels += offset`` for C-contiguous …×3 ``pixels`` and a 3-vector, in place. On the host,
    on blocks of ``rows`` pixels seen as one row of 3·``rows`` values with the offset repeated (the
    same additions; numpy's broadcast over a last axis of 3 runs ~5× slower).

    >>> x = np.arange(15, dtype=np.float32).reshape(5, 3); add_per_channel(x, np.float32([1, 10, 100]), rows=2)
    >>> x[:, 0].tolist(), x[-1].tolist()
    ([1.0, 4.0, 7.0, 10.0, 13.0], [13.0, 23.0, 114.0])
    """
    if array_module(pixels) is not np or not pixels.flags.c_contiguous:
        pixels += offset
        return
    flat = pixels.reshape(-1, 3)
    whole = flat.shape[0] // rows * rows
    if whole:
        blocks = flat[:whole].reshape(-1, 3 * rows)
        np.add(blocks, np.tile(offset, rows), out=blocks)
    flat[whole:] += offset


def optical_density(rgb: Any) -> Any:
    """Beer–Lambert optical density of uint8 RGB (float32, ≥ 0). One new array, every step in
    place (the same values as step by step: no temporaries to allocate and fault in)."""
    xp = array_module(rgb)
    x = rgb.astype(xp.float32)
    if rgb.dtype == np.uint8:
        x /= 255.0
    xp.clip(x, 1.0 / 255.0, 1.0, out=x)
    xp.log(x, out=x)
    return xp.negative(x, out=x)


def haematoxylin(rgb: Any) -> Any:
    """Haematoxylin optical density (colour deconvolution, Ruifrok & Johnston), float32 ≥ 0."""
    xp = array_module(rgb)
    od = optical_density(rgb)
    h = od @ xp.asarray(_HED_FROM_RGB[:, 0], dtype=xp.float32)  # the haematoxylin column only
    return xp.maximum(h, xp.float32(0.0), out=h)


@dataclass(frozen=True)
class MacenkoStains:
    """Two stain OD vectors (haematoxylin, eosin) and the 99th percentile of their concentrations."""

    vectors: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentration: tuple[float, float]


MACENKO_TARGET = MacenkoStains(
    vectors=((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581)), max_concentration=(1.9705, 1.0308)
)  # reference H&E vectors from Macenko et al. (2009), as used widely


def macenko_stains(rgb: Any, tissue: Any | None = None, beta: float = 0.15, alpha: float = 1.0) -> MacenkoStains:
    """Estimate the slide's H and E vectors from its low-resolution view (Macenko et al. 2009).

    Parameters
    ----------
    rgb : array
        RGB uint8 view, H×W×3 (numpy or cupy).
    tissue : array or None, optional
        Bool tissue mask of the view (H×W); None uses every pixel.
    beta : float, optional
        Optical-density threshold: pixels with a channel at or below it (near glass) are left out.
    alpha : float, optional
        Percentile, in percent, of the angles in the stain plane taken as the two extreme stain
        directions (``alpha`` and 100 - ``alpha``).

    Returns
    -------
    MacenkoStains
        The H and E optical-density vectors and the 99th percentile of their concentrations;
        :data:`MACENKO_TARGET` when fewer than 100 pixels are left to estimate from.
    """
    xp = array_module(rgb)
    od = optical_density(rgb).reshape(-1, 3)
    keep = (od > beta).all(axis=1)
    if tissue is not None:
        keep &= tissue.reshape(-1)
    od = od[keep]
    if od.shape[0] < 100:
        return MACENKO_TARGET
    cov = xp.cov(od.T)
    _, vecs = xp.linalg.eigh(cov)
    plane = vecs[:, 1:3]
    proj = od @ plane
    phi = xp.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = xp.percentile(phi, alpha), xp.percentile(phi, 100 - alpha)
    v1 = plane @ xp.stack([xp.cos(lo), xp.sin(lo)])
    v2 = plane @ xp.stack([xp.cos(hi), xp.sin(hi)])
    h, e = (v1, v2) if float(v1[0]) > float(v2[0]) else (v2, v1)
    h, e = h * xp.sign(h.sum()), e * xp.sign(e.sum())
    stains = xp.stack([h, e], axis=1)
    conc = xp.linalg.lstsq(stains, od.T, rcond=None)[0]
    mx = xp.percentile(conc, 99, axis=1)
    hv = [float(v) for v in h]
    ev = [float(v) for v in e]
    return MacenkoStains(
        vectors=((hv[0], hv[1], hv[2]), (ev[0], ev[1], ev[2])),
        max_concentration=(max(float(mx[0]), 1e-3), max(float(mx[1]), 1e-3)),
    )


def macenko_normalise(rgb: Any, source: MacenkoStains, target: MacenkoStains = MACENKO_TARGET) -> Any:
    """Re-express a tile's H and E concentrations in the target stains; float32 RGB in [0, 1]."""
    xp = array_module(rgb)
    h, w = rgb.shape[:2]
    od = optical_density(rgb).reshape(-1, 3)
    tgt = xp.asarray(np.array(target.vectors).T, dtype=xp.float32)
    conc = od @ xp.asarray(np.linalg.pinv(np.array(source.vectors).T), dtype=xp.float32).T
    scale = xp.asarray(np.array(target.max_concentration) / np.array(source.max_concentration), dtype=xp.float32)
    out = xp.exp(-(conc * scale) @ tgt.T)
    return xp.clip(out, 0.0, 1.0).reshape(h, w, 3).astype(xp.float32)
