"""Outlines as they are stored: vertices on a grid of a fraction of a pixel, and no more vertices
than it takes to cover the same pixels (pure numpy functions on flat rings).

Rings are flat: ring ``k`` is ``x[offsets[k]:offsets[k+1]]``, ``y[...]``, closed (the last vertex
not repeated). Coordinates are pixels of the image the rings are drawn on, with pixel centres at
whole numbers (level-0 px of a slide: pixel ``(r, c)`` is the point ``x = c, y = r``), so "a pixel
lies inside a ring" means its centre does, the rule by which polygons are filled back into labels
(``skimage.draw.polygon``, QuPath, GDAL rasterisation).
"""

from __future__ import annotations

import numpy as np

# The pixel centres a removal is checked against lie in the removed triangle's bounding box: at
# most this many whole numbers per axis (a vertex whose triangle spans more is kept).
_LATTICE_SPAN = 4


def on_grid(values: np.ndarray, step: float) -> np.ndarray:
    """``values`` rounded to the nearest multiple of ``step`` (a power of two, e.g. 1/8, so that the
    results are exact binary fractions), except that a value is never moved onto a whole number it
    is not on: it then goes one step further, to its own side. So every coordinate keeps its side of
    every row and column of pixel centres (values on one stay on it) and moves by at most ``step``
    (half of it mostly).

    >>> on_grid(np.array([3.06, 2.97, 3.0, 1.4999, -0.03, 12.34]), 1 / 8).tolist()
    [3.125, 2.875, 3.0, 1.5, -0.125, 12.375]
    """
    values = np.asarray(values, dtype=np.float64)
    rounded = np.rint(values / step) * step
    onto_whole = (rounded == np.rint(rounded)) & (rounded != values)
    return np.where(onto_whole, rounded + np.sign(values - rounded) * step, rounded)


