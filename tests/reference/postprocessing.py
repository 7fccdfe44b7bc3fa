"""The previous CPU post-processing steps, verbatim: the seeds, the watershed (scikit-image on the box of every
mask component holding several seeds, with all of the component's seed pixels) and the hole fill
(a whole-image 3×3 grey dilation per ring); the references that ``tests/test_kernels.py`` and
``benchmarks/host_stages.py`` compare the basin-wise watershed and the hole-pixel fill with."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.kernels.dispatch import array_module, ndimage_module
from pipeline.kernels.nuclei import NucleusThresholds


def seeds_from_centres(centre: Any, foreground: Any, params: NucleusThresholds) -> Any:
    """One integer seed per connected component of the thresholded, blurred centre map (a core);
    one per component above the lower ``centre_weak_threshold`` that holds no core (a weak core:
    a faint nucleus, or one whose centre response a brighter neighbour's does not reach); and one
    at the centre-map maximum of every foreground component that still has none.

    ``centre``: float map in [0, 1]; ``foreground``: bool mask. Returns int32 markers
    (0 = no seed), numbered 1..n.
    """
    xp, ndi = array_module(centre), ndimage_module(centre)
    blurred = ndi.gaussian_filter(centre.astype(xp.float32), params.centre_sigma)
    detected = (blurred > params.centre_threshold) & foreground
    markers, n = ndi.label(detected)
    markers = markers.astype(xp.int32)
    if params.centre_weak_threshold < params.centre_threshold:
        weak, n_weak = ndi.label((blurred > params.centre_weak_threshold) & foreground)
        lone = xp.ones(int(n_weak) + 1, dtype=bool)  # weak components holding no core
        lone[0] = False
        lone[weak[markers > 0]] = False
        new_id = (xp.cumsum(lone) + int(n)).astype(xp.int32)  # n+1, n+2 … in raster order, as label() numbers
        markers = xp.where(lone[weak], new_id[weak], markers)
        n = int(n) + int(lone.sum())
    components, n_comp = ndi.label(foreground)
    if n_comp == 0:
        return markers
    seeded = xp.zeros(int(n_comp) + 1, dtype=bool)
    seeded[components[markers > 0]] = True
    unseeded = ~seeded
    unseeded[0] = False
    if bool(unseeded.any()):
        # The centre-map maximum of each unseeded component (first in raster order on ties),
        # for all components at once: sort their pixels by (component, −value, position).
        flat = components.reshape(-1)
        where = xp.nonzero(unseeded[flat])[0]
        comp = flat[where]
        keys = xp.stack(
            [where.astype(xp.float64), -blurred.reshape(-1)[where].astype(xp.float64), comp.astype(xp.float64)]
        )
        order = xp.lexsort(keys)
        comp, where = comp[order], where[order]
        first = xp.ones(comp.shape[0], dtype=bool)
        first[1:] = comp[1:] != comp[:-1]
        peaks = where[first]  # ascending component id
        markers.reshape(-1)[peaks] = xp.arange(int(n) + 1, int(n) + 1 + peaks.shape[0], dtype=xp.int32)
    return markers


def watershed_from_seeds(surface: Any, markers: Any, mask: Any) -> Any:
    import scipy.ndimage as ndi
    from skimage.segmentation import watershed

    components, n_comp = ndi.label(mask)
    labels = np.zeros(markers.shape, dtype=np.int32)
    if n_comp == 0:
        return labels
    seeded = markers > 0
    # distinct seeds (marker ids, not seed pixels) per component
    pairs = np.unique(components[seeded].astype(np.int64) * (int(markers.max()) + 1) + markers[seeded])
    seeds_per_comp = np.bincount(pairs // (int(markers.max()) + 1), minlength=n_comp + 1)
    # single-seed components: the seed's id everywhere in the component
    owner = np.zeros(n_comp + 1, dtype=np.int32)
    single = seeds_per_comp == 1
    single[0] = False
    sel = seeded & single[components]
    owner[components[sel]] = markers[sel]
    labels = owner[components]
    multi = np.nonzero(seeds_per_comp > 1)[0]
    multi = multi[multi > 0]
    if multi.size:
        boxes = ndi.find_objects(components)
        for comp in multi:
            box = boxes[comp - 1]
            inside = components[box] == comp
            flooded = watershed(surface[box], np.where(inside, markers[box], 0), mask=inside)
            labels[box][inside] = flooded[inside]
    return labels


def fill_label_holes(labels: Any) -> Any:
    import scipy.ndimage as ndi

    background = labels == 0
    components, n = ndi.label(background)
    if int(n) <= 1:
        return labels
    edge = np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
    enclosed = np.ones(int(n) + 1, dtype=bool)
    enclosed[0] = False
    enclosed[edge] = False
    holes = enclosed[components]
    if not bool(holes.any()):
        return labels
    out = labels.copy()
    for _ in range(64):  # holes are a few pixels wide; each pass fills one ring
        grown = ndi.grey_dilation(out, size=3)
        fill = holes & (out == 0) & (grown > 0)
        if not bool(fill.any()):
            break
        out = np.where(fill, grown, out)
    return out


def instances_from_probabilities(prob: Any, params: Any) -> Any:
    """The previous composition: the same steps as ``pipeline.kernels.nuclei`` with the
    watershed and hole fill above."""
    import scipy.ndimage as ndi

    from pipeline.kernels.nuclei import remove_small_labels

    centre = prob[0].astype(np.float32)
    material = ndi.gaussian_filter(prob[1].astype(np.float32), params.material_sigma)
    foreground = material > params.material_threshold
    markers = seeds_from_centres(centre, foreground, params)
    labels = watershed_from_seeds(-material, markers, foreground)
    labels = fill_label_holes(labels)
    return remove_small_labels(labels, params.min_area_px)
