"""Synthetic training patches, as the paper made them: random-polygon nuclei
(radius 8.5–13 px at 40x, 10–17 vertices) painted with nuclear texture taken from real tiles
onto a real tile whose own nuclei have been inpainted away. The instance labels are known by
construction: they are exactly the rasterised polygons.

All arrays are numpy; images are normalised float RGB in [0, 1] (what the network sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon

RADIUS_PX = (8.5, 13.0)  # nucleus radius at 40x (the paper)
VERTICES = (10, 17)  # vertices per polygon, inclusive (the paper)
GAP_PX = 1  # nuclei never touch closer than this (the MoNuSeg masks leave their boundary out)
EDGE_SOFTNESS_PX = 0.6  # anti-aliasing of the painted nucleus edge (σ of a Gaussian)
INPAINT_SIGMA_PX = 6.0  # normalised-convolution inpainting scale for the background


@dataclass(frozen=True)
class SyntheticConfig:
    size: int = 192
    nuclei_per_patch: tuple[int, int] = (15, 90)
    radius_px: tuple[float, float] = RADIUS_PX
    vertices: tuple[int, int] = VERTICES
    intensity: tuple[float, float] = (0.7, 1.3)  # scale of the nuclear optical density


def random_polygon(rng: np.random.Generator, cfg: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
    """Vertices (x, y) of a random star-shaped polygon centred on (0, 0): an ellipse-like
    outline of the given radius with jittered radii, 10–17 vertices."""
    n = int(rng.integers(cfg.vertices[0], cfg.vertices[1] + 1))
    radius = rng.uniform(*cfg.radius_px)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    aspect = rng.uniform(0.65, 1.0)
    tilt = rng.uniform(0, np.pi)
    radii = radius * rng.uniform(0.9, 1.08, n)
    x = radii * np.cos(angles)
    y = radii * np.sin(angles) * aspect
    ct, st = np.cos(tilt), np.sin(tilt)
    return np.stack([x * ct - y * st, x * st + y * ct], axis=1)


def inpaint_background(rgb: np.ndarray, nuclei: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove the (dilated) nuclei of a real patch: normalised convolution of the rest of the
    tissue, plus a little texture so the filled areas are not flat."""
    hole = ndi.binary_dilation(nuclei, iterations=2)
    keep = (~hole).astype(np.float32)
    weight = ndi.gaussian_filter(keep, INPAINT_SIGMA_PX)
    filled = np.empty_like(rgb)
    for ch in range(3):
        filled[..., ch] = ndi.gaussian_filter(rgb[..., ch] * keep, INPAINT_SIGMA_PX) / np.maximum(weight, 1e-3)
    # Where no tissue is near at all, fall back to the patch's background colour.
    mean_bg = (rgb * keep[..., None]).sum(axis=(0, 1)) / max(float(keep.sum()), 1.0)
    far = weight < 1e-2
    filled[far] = mean_bg if keep.sum() > 0 else 0.85
    noise = ndi.gaussian_filter(rng.normal(0, 0.02, rgb.shape[:2]).astype(np.float32), 1.0)[..., None]
    out = np.where(hole[..., None], np.clip(filled + noise, 0, 1), rgb)
    return out.astype(np.float32)


