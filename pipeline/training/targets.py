"""Training targets and augmentations (numpy, CPU).

Targets from instance labels: channel 0 = nucleus centre (the inner core of each nucleus:
pixels at least half of that nucleus' largest inner distance away from its boundary, so
touching nuclei get separate cores), channel 1 = nuclear material (union of the nuclei; with
``touching_gap`` without the pixels where two nuclei touch, so the material map itself shows
a valley between touching nuclei for the watershed to follow).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipeline.kernels.stain import reinhard_normalise, reinhard_stats

CORE_FRACTION = 0.5  # centre target: distance to the boundary ≥ this share of the nucleus' maximum
CORE_MIN_DISTANCE = 1.0  # … and at least the nucleus' innermost pixel(s) for tiny nuclei


def normalised_rgb(rgb: np.ndarray) -> np.ndarray:
    """The network's input for an RGB uint8 tile: Reinhard-normalised with the tile's own
    statistics to the shipped target (float32 H×W×3 in [0, 1]) — the pipeline's convention."""
    return np.asarray(reinhard_normalise(rgb, reinhard_stats(rgb, None)), dtype=np.float32)


def instance_boundaries(labels: np.ndarray, touching_only: bool = False) -> np.ndarray:
    """Pixels of a nucleus with a 4-neighbour in another nucleus or the background
    (``touching_only``: in another nucleus)."""
    edge = np.zeros(labels.shape, dtype=bool)
    for a, b in (
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
    ):
        differ = labels[a] != labels[b]
        if touching_only:
            differ &= (labels[a] > 0) & (labels[b] > 0)
        edge[a] |= differ
        edge[b] |= differ
    return edge & (labels > 0)


def training_targets(
    labels: np.ndarray, touching_gap: bool = False, centre: str = "core", distances: bool = False
) -> np.ndarray:
    """2×H×W float32 targets (centre, material) from int instance labels (with ``distances``
    4×H×W: then the horizontal and vertical distance maps, :func:`distance_maps`). The centre target is
    each nucleus' inner core (``"core"``: 1 where the distance to its boundary is at least
    :data:`CORE_FRACTION` of its largest, else 0) or that distance itself (``"distance"``: the
    distance over the nucleus' largest, 1 at its innermost pixels, falling to 0 at its boundary),
    whose valleys between touching nuclei the watershed can follow.

    Parameters
    ----------
    labels : np.ndarray
        int instance labels, H×W, 0 = background.
    touching_gap : bool, optional
        Leave out of the material target the pixels where two nuclei touch.
    centre : str, optional
        The centre target, ``"core"`` or ``"distance"``.
    distances : bool, optional
        Also the horizontal and vertical distance maps (a four-output network's targets).

    Returns
    -------
    np.ndarray
        float32 targets in [0, 1]: centre, material[, horizontal, vertical], 2×H×W or 4×H×W.
    """
    material = labels > 0
    inner = material & ~instance_boundaries(labels)
    dist = ndi.distance_transform_edt(inner) + inner  # boundary pixels 0, the next ring ≥ 1 …
    n = int(labels.max())
    if centre not in ("core", "distance"):
        raise ValueError(f"centre target must be 'core' or 'distance', not {centre!r}")
    target = np.zeros(labels.shape, dtype=np.float32)
    if n > 0:
        peak = np.zeros(n + 1)
        peak[1:] = ndi.maximum(dist, labels, np.arange(1, n + 1))
        if centre == "distance":
            target = np.where(material, dist / np.maximum(peak, 1.0)[labels], 0.0).astype(np.float32)
        else:
            need = np.maximum(CORE_FRACTION * peak, CORE_MIN_DISTANCE)
            target = (material & (dist >= need[labels]) & (dist > 0)).astype(np.float32)
    if touching_gap:
        material = material & ~instance_boundaries(labels, touching_only=True)
    maps = [target, material.astype(np.float32)]
    if distances:
        maps.extend(distance_maps(labels))
    return np.stack(maps)


def distance_maps(labels: np.ndarray) -> np.ndarray:
    """2×H×W float32 targets of the horizontal and vertical distance of each nuclear pixel to its
    nucleus' centroid (HoVer-Net, Graham et al. 2019), each side scaled by its farthest pixel to
    [-1, 0] and [0, 1] and stored as (d + 1) / 2 in [0, 1] (the sigmoid's range; background 0.5).
    Between two touching nuclei the maps jump from one nucleus' far side to the other's near side:
    the steep gradient the seeds and the watershed read.

    >>> np.round(2 * distance_maps(np.array([[1, 1, 1, 0, 2, 2]]))[0] - 1, 2).tolist()
    [[-1.0, 0.0, 1.0, 0.0, -1.0, 1.0]]
    """
    out = np.full((2, *labels.shape), 0.5, dtype=np.float32)
    n = int(labels.max())
    if n == 0:
        return out
    index = np.arange(1, n + 1)
    inside = labels > 0
    grid = np.indices(labels.shape, dtype=np.float64)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    for axis, channel in ((1, 0), (0, 1)):  # x (columns) → channel 0, y (rows) → channel 1
        coord = grid[axis]
        mean = np.bincount(labels.ravel(), weights=coord.ravel(), minlength=n + 1) / np.maximum(counts, 1)
        d = np.where(inside, coord - mean[labels], 0.0)
        low = np.zeros(n + 1)
        high = np.zeros(n + 1)
        low[1:] = ndi.minimum(d, labels, index)
        high[1:] = ndi.maximum(d, labels, index)
        scale = np.where(d < 0, -low[labels], high[labels])
        scaled = np.where(inside & (scale > 0), d / np.where(scale > 0, scale, 1.0), 0.0)
        out[channel] = ((scaled + 1.0) / 2.0).astype(np.float32)
    return out


