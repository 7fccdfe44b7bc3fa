"""The previous per-nucleus feature code, verbatim (pipeline/kernels/features.py and the table part
of pipeline/slide/segment.py tile_nuclei before the array tracer): the reference the tests and
``benchmarks/host_stages.py`` compare the current code with."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.kernels.dispatch import array_module, to_host


def nucleus_moments(labels: Any, intensity: Any) -> dict[str, np.ndarray]:
    """Area, centroid (row, col), eccentricity and mean intensity of labels 1..n (host arrays)."""
    xp = array_module(labels)
    n = int(labels.max()) if labels.size else 0
    flat = labels.ravel()
    rows, cols = xp.indices(labels.shape)
    r = rows.ravel().astype(xp.float64)
    c = cols.ravel().astype(xp.float64)
    size = n + 1
    area = xp.bincount(flat, minlength=size).astype(xp.float64)
    safe = xp.maximum(area, 1.0)
    mr = xp.bincount(flat, weights=r, minlength=size) / safe
    mc = xp.bincount(flat, weights=c, minlength=size) / safe
    rr = xp.bincount(flat, weights=r * r, minlength=size) / safe - mr**2
    cc = xp.bincount(flat, weights=c * c, minlength=size) / safe - mc**2
    rc = xp.bincount(flat, weights=r * c, minlength=size) / safe - mr * mc
    # Eccentricity of the ellipse with the same second moments (as skimage.regionprops),
    # with the 1/12 pixel-area term so single-pixel-wide objects stay finite.
    rr, cc = rr + 1 / 12, cc + 1 / 12
    root = xp.sqrt(((rr - cc) / 2) ** 2 + rc**2)
    l1 = (rr + cc) / 2 + root
    l2 = (rr + cc) / 2 - root
    ecc = xp.sqrt(xp.clip(1 - l2 / xp.maximum(l1, 1e-12), 0, 1))
    mean_i = xp.bincount(flat, weights=intensity.ravel().astype(xp.float64), minlength=size) / safe
    return {
        "area": to_host(area[1:]),
        "row": to_host(mr[1:]),
        "col": to_host(mc[1:]),
        "eccentricity": to_host(ecc[1:]),
        "mean_intensity": to_host(mean_i[1:]),
    }


def nucleus_outline(mask: np.ndarray) -> np.ndarray:
    """Closed outline (k×2 float, row/col, last vertex not repeated) of a boolean nucleus mask,
    traced along the half-level between its pixels and the background."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1)
    contours = find_contours(padded.astype(np.float32), 0.5)
    if not contours:
        return np.zeros((0, 2))
    ring = max(contours, key=len) if len(contours) > 1 else contours[0]
    if len(ring) > 1 and ring[0, 0] == ring[-1, 0] and ring[0, 1] == ring[-1, 1]:
        ring = ring[:-1]
    return drop_collinear(ring) - 1.0


def drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line through their neighbours (exact: the
    outline's shape is unchanged, only redundant points of straight runs go)."""
    if len(ring) < 4:
        return ring
    step = np.diff(ring, axis=0, append=ring[:1])  # ring[i+1] - ring[i], wrapping around
    after = step
    before = np.concatenate([step[-1:], step[:-1]])
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    return ring[keep] if keep.sum() >= 3 else ring


def nucleus_outlines(labels: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Outlines (row, col in the label image's coordinates) of the given label ids."""
    import scipy.ndimage as ndi

    host = to_host(labels)
    boxes = ndi.find_objects(host)
    out = []
    for i in ids:
        box = boxes[int(i) - 1]
        if box is None:
            out.append(np.zeros((0, 2)))
            continue
        ring = nucleus_outline(host[box] == i)
        ring[:, 0] += box[0].start
        ring[:, 1] += box[1].start
        out.append(ring)
    return out


def polygon_perimeter(ring: np.ndarray) -> float:
    if len(ring) < 2:
        return 0.0
    closed = np.vstack([ring, ring[:1]])
    return float(np.hypot(*np.diff(closed, axis=0).T).sum())


def tile_table(labels: np.ndarray, h_map: np.ndarray, grid: Any, tile: Any, mpp: float) -> Any:
    """The previous ``tile_nuclei`` table (per-nucleus loop over ``nucleus_outlines``)."""
    import pyarrow as pa

    from pipeline.io.outputs.schema import NUCLEI_SCHEMA

    model_mpp = grid.scale * mpp
    moments = nucleus_moments(labels, h_map)
    x, y = grid.to_level0(tile[0], tile[1], moments["row"], moments["col"])
    cx0, cy0, cx1, cy1 = grid.core(*tile)
    owned = (moments["area"] > 0) & (x >= cx0 - 0.5) & (x < cx1 - 0.5) & (y >= cy0 - 0.5) & (y < cy1 - 0.5)
    ids = np.nonzero(owned)[0] + 1
    rings = nucleus_outlines(labels, ids)
    polygons = []
    perimeters = []
    for ring in rings:
        px, py = grid.to_level0(tile[0], tile[1], ring[:, 0], ring[:, 1])
        flat = np.empty(2 * len(ring))
        flat[0::2], flat[1::2] = px, py
        polygons.append(flat)
        perimeters.append(polygon_perimeter(ring) * grid.scale)
    sel = ids - 1
    area_um2 = moments["area"][sel] * model_mpp**2
    return pa.table(
        {
            "id": pa.array(np.arange(1, len(ids) + 1, dtype=np.uint32)),
            "centroid_x": x[sel],
            "centroid_y": y[sel],
            "area_px": area_um2 / mpp**2,
            "area_um2": area_um2,
            "perimeter_px": np.asarray(perimeters, dtype=np.float64),
            "eccentricity": moments["eccentricity"][sel],
            "mean_haematoxylin": moments["mean_intensity"][sel],
            "polygon": pa.array([p.tolist() for p in polygons], type=pa.list_(pa.float64())),
        },
        schema=NUCLEI_SCHEMA,
    )