def nuclear_optical_density(rgb: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (per channel) of the optical density of the real nuclei of a patch (the
    haematoxylin-dominated colour the synthetic nuclei are painted with)."""
    od = -np.log(np.clip(rgb, 1 / 255, 1))
    if nuclei.sum() < 30:
        # No real nuclei here: a typical haematoxylin optical density (Ruifrok & Johnston's
        # H vector × an average nuclear concentration).
        return np.array([0.65, 0.70, 0.29]) * 1.1, np.array([0.15, 0.15, 0.08])
    px = od[nuclei]
    return px.mean(axis=0), px.std(axis=0)


def place_polygons(rng: np.random.Generator, shape: tuple[int, int], count: int, cfg: SyntheticConfig) -> np.ndarray:
    """Instance labels of up to ``count`` non-overlapping random polygons (GAP_PX apart).

    Parameters
    ----------
    rng : np.random.Generator
        The random generator.
    shape : (int, int)
        (rows, columns) of the label image.
    count : int
        Most polygons placed.
    cfg : SyntheticConfig
        Sizes and shapes of the polygons.

    Returns
    -------
    np.ndarray
        int32 labels of the given shape, 1..k, 0 = background.
    """
    labels = np.zeros(shape, dtype=np.int32)
    occupied = np.zeros(shape, dtype=bool)
    k = 0
    for _ in range(count * 4):
        if k == count:
            break
        poly = random_polygon(rng, cfg)
        cx, cy = rng.uniform(-8, shape[1] + 8), rng.uniform(-8, shape[0] + 8)
        rr, cc = fill_polygon(poly[:, 1] + cy, poly[:, 0] + cx, shape=shape)
        if rr.size < 20 or occupied[rr, cc].any():
            continue
        k += 1
        labels[rr, cc] = k
        blob = np.zeros(shape, dtype=bool)
        blob[rr, cc] = True
        occupied |= ndi.binary_dilation(blob, iterations=GAP_PX + 1)
    return labels


def paint_nuclei(
    background: np.ndarray,
    labels: np.ndarray,
    od_mean: np.ndarray,
    od_std: np.ndarray,
    rng: np.random.Generator,
    cfg: SyntheticConfig,
) -> np.ndarray:
    """Paint each labelled nucleus onto the background in optical density: a per-nucleus
    intensity times a smooth chromatin texture around the real nuclear colour, with soft edges.

    Parameters
    ----------
    background : np.ndarray
        Float RGB image in [0, 1], H×W×3, without nuclei.
    labels : np.ndarray
        int32 labels of the nuclei to paint, H×W, 0 = background.
    od_mean, od_std : np.ndarray
        Mean and standard deviation of the real nuclei's optical density per RGB channel.
    rng : np.random.Generator
        The random generator.
    cfg : SyntheticConfig
        Range of the nuclei's intensities.

    Returns
    -------
    np.ndarray
        Float32 RGB image in [0, 1], H×W×3 (``background`` itself when there are no nuclei).
    """
    n = int(labels.max())
    bg_od = -np.log(np.clip(background, 1 / 255, 1))
    if n == 0:
        return background
    gain = np.zeros(n + 1, dtype=np.float32)
    gain[1:] = rng.uniform(*cfg.intensity, n)
    texture = ndi.gaussian_filter(rng.normal(0, 1, labels.shape).astype(np.float32), 1.2)
    texture /= max(float(texture.std()), 1e-6)
    rel = float(np.clip((od_std / np.maximum(od_mean, 1e-3)).mean(), 0.1, 0.4))
    amount = gain[labels][..., None] * od_mean[None, None, :] * (1 + rel * texture[..., None])
    alpha = ndi.gaussian_filter((labels > 0).astype(np.float32), EDGE_SOFTNESS_PX)
    amount = ndi.grey_dilation(amount, size=(3, 3, 1))  # texture defined under the soft edge too
    od = bg_od * (1 - alpha[..., None]) + np.maximum(amount, 0) * alpha[..., None]
    return np.clip(np.exp(-od), 0, 1).astype(np.float32)


def synthetic_patch(
    rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: SyntheticConfig = SyntheticConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic patch (float RGB ``size``×``size``×3, int32 labels) made from a random crop
    of a real normalised image ``rgb`` with its instance ``labels`` (for texture and inpainting).

    Parameters
    ----------
    rgb : np.ndarray
        Real stain-normalised float RGB image, H×W×3, at least ``cfg.size`` on each side.
    labels : np.ndarray
        Its instance labels, H×W, 0 = background.
    rng : np.random.Generator
        The random generator.
    cfg : SyntheticConfig, optional
        Patch size, nuclei per patch and their shapes.

    Returns
    -------
    image : np.ndarray
        Float32 RGB patch in [0, 1], size×size×3.
    labels : np.ndarray
        int32 labels of the synthetic nuclei, size×size, 0 = background.
    """
    size = cfg.size
    r = int(rng.integers(0, rgb.shape[0] - size + 1))
    c = int(rng.integers(0, rgb.shape[1] - size + 1))
    crop = rgb[r : r + size, c : c + size].astype(np.float32)
    nuclei = labels[r : r + size, c : c + size] > 0
    od_mean, od_std = nuclear_optical_density(crop, nuclei)
    background = inpaint_background(crop, nuclei, rng)
    count = int(rng.integers(cfg.nuclei_per_patch[0], cfg.nuclei_per_patch[1] + 1))
    synth_labels = place_polygons(rng, (size, size), count, cfg)
    image = paint_nuclei(background, synth_labels, od_mean, od_std, rng, cfg)
    return image, synth_labels
