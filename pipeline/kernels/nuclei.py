"""From the U-net's two probability maps to nucleus instances (the paper's post-processing).

Pure array functions: numpy in → numpy out on the CPU; cupy in → cupy out on the GPU
(dispatch by array type, see :mod:`pipeline.kernels.dispatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.kernels.dispatch import array_module, is_device_array, ndimage_module


@dataclass(frozen=True)
class NucleusThresholds:
    """Post-processing parameters. Defaults are the original system's values (DESIGN §2);
    a shipped model carries its own tuned values in its ONNX metadata."""

    centre_sigma: float = 1.0  # blur of the centre (detection) map, px at model resolution
    centre_threshold: float = 0.07  # detection threshold on the blurred centre map
    material_sigma: float = 0.5  # blur of the nuclear-material map
    material_threshold: float = 0.33  # foreground threshold on the blurred material map
    min_area_px: int = 20  # objects smaller than this (px at model resolution) are dropped

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> NucleusThresholds:
        """Read thresholds from ONNX metadata_props (keys = field names); missing keys keep defaults."""
        kwargs: dict[str, Any] = {}
        for name, field in cls.__dataclass_fields__.items():
            if name in meta:
                kwargs[name] = int(float(meta[name])) if field.type in (int, "int") else float(meta[name])
        return cls(**kwargs)


def seeds_from_centres(centre: Any, foreground: Any, params: NucleusThresholds) -> Any:
    """One integer seed per connected component of the thresholded, blurred centre map,
    plus one seed at the material maximum of every foreground component that has none.

    ``centre``: float map in [0, 1]; ``foreground``: bool mask. Returns int32 markers
    (0 = no seed), numbered 1..n.
    """
    xp, ndi = array_module(centre), ndimage_module(centre)
    blurred = ndi.gaussian_filter(centre.astype(xp.float32), params.centre_sigma)
    detected = (blurred > params.centre_threshold) & foreground
    markers, n = ndi.label(detected)
    markers = markers.astype(xp.int32)
    # Foreground components without any seed get one at their maximum of the centre map.
    components, n_comp = ndi.label(foreground)
    if n_comp == 0:
        return markers
    seeded = xp.zeros(int(n_comp) + 1, dtype=bool)
    seeded[components[markers > 0]] = True
    unseeded = ~seeded
    unseeded[0] = False
    if bool(unseeded.any()):
        ids = xp.nonzero(unseeded)[0]
        positions = ndi.maximum_position(blurred, components, ids)
        for k, (r, c) in enumerate(positions):
            markers[int(r), int(c)] = int(n) + 1 + k
    return markers


def watershed_from_seeds(surface: Any, markers: Any, mask: Any) -> Any:
    """Marker-driven watershed of ``surface`` restricted to ``mask``.

    CPU: scikit-image. Device arrays are flooded on the host until the GPU watershed lands
    (a copy of three tile-sized arrays, recorded as such in the GPU benchmark).
    """
    from skimage.segmentation import watershed

    if is_device_array(surface):
        import cupy

        labels = watershed(surface.get(), markers.get(), mask=mask.get())
        return cupy.asarray(labels)
    return watershed(surface, markers, mask=mask)


def instances_from_probabilities(prob: Any, params: NucleusThresholds) -> Any:
    """Nucleus instance labels (int32, 0 = background) from a 2×H×W probability array
    (channel 0 = nucleus centre, channel 1 = nuclear material).

    Steps (DESIGN §2): blur + threshold the material map → foreground; seeds from the centre
    map; watershed of −material from the seeds inside the foreground; holes filled; objects
    smaller than ``min_area_px`` dropped. Labels are renumbered 1..n in raster order of
    their first pixel.
    """
    xp, ndi = array_module(prob), ndimage_module(prob)
    if prob.ndim != 3 or prob.shape[0] != 2:
        raise ValueError(f"expected probabilities shaped 2×H×W, got {tuple(prob.shape)}")
    centre = prob[0].astype(xp.float32)
    material = ndi.gaussian_filter(prob[1].astype(xp.float32), params.material_sigma)
    foreground = material > params.material_threshold
    markers = seeds_from_centres(centre, foreground, params)
    labels = watershed_from_seeds(-material, markers, foreground)
    labels = fill_label_holes(labels)
    return remove_small_labels(labels, params.min_area_px)


def fill_label_holes(labels: Any) -> Any:
    """Fill background holes that are enclosed by a single label."""
    xp, ndi = array_module(labels), ndimage_module(labels)
    background = labels == 0
    holes, n = ndi.label(background)
    if n <= 1:
        return labels
    index = xp.arange(1, int(n) + 1)
    # Labelled pixels next to a hole carry that hole's id; a hole is enclosed by one label
    # when the smallest and largest label on its rim agree.
    rim = ndi.grey_dilation(holes, size=3) * (~background)
    lab_min = xp.asarray(ndi.minimum(labels, rim, index))
    lab_max = xp.asarray(ndi.maximum(labels, rim, index))
    enclosed = (lab_min == lab_max) & (lab_max > 0)
    edge = xp.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    touches_edge = xp.zeros(int(n) + 1, dtype=bool)
    touches_edge[edge] = True
    fill = xp.zeros(int(n) + 1, dtype=labels.dtype)
    fill[1:] = xp.where(enclosed & ~touches_edge[1:], lab_max, 0).astype(labels.dtype)
    return xp.where(background, fill[holes], labels)


def remove_small_labels(labels: Any, min_area: int) -> Any:
    """Drop labels with fewer than ``min_area`` pixels and renumber the rest 1..n."""
    xp = array_module(labels)
    counts = xp.bincount(labels.ravel())
    keep = counts >= min_area
    keep[0] = False
    new_ids = xp.zeros(counts.shape[0], dtype=xp.int32)
    new_ids[keep] = xp.arange(1, int(keep.sum()) + 1, dtype=xp.int32)
    return new_ids[labels]
