"""Per-nucleus measurements and outlines from an instance-label image (pure functions).

Moments are computed for all nuclei at once with bincount over the labelled pixels (numpy or
cupy). Outlines of all nuclei of a tile are traced at once, on the host, by marching squares over
the label image in array operations (no loop over nuclei or vertices): the same rings, vertex for
vertex, as ``skimage.measure.find_contours`` at the half level on each nucleus' mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.kernels.dispatch import array_module, to_host


def nucleus_moments(labels: Any, intensity: Any) -> dict[str, np.ndarray]:
    """Area, centroid (row, col), eccentricity and mean intensity of labels 1..n (host arrays).

    The pixel sums (count, Σr, Σc, Σr², Σc², Σrc) come from where each row's runs of a label
    start and end, in closed form (Σ_{c=a..b} c = T1(b) − T1(a−1), …): integer arithmetic on a
    few values per run instead of a pass per sum over every pixel; being exact integers, they are
    the same float64 values a pixel-by-pixel sum gives. The intensity is summed pixel by pixel
    over the labelled pixels.
    """
    xp = array_module(labels)
    if labels.size == 0:
        return {key: np.zeros(0) for key in ("area", "row", "col", "eccentricity", "mean_intensity")}
    n = int(labels.max())
    size = n + 1
    width = labels.shape[1]
    change = labels[:, :-1] != labels[:, 1:]
    r_in, c_in = xp.nonzero(change)  # a run of labels[r, c] ends at c, one of labels[r, c+1] starts at c+1
    left, right = labels[r_in, c_in], labels[r_in, c_in + 1]
    r_first = xp.nonzero(labels[:, 0])[0]  # runs starting at column 0
    r_last = xp.nonzero(labels[:, width - 1])[0]  # runs ending at the last column
    c_in = c_in.astype(xp.int64)
    ends_lab = xp.concatenate([left, labels[r_last, width - 1]])
    ends_row = xp.concatenate([r_in, r_last]).astype(xp.int64)
    ends_k = xp.concatenate([c_in, xp.full(len(r_last), width - 1, dtype=xp.int64)])
    starts_lab = xp.concatenate([right, labels[r_first, 0]])
    starts_row = xp.concatenate([r_in, r_first]).astype(xp.int64)
    starts_k = xp.concatenate([c_in, xp.full(len(r_first), -1, dtype=xp.int64)])  # a − 1
    keep_e, keep_s = ends_lab != 0, starts_lab != 0
    lab = xp.concatenate([ends_lab[keep_e], starts_lab[keep_s]])
    row = xp.concatenate([ends_row[keep_e], starts_row[keep_s]])
    k = xp.concatenate([ends_k[keep_e], starts_k[keep_s]])
    sign = xp.concatenate([xp.ones(int(keep_e.sum()), dtype=xp.int64), -xp.ones(int(keep_s.sum()), dtype=xp.int64)])
    t1 = k * (k + 1) // 2  # Σ_{c=0..k} c
    t2 = k * (k + 1) * (2 * k + 1) // 6  # Σ_{c=0..k} c²

    def total(weights: Any) -> Any:
        return xp.bincount(lab, weights=(sign * weights).astype(xp.float64), minlength=size)

    area = total(k)
    safe = xp.maximum(area, 1.0)
    mr = total(row * k) / safe
    mc = total(t1) / safe
    rr = total(row * row * k) / safe - mr**2
    cc = total(t2) / safe - mc**2
    rc = total(row * t1) / safe - mr * mc
    # Eccentricity of the ellipse with the same second moments (as skimage.regionprops),
    # with the 1/12 pixel-area term so single-pixel-wide objects stay finite.
    rr, cc = rr + 1 / 12, cc + 1 / 12
    root = xp.sqrt(((rr - cc) / 2) ** 2 + rc**2)
    l1 = (rr + cc) / 2 + root
    l2 = (rr + cc) / 2 - root
    ecc = xp.sqrt(xp.clip(1 - l2 / xp.maximum(l1, 1e-12), 0, 1))
    # each nucleus' intensities summed in raster order, as over every pixel (the background's into bin 0)
    mean_i = xp.bincount(labels.ravel(), weights=intensity.ravel().astype(xp.float64), minlength=size) / safe
    return {
        "area": to_host(area[1:]),
        "row": to_host(mr[1:]),
        "col": to_host(mc[1:]),
        "eccentricity": to_host(ecc[1:]),
        "mean_intensity": to_host(mean_i[1:]),
    }


# Marching squares on a 2×2 cell of pixels tl, tr, bl, br (configuration bits 1, 2, 4, 8 for the
# pixels inside the nucleus). A contour vertex sits on a cell side, midway between a pixel inside
# and one outside: top (r, c+½), bottom (r+1, c+½), left (r+½, c), right (r+½, c+1). The segments,
# their direction and, in the two saddle cases (diagonal pixels: the nucleus is 4-connected, so
# they are cut apart), their order are those find_contours emits.
_TOP, _BOTTOM, _LEFT, _RIGHT = 0, 1, 2, 3
_SEGMENTS = {
    1: [(_TOP, _LEFT)],
    2: [(_RIGHT, _TOP)],
    3: [(_RIGHT, _LEFT)],
    4: [(_LEFT, _BOTTOM)],
    5: [(_TOP, _BOTTOM)],
    6: [(_RIGHT, _TOP), (_LEFT, _BOTTOM)],
    7: [(_RIGHT, _BOTTOM)],
    8: [(_BOTTOM, _RIGHT)],
    9: [(_TOP, _LEFT), (_BOTTOM, _RIGHT)],
    10: [(_BOTTOM, _TOP)],
    11: [(_BOTTOM, _LEFT)],
    12: [(_LEFT, _RIGHT)],
    13: [(_TOP, _RIGHT)],
    14: [(_LEFT, _TOP)],
}
_FIRST = np.full((16, 2), -1, dtype=np.int64)
_SECOND = np.full((16, 2), -1, dtype=np.int64)
for _cfg, _segs in _SEGMENTS.items():
    _FIRST[_cfg] = _segs[0]
    if len(_segs) > 1:
        _SECOND[_cfg] = _segs[1]


def _side_vertex(cell: np.ndarray, side: np.ndarray, width: int) -> np.ndarray:
    """Vertex id of a cell side: 2·p for the vertex between flat pixel p = (r, c) and its right
    neighbour, at (r, c+½); 2·p + 1 for the one between p and the pixel below, at (r+½, c).
    ``cell`` is the flat index of the cell's top-left pixel in an image ``width`` wide."""
    offset = np.array([0, 2 * width, 1, 3], dtype=np.int64)  # top, bottom, left, right
    return 2 * cell + offset[side]