def _ring_links(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each vertex's ring, its successor and its predecessor (wrapping within its ring)."""
    counts = np.diff(offsets)
    ring = np.repeat(np.arange(len(counts)), counts)
    idx = np.arange(int(offsets[-1]))
    nxt, prv = idx + 1, idx - 1
    has = counts > 0
    nxt[offsets[1:][has] - 1] = offsets[:-1][has]
    prv[offsets[:-1][has]] = offsets[1:][has] - 1
    return ring, nxt, prv


def _side(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Twice the signed area of (a, b, p): > 0 when p is left of a→b."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _segment_distance(
    ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray, px: np.ndarray, py: np.ndarray
) -> np.ndarray:
    """Distance from each point p to the segment a–b (of nonzero length)."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


def _holds_pixel_centre(
    ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray, cx: np.ndarray, cy: np.ndarray
) -> np.ndarray:
    """Whether each closed triangle (a, b, c) holds a point of whole coordinates (or spans more
    than ``_LATTICE_SPAN`` of them per axis, where the answer is taken as yes)."""
    x0 = np.ceil(np.minimum(np.minimum(ax, bx), cx))
    x1 = np.floor(np.maximum(np.maximum(ax, bx), cx))
    y0 = np.ceil(np.minimum(np.minimum(ay, by), cy))
    y1 = np.floor(np.maximum(np.maximum(ay, by), cy))
    none = (x1 < x0) | (y1 < y0)  # no whole x or no whole y in the box: most small triangles
    holds = ~none & ((x1 - x0 >= _LATTICE_SPAN) | (y1 - y0 >= _LATTICE_SPAN))
    some = np.flatnonzero(~none & ~holds)
    ax, ay, bx, by, cx, cy = ax[some], ay[some], bx[some], by[some], cx[some], cy[some]
    x0, x1, y0, y1 = x0[some], x1[some], y0[some], y1[some]
    turn = np.sign(_side(ax, ay, bx, by, cx, cy))
    found = np.zeros(len(some), dtype=bool)
    for dx in range(_LATTICE_SPAN):
        for dy in range(_LATTICE_SPAN):
            k = np.flatnonzero((x0 + dx <= x1) & (y0 + dy <= y1) & ~found)
            if len(k) == 0:
                continue
            px, py, t = x0[k] + dx, y0[k] + dy, turn[k]
            found[k] = (
                (_side(ax[k], ay[k], bx[k], by[k], px, py) * t >= 0)
                & (_side(bx[k], by[k], cx[k], cy[k], px, py) * t >= 0)
                & (_side(cx[k], cy[k], ax[k], ay[k], px, py) * t >= 0)
            )
    holds[some] = found
    return holds


def _drop_cost(
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    v: np.ndarray,
    q: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """The cost of dropping each vertex ``v`` between its neighbours ``p`` and ``q`` (indices into
    its ring, which starts at ``start`` and has ``length`` vertices): twice the area of the
    triangle (p, v, q), or inf where the triangle holds a pixel centre or a vertex of the ring's
    original course between p and q lies farther than ``tolerance`` from the edge p–q."""
    ax, ay, bx, by, cx, cy = x[p], y[p], x[v], y[v], x[q], y[q]
    ok = (np.hypot(cx - ax, cy - ay) > 0) & ~_holds_pixel_centre(ax, ay, bx, by, cx, cy)
    k = np.flatnonzero(ok)
    gap = (q[k] - p[k]) % length[k] - 1  # the original vertices strictly between p and q (v among them)
    first = np.cumsum(gap) - gap
    owner = np.repeat(np.arange(len(k)), gap)
    step = np.arange(int(gap.sum())) - first[owner] + 1
    j = start[k][owner] + (p[k][owner] - start[k][owner] + step) % length[k][owner]
    o = k[owner]
    off = _segment_distance(ax[o], ay[o], cx[o], cy[o], x[j], y[j])
    if len(k):
        ok[k] = np.maximum.reduceat(off, first) <= tolerance
    return np.where(ok, np.abs(_side(ax, ay, bx, by, cx, cy)), np.inf)


def simplify_keeping_pixels(x: np.ndarray, y: np.ndarray, offsets: np.ndarray, tolerance: float) -> np.ndarray:
    """Which vertices of flat rings to keep (a boolean mask): vertices are dropped one at a time
    while (1) the triangle a drop cuts off or adds (the vertex and its two neighbours) holds no
    pixel centre, edges included, so the pixels whose centres lie inside the ring are exactly those
    of the ring given, and (2) every vertex dropped so far between the two neighbours lies within
    ``tolerance`` px of the new edge. The cheapest drops (smallest triangle) go first; a ring keeps
    at least three vertices and one of fewer than four is kept whole.

    Parameters
    ----------
    x, y : np.ndarray
        Vertex coordinates of all rings, one after the other, in pixels (pixel centres on whole
        numbers); a ring is not closed by repeating its first vertex.
    offsets : np.ndarray
        Start of each ring in ``x`` and ``y``, and their length last: ring i is
        ``offsets[i]:offsets[i + 1]``.
    tolerance : float
        Largest distance of a dropped vertex from the edge that replaces it, in pixels.

    Returns
    -------
    np.ndarray
        Bool mask over the vertices, True where kept.

    Examples
    --------
    >>> # the traced outline of the pixels (x=0, y=0..2): its right and left sides become one
    >>> # edge each, the ends stay (each end's diagonal edges pass next to a pixel centre)
    >>> x = np.array([0, 0.5, 0.5, 0.5, 0, -0.5, -0.5, -0.5])
    >>> y = np.array([-0.5, 0, 1, 2, 2.5, 2, 1, 0])
    >>> simplify_keeping_pixels(x, y, np.array([0, 8]), 0.5).tolist()
    [True, False, False, True, True, False, False, True]
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    ring, nxt, prv = _ring_links(offsets)
    keep = np.ones(len(x), dtype=bool)
    left = counts.copy()  # vertices each ring still has
    start, length = offsets[:-1][ring], counts[ring]
    cost = np.full(len(x), np.inf)  # of dropping each vertex now; inf where it must stay
    dirty = length >= 4  # vertices whose neighbours changed: their cost is recomputed
    while True:
        cand = np.flatnonzero(dirty)
        if len(cand):
            cost[cand] = _drop_cost(x, y, prv[cand], cand, nxt[cand], start[cand], length[cand], tolerance)
        # drop an independent set: each vertex cheaper than both neighbours (ties to the lower index)
        live = np.flatnonzero(cost < np.inf)
        p, q = prv[live], nxt[live]
        mine, cp, cq = cost[live], cost[p], cost[q]
        picked = live[((mine < cp) | ((mine == cp) & (live < p))) & ((mine < cq) | ((mine == cq) & (live < q)))]
        # never below three vertices: in each ring, the first ``left - 3`` picks only
        r = ring[picked]
        picked = picked[np.arange(len(picked)) - np.searchsorted(r, r) < left[r] - 3]
        if len(picked) == 0:
            break
        keep[picked] = False
        cost[picked] = np.inf
        np.subtract.at(left, ring[picked], 1)
        before, after = prv[picked], nxt[picked]
        nxt[before], prv[after] = after, before
        dirty = np.zeros(len(x), dtype=bool)
        dirty[before] = dirty[after] = True
    return keep


def stored_rings(
    x: np.ndarray, y: np.ndarray, offsets: np.ndarray, step: float, tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat rings as they are stored: vertices :func:`on_grid` of ``step``, then
    :func:`simplify_keeping_pixels` within ``tolerance``. Returns (x, y, offsets).

    Parameters
    ----------
    x, y : np.ndarray
        Vertex coordinates of all rings, one after the other, in pixels (level-0 px in the
        outputs); a ring is not closed by repeating its first vertex.
    offsets : np.ndarray
        Start of each ring in ``x`` and ``y``, and their length last: ring i is
        ``offsets[i]:offsets[i + 1]``.
    step : float
        Grid the vertices are rounded to, in pixels (a power of two, e.g. 1/8).
    tolerance : float
        Largest distance of a dropped vertex from the edge that replaces it, in pixels.

    Returns
    -------
    x, y : np.ndarray
        The kept vertices, on the grid.
    offsets : np.ndarray
        int64 start of each ring in them, and their length last.
    """
    gx, gy = on_grid(x, step), on_grid(y, step)
    offsets = np.asarray(offsets, dtype=np.int64)
    keep = simplify_keeping_pixels(gx, gy, offsets, tolerance)
    counts = np.bincount(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[keep], minlength=len(offsets) - 1)
    kept = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(counts, out=kept[1:])
    return gx[keep], gy[keep], kept