_HED_RGB = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])  # Ruifrok & Johnston
_HED_RGB = _HED_RGB / np.linalg.norm(_HED_RGB, axis=1, keepdims=True)
_RGB_HED = np.linalg.inv(_HED_RGB)


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, scale: float = 0.08, shift: float = 0.015) -> np.ndarray:
    """Stain augmentation (Tellez et al. 2018 style): scale and shift the haematoxylin, eosin
    and DAB concentrations of a float RGB image in [0, 1] (colour deconvolution in optical density).

    Parameters
    ----------
    rgb : np.ndarray
        Float RGB image in [0, 1], H×W×3.
    rng : np.random.Generator
        The random generator.
    scale : float, optional
        Largest relative change of each concentration (a factor in [1 - scale, 1 + scale]).
    shift : float, optional
        Largest shift added to each concentration, in optical density.

    Returns
    -------
    np.ndarray
        Float32 RGB image in [0, 1], same shape.
    """
    od = -np.log(np.clip(rgb, 1 / 255, 1.0))
    hed = od @ _RGB_HED
    hed = hed * rng.uniform(1 - scale, 1 + scale, 3) + rng.uniform(-shift, shift, 3)
    return np.clip(np.exp(-(hed @ _HED_RGB)), 0.0, 1.0).astype(np.float32)


def augment_patch(
    rgb: np.ndarray,
    labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.8, 1.25),
    p_blur: float = 0.25,
    p_stain: float = 0.8,
    p_elastic: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size``×``size`` training patch from a normalised float image and its labels:
    random scale (bilinear image, nearest labels), rotation by 90°, flip, elastic deformation,
    HED jitter, blur.

    Parameters
    ----------
    rgb : np.ndarray
        Stain-normalised float RGB image, H×W×3.
    labels : np.ndarray
        Its instance labels, H×W, 0 = background.
    size : int
        Side of the patch, in px.
    rng : np.random.Generator
        The random generator.
    scale_range : (float, float), optional
        Range of the zoom factor.
    p_blur, p_stain, p_elastic : float, optional
        Probabilities of a Gaussian blur, a HED jitter and an elastic deformation.

    Returns
    -------
    image : np.ndarray
        Float32 RGB patch, size×size×3.
    labels : np.ndarray
        int32 labels of the patch, size×size, 0 = background.
    """
    s = rng.uniform(*scale_range)
    src = min(int(round(size / s)), rgb.shape[0], rgb.shape[1])
    r = int(rng.integers(0, rgb.shape[0] - src + 1))
    c = int(rng.integers(0, rgb.shape[1] - src + 1))
    img = rgb[r : r + src, c : c + src]
    lab = labels[r : r + src, c : c + src]
    if src != size:
        z = size / src
        img = ndi.zoom(img, (z, z, 1), order=1, grid_mode=True, mode="nearest")[:size, :size]
        lab = ndi.zoom(lab, (z, z), order=0, grid_mode=True, mode="nearest")[:size, :size]
    k = int(rng.integers(0, 4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    img = np.ascontiguousarray(img, dtype=np.float32)
    if p_elastic > 0 and rng.random() < p_elastic:
        img, lab = elastic_deform(img, np.ascontiguousarray(lab), rng)
    if rng.random() < p_stain:
        img = hed_jitter(img, rng)
    if rng.random() < p_blur:
        sigma = rng.uniform(0.3, 1.2)
        img = ndi.gaussian_filter(img, (sigma, sigma, 0))
    return img, np.ascontiguousarray(lab, dtype=np.int32)


def elastic_deform(
    rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, alpha_px: float = 6.0, sigma_px: float = 12.0
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random displacement field (Simard et al. 2003): white noise blurred by ``sigma_px``,
    scaled to a typical displacement of ``alpha_px``; bilinear image, nearest labels, edges
    mirrored. Nuclei bend and stretch a little, as tissue does under the coverslip.

    Parameters
    ----------
    rgb : np.ndarray
        Float RGB image, H×W×3.
    labels : np.ndarray
        Its instance labels, H×W, 0 = background.
    rng : np.random.Generator
        The random generator.
    alpha_px : float, optional
        Typical displacement (standard deviation of the field), in px.
    sigma_px : float, optional
        Gaussian blur of the noise, in px: the field's smoothness.

    Returns
    -------
    image : np.ndarray
        Float32 deformed image, H×W×3.
    labels : np.ndarray
        Deformed labels, H×W, same dtype as ``labels``.
    """
    h, w = labels.shape
    field = ndi.gaussian_filter(rng.standard_normal((2, h, w)), (0, sigma_px, sigma_px), mode="reflect")
    field *= alpha_px / max(float(field.std()), 1e-6)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    coords = np.stack([rows + field[0], cols + field[1]])
    img = np.stack([ndi.map_coordinates(rgb[..., c], coords, order=1, mode="mirror") for c in range(3)], axis=-1)
    lab = ndi.map_coordinates(labels, coords, order=0, mode="mirror")
    return img.astype(np.float32), lab.astype(labels.dtype)