def _pointer_jumps(length: int) -> int:
    return max(1, int(np.ceil(np.log2(max(length, 2)))))


def outline_arrays(labels: Any, ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outlines of the nuclei ``ids`` (distinct) of a label image, all at once: (rows, cols,
    offsets), ring ``k`` being ``rows[offsets[k]:offsets[k+1]]`` (empty for an id that does not
    occur).

    Each ring is what tracing the nucleus' mask alone gives (``skimage.measure.find_contours`` at
    the half level on the mask padded by one pixel): vertices midway between its pixels and the
    others, closed (last vertex not repeated), from the same start vertex in the same direction;
    for an id in several pieces (or with holes) the longest contour, the first one found on ties;
    vertices on straight runs dropped (:func:`drop_collinear`).
    """
    host = to_host(labels)
    ids = np.asarray(to_host(ids), dtype=np.int64).ravel()
    n = len(ids)
    empty = (np.zeros(0), np.zeros(0), np.zeros(n + 1, dtype=np.int64))
    if n == 0 or host.size == 0:
        return empty
    top = int(host.max())
    slot = np.full(top + 2, -1, dtype=np.int32 if n < 2**31 else np.int64)
    wanted = (ids > 0) & (ids <= top)
    slot[ids[wanted]] = np.nonzero(wanted)[0]
    height, width = host.shape[0] + 2, host.shape[1] + 2
    padded = np.full((height, width), -1, dtype=slot.dtype)  # slot of each pixel, -1 outside
    padded[1:-1, 1:-1] = slot.take(host)  # a contiguous take, then the copy: faster than into the view
    # Cell k has the pixels k, k+1, k+width, k+width+1 of the flat padded image (the cells that
    # wrap around a row's end are all padding, so never on a boundary).
    flat = padded.ravel()
    m = (height - 1) * width - 1
    tl, tr, bl, br = flat[:m], flat[1 : m + 1], flat[width : width + m], flat[width + 1 : width + 1 + m]
    cell = np.flatnonzero((tl != tr) | (tl != bl) | (tl != br))  # cells on a boundary, in raster order
    if len(cell) == 0:
        return empty
    corners = [tl[cell], tr[cell], bl[cell], br[cell]]
    keys, slots, sides_from, sides_to, cells = [], [], [], [], []
    for j, owner in enumerate(corners):
        valid = owner >= 0
        for earlier in corners[:j]:
            valid &= owner != earlier  # each nucleus of a cell once
        idx = np.nonzero(valid)[0]
        own = owner[idx]
        cfg = sum((corners[k][idx] == own).astype(np.int64) << k for k in range(4))
        for s, table in enumerate((_FIRST, _SECOND)):
            seg = table[cfg]
            has = seg[:, 0] >= 0
            pick = idx[has]
            keys.append(pick * 8 + j * 2 + s)  # raster order of find_contours' segments
            slots.append(own[has].astype(np.int64))
            sides_from.append(seg[has, 0])
            sides_to.append(seg[has, 1])
            cells.append(cell[pick])
    key = np.concatenate(keys)
    seg_slot = np.concatenate(slots)
    seg_cell = np.concatenate(cells)
    n_vertices = 2 * height * width
    v_from = _side_vertex(seg_cell, np.concatenate(sides_from), width)
    v_to = _side_vertex(seg_cell, np.concatenate(sides_to), width)
    from_key = seg_slot * n_vertices + v_from
    to_key = seg_slot * n_vertices + v_to
    by_from = np.argsort(from_key, kind="stable")
    succ = by_from[np.searchsorted(from_key[by_from], to_key)]  # the segment that continues each one

    # Contours are the cycles of succ. Pointer jumping, in log2(longest) passes: each segment
    # learns its contour's first and last segment in raster order, then its distance to the last.
    jumps = _pointer_jumps(int(np.bincount(seg_slot).max()))
    last, first, nxt = key.copy(), key.copy(), succ
    for _ in range(jumps):
        last = np.maximum(last, last[nxt])
        first = np.minimum(first, first[nxt])
        nxt = nxt[nxt]
    is_last = key == last
    to_last = (~is_last).astype(np.int64)
    nxt = np.where(is_last, np.arange(len(key)), succ)
    for _ in range(jumps):
        to_last = to_last + to_last[nxt]
        nxt = nxt[nxt]
    # find_contours closes a contour with its last segment in raster order: the ring starts where
    # that segment ends and runs to where it starts.
    order = np.lexsort((-to_last, last, seg_slot))
    last, first, seg_slot, v_from = last[order], first[order], seg_slot[order], v_from[order]
    starts = np.flatnonzero(np.r_[True, last[1:] != last[:-1]])
    lengths = np.diff(np.r_[starts, len(last)])
    c_slot, c_first = seg_slot[starts], first[starts]
    best = np.lexsort((c_first, -lengths, c_slot))  # per nucleus: longest, then first found
    chosen = best[np.r_[True, c_slot[best][1:] != c_slot[best][:-1]]]
    keep = np.zeros(len(starts), dtype=bool)
    keep[chosen] = True
    take = np.repeat(keep, lengths)
    vertex = v_from[take]
    ring_slot = seg_slot[take]
    pixel, kind = vertex >> 1, (vertex & 1).astype(np.float64)
    r = (pixel // width - 1).astype(np.float64) + 0.5 * kind
    c = (pixel % width - 1).astype(np.float64) + 0.5 * (1.0 - kind)
    counts = np.bincount(ring_slot, minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    kept = drop_collinear_rings(r, c, offsets)
    counts = np.bincount(ring_slot[kept], minlength=n)
    np.cumsum(counts, out=offsets[1:])
    return r[kept], c[kept], offsets


def _ring_neighbours(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For flat rings: each vertex's ring, its successor and its predecessor (wrapping)."""
    counts = np.diff(offsets)
    total = int(offsets[-1])
    ring = np.repeat(np.arange(len(counts)), counts)
    idx = np.arange(total)
    nxt = idx + 1
    ends = offsets[1:][counts > 0] - 1
    nxt[ends] = offsets[:-1][counts > 0]
    prv = idx - 1
    prv[offsets[:-1][counts > 0]] = ends
    return ring, nxt, prv


