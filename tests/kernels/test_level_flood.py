"""Parity of the array-API watershed (the GPU twin) with scikit-image's, on numpy here and on
cupy where a CUDA device is present: ≥ 99% of nuclei matched at IoU ≥ 0.9."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.segmentation import watershed

from pipeline.kernels.level_flood import flood_components, flood_watershed
from pipeline.kernels.nuclei import NucleusThresholds, seeds_from_centres, watershed_from_seeds

MATCH_IOU = 0.9  # a nucleus matches scikit-image's at IoU ≥ 0.9 ...
MATCH_SHARE = 0.99  # ... and at least 99 % of nuclei must match

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


def to_backend(name: str, *arrays: np.ndarray) -> list:
    if name == "numpy":
        return list(arrays)
    import cupy

    return [cupy.asarray(a) for a in arrays]


def host(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def matched_share(reference: np.ndarray, candidate: np.ndarray, iou: float = MATCH_IOU) -> float:
    """Share of the reference's labels whose best-overlapping candidate label has IoU ≥ ``iou``."""
    ref_ids = np.unique(reference[reference > 0])
    if ref_ids.size == 0:
        return 1.0
    both = (reference > 0) & (candidate > 0)
    nc = int(candidate.max()) + 1
    pair = reference[both].astype(np.int64) * nc + candidate[both]
    keys, inter = np.unique(pair, return_counts=True)
    r, c = keys // nc, keys % nc
    area_r = np.bincount(reference.ravel())
    area_c = np.bincount(candidate.ravel(), minlength=nc)
    ious = inter / (area_r[r] + area_c[c] - inter)
    best = np.zeros(area_r.shape[0])
    np.maximum.at(best, r, ious)
    return float((best[ref_ids] >= iou).mean())


def touching_discs(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy material-probability-like map of touching discs (radius 7–11 px on a 17 px
    jittered grid), its foreground and one seed per disc: (surface, markers, mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    material = np.zeros((size, size), np.float32)
    markers = np.zeros((size, size), np.int32)
    k = 0
    for cy in np.arange(10, size, 17):
        for cx in np.arange(10, size, 17):
            y, x, r = cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3), rng.uniform(7, 11)
            d = np.hypot(yy - y, xx - x)
            material = np.maximum(material, np.clip(1 - (d / r) ** 2, 0, 1))
            k += 1
            markers[int(y), int(x)] = k
    material = ndi.gaussian_filter(material + rng.normal(0, 0.05, material.shape).astype(np.float32), 1)
    mask = material > 0.2
    return -material, markers, mask


def test_matched_share_counts_iou() -> None:
    a = np.zeros((10, 10), np.int32)
    a[:5], a[5:] = 1, 2
    b = a.copy()
    assert matched_share(a, b) == 1.0
    b[4, :] = 2  # label 1 loses 10 of 50 px: IoU 0.8; label 2 gains them: IoU 50/60
    assert matched_share(a, b) == 0.0
    b = a.copy()
    b[4, :3] = 2  # IoU 47/50 and 50/53
    assert matched_share(a, b) == 1.0


def test_tiny_ridge_and_mask() -> None:
    surface = np.array([[0, 1, 2, 1, 0], [0, 1, 2, 1, 0]], dtype=np.float32)
    markers = np.array([[1, 0, 0, 0, 2], [0, 0, 0, 0, 0]])
    mask = np.ones_like(markers, dtype=bool)
    mask[:, 1] = [True, False]
    out = flood_watershed(surface, markers, mask)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, watershed(surface, markers, mask=mask))
    unreached = np.zeros_like(mask)
    unreached[:, 2] = True  # a mask column with no seed stays 0
    assert not flood_watershed(surface, markers, unreached).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_touching_discs(backend: str) -> None:
    surface, markers, mask = touching_discs()
    reference = watershed(surface, markers, mask=mask)
    s, m, k = to_backend(backend, surface, markers, mask)
    ours = host(flood_watershed(s, m, k))
    assert matched_share(reference, ours) >= MATCH_SHARE
    assert (ours != reference).mean() < 0.005  # a few tie pixels on ridges, nothing more
    assert set(np.unique(ours)) == set(np.unique(reference))


@pytest.fixture(scope="module")
def slide_probabilities(blob_model) -> np.ndarray:
    """2×1000×1000 probabilities of a generated slide with touching nuclei, through the blob
    model and the slide path's stain normalisation (as pipeline.slide.segment.segment_window)."""
    from pipeline.kernels.stain import reinhard_stats
    from pipeline.runtime.session import NucleusModel
    from pipeline.slide.model_input import model_input, normalise_stain
    from pipeline.testing import synthetic_slide_image

    rgb, _ = synthetic_slide_image(1000, 1000, seed=11, radius=(6.0, 9.0), spacing=18.0, tissue="full")
    model = NucleusModel(blob_model, intra_op_threads=2)
    normalised = normalise_stain(rgb, reinhard_stats(rgb))
    return model.predict(model_input([normalised], 1008))[0, :, :1000, :1000], model.thresholds


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_on_slide_probabilities(backend: str, slide_probabilities) -> None:
    prob, params = slide_probabilities
    # the blob model's centre map saturates between touching nuclei: a high threshold splits them
    params = NucleusThresholds(**{**params.__dict__, "centre_threshold": 0.99})
    material = ndi.gaussian_filter(prob[1], params.material_sigma)
    foreground = material > params.material_threshold
    markers = seeds_from_centres(prob[0], foreground, params)
    reference = watershed(-material, markers, mask=foreground)
    components = ndi.label(foreground)[0]
    seed_component = ndi.maximum(components, markers, np.arange(1, int(markers.max()) + 1)).astype(int)
    seeds_per_component = np.bincount(seed_component)
    assert len(np.unique(reference)) - 1 > 2000  # many nuclei
    assert (seeds_per_component[1:] > 1).sum() > 300  # many of them touching others
    s, m, k = to_backend(backend, -material, markers, foreground)
    assert matched_share(reference, host(flood_watershed(s, m, k))) >= MATCH_SHARE
    # the per-component form used by watershed_from_seeds on device arrays, against its CPU form
    cpu = watershed_from_seeds(-material, markers, foreground)
    assert matched_share(cpu, host(flood_components(s, m, k))) >= MATCH_SHARE
    if backend == "cupy":
        assert matched_share(cpu, host(watershed_from_seeds(s, m, k))) >= MATCH_SHARE


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_floods_each_image_on_its_own(backend: str) -> None:
    """N×H×W: independent images in one flood (one set of waves for several tiles)."""
    images = [touching_discs(128, seed=s) for s in (1, 2, 3)]
    surface, markers, mask = (np.stack([im[k] for im in images]) for k in range(3))
    markers[1, 0, :] = 0  # a seed-free edge row, and
    mask[1, 0, :] = mask[0, -1, :] = True  # masks touching the neighbouring image's border
    s, m, k = to_backend(backend, surface, markers, mask)
    batch = host(flood_watershed(s, m, k))
    assert batch.shape == surface.shape and batch.dtype == np.int32
    for i in range(3):
        reference = watershed(surface[i], markers[i], mask=mask[i])
        assert matched_share(reference, batch[i]) >= MATCH_SHARE
        assert set(np.unique(batch[i])) == set(np.unique(reference))  # nothing leaks between images
