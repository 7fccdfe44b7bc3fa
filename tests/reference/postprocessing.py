"""The previous CPU post-processing steps, verbatim: the watershed (scikit-image on the box of every
mask component holding several seeds, with all of the component's seed pixels) and the hole fill
(a whole-image 3×3 grey dilation per ring); the references that ``tests/test_kernels.py`` and
``benchmarks/host_stages.py`` compare the basin-wise watershed and the hole-pixel fill with."""

from __future__ import annotations

from typing import Any

import numpy as np


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

    from pipeline.kernels.nuclei import remove_small_labels, seeds_from_centres

    centre = prob[0].astype(np.float32)
    material = ndi.gaussian_filter(prob[1].astype(np.float32), params.material_sigma)
    foreground = material > params.material_threshold
    markers = seeds_from_centres(centre, foreground, params)
    labels = watershed_from_seeds(-material, markers, foreground)
    labels = fill_label_holes(labels)
    return remove_small_labels(labels, params.min_area_px)