def drop_collinear_rings(rows: np.ndarray, cols: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Which vertices of flat rings to keep: not those on the straight line through their
    neighbours (exact: the outline's shape is unchanged); a ring that would keep fewer than three
    vertices, or has fewer than four, is kept whole."""
    ring, nxt, prv = _ring_neighbours(offsets)
    after_r, after_c = rows[nxt] - rows, cols[nxt] - cols
    before_r, before_c = after_r[prv], after_c[prv]
    keep = np.abs(before_r * after_c - before_c * after_r) > 1e-9
    counts = np.diff(offsets)
    whole = (np.bincount(ring, weights=keep, minlength=len(counts)) < 3) | (counts < 4)
    return keep | whole[ring]


def drop_collinear(ring: np.ndarray) -> np.ndarray:
    """One ring (k×2) without the vertices that lie on the straight line through their neighbours."""
    keep = drop_collinear_rings(ring[:, 0], ring[:, 1], np.array([0, len(ring)]))
    return ring[keep]


def nucleus_outlines(labels: Any, ids: Any) -> list[np.ndarray]:
    """Outlines (k×2 float, row/col in the label image's coordinates) of the given label ids."""
    rows, cols, offsets = outline_arrays(labels, ids)
    vertices = np.stack([rows, cols], axis=1)
    return [vertices[offsets[k] : offsets[k + 1]] for k in range(len(offsets) - 1)]


def outline_perimeters(rows: np.ndarray, cols: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Perimeter of each closed flat ring (0 for an empty one). The edge lengths are computed for
    all rings at once; each ring's are summed with numpy's own (pairwise) sum, so a perimeter is
    bit-identical to summing that ring alone (one small reduction per ring, no Python arithmetic)."""
    _, nxt, _ = _ring_neighbours(offsets)
    step = np.hypot(rows[nxt] - rows, cols[nxt] - cols)
    return np.array([step[offsets[k] : offsets[k + 1]].sum() for k in range(len(offsets) - 1)], dtype=np.float64)


def polygon_perimeter(ring: np.ndarray) -> float:
    """Perimeter of one closed ring (k×2)."""
    return float(outline_perimeters(ring[:, 0], ring[:, 1], np.array([0, len(ring)]))[0])
