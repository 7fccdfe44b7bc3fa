"""The compiled-speed outline tracer against scikit-image's ``find_contours``.

The reference outline of a nucleus (``find_contours_outline``) is ``skimage.measure.find_contours``
at the half level on the nucleus' bounding-box crop, the longest contour, its repeated end vertex
dropped, then the vertices that lie on the line through their neighbours dropped. The tracer must
give the same rings: the same vertices in the same order from the same start (so ``nuclei.csv`` and
``nuclei.geojson`` keep their bytes), which the tests check exactly and, as the bound the tracer
promises, as a symmetric Hausdorff distance of at most 0.5 px. Moments are checked against
``skimage.measure.regionprops``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.ndimage as ndi
from scipy.spatial.distance import directed_hausdorff

from pipeline.io.outputs.schema import NUCLEI_SCHEMA, OUTLINE_STEP_PX, OUTLINE_TOLERANCE_PX
from pipeline.kernels.features import (
    nucleus_moments,
    nucleus_outlines,
    outline_arrays,
    outline_perimeters,
    polygon_perimeter,
)
from pipeline.kernels.outlines import on_grid, simplify_keeping_pixels, stored_rings


def find_contours_outline(mask: np.ndarray) -> np.ndarray:
    """scikit-image's outline of one boolean nucleus mask (row, col; no repeated end vertex, no
    vertex on the straight line through its neighbours)."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if not contours:
        return np.zeros((0, 2))
    ring = max(contours, key=len)
    if len(ring) > 1 and (ring[0] == ring[-1]).all():
        ring = ring[:-1]
    if len(ring) >= 4:
        step = np.diff(ring, axis=0, append=ring[:1])
        before = np.roll(step, 1, axis=0)
        keep = np.abs(before[:, 0] * step[:, 1] - before[:, 1] * step[:, 0]) > 1e-9
        ring = ring[keep] if keep.sum() >= 3 else ring
    return ring - 1.0


def reference_outlines(labels: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """``find_contours_outline`` of each id on its bounding box, in the label image's coordinates."""
    boxes = ndi.find_objects(labels)
    out = []
    for i in ids:
        box = boxes[int(i) - 1] if int(i) <= len(boxes) else None
        if box is None:
            out.append(np.zeros((0, 2)))
            continue
        out.append(find_contours_outline(labels[box] == i) + [box[0].start, box[1].start])
    return out


def reference_perimeter(ring: np.ndarray) -> float:
    """The closed ring's length: the sum of its edges' Euclidean lengths."""
    if len(ring) < 2:
        return 0.0
    return float(np.hypot(*np.diff(np.vstack([ring, ring[:1]]), axis=0).T).sum())


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance between two rings' vertex sets (px)."""
    return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])


def touching_nuclei(seed: int, side: int = 160, spacing: int = 11) -> np.ndarray:
    """Watershed-separated touching blobs of random shape: the label images the pipeline makes."""
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((side, side)), 2.0)
    fg = field > np.quantile(field, 0.35)
    n = (side // spacing) ** 2
    markers = np.zeros((side, side), dtype=np.int32)
    markers[rng.integers(0, side, n), rng.integers(0, side, n)] = np.arange(1, n + 1)
    labels = watershed(-field, markers, mask=fg)
    return labels.astype(np.int32)


def awkward_labels() -> np.ndarray:
    """Single pixels, diagonal-only contacts (saddles), a hole, one id in several pieces, a ring,
    thin lines and spurs, and nuclei on every edge of the image."""
    lab = np.zeros((40, 48), dtype=np.int32)
    lab[5, 5] = 1  # one pixel
    lab[10, 10] = lab[11, 11] = lab[12, 12] = 2  # diagonal chain: three 4-separated pieces
    lab[2:9, 14:21] = 3
    lab[5, 17] = 0  # a hole
    lab[15:18, 2:5] = 4
    lab[25:28, 2:5] = 4  # the same id twice, equal size (ties go to the first)
    lab[30:33, 2:6] = 4  # and a larger third piece
    lab[14:23, 14:23] = 5
    lab[16:21, 16:21] = 0  # a ring (outer and inner contour)
    lab[18, 18] = 6  # inside the ring
    lab[0:3, 30:40] = 7  # on the top edge
    lab[30:40, 44:48] = 8  # bottom right corner
    lab[20, 30:42] = 9  # a one-pixel line
    lab[21:26, 35] = 9  # with a spur
    lab[26, 36] = 9  # and a diagonal step
    lab[30:35, 20:25] = 10
    lab[32, 25:28] = 10  # a thin tongue
    lab[30:35, 25] = 11  # touching 10
    lab[35, 26] = 12  # diagonal to 11
    lab[10:14, 30:34] = 13
    lab[11:13, 34] = 13
    lab[12, 30] = 0  # a notch
    lab[36:40, 10:14] = 14  # bottom edge
    lab[6:9, 40:48] = 15  # right edge
    lab[6:8, 38:40] = 16  # touching 15
    return lab


def check_same(labels: np.ndarray, ids: np.ndarray) -> None:
    old = reference_outlines(labels, ids)
    new = nucleus_outlines(labels, ids)
    assert len(new) == len(old)
    for i, a, b in zip(ids, old, new, strict=True):
        if len(a) == 0:
            assert len(b) == 0, i
            continue
        assert hausdorff(a, b) <= 0.5, i  # the promised bound …
        np.testing.assert_array_equal(b, a, err_msg=f"label {i}")  # … met exactly: same vertices, order, start
        assert polygon_perimeter(b) == reference_perimeter(a)  # bit for bit
    perimeters = outline_perimeters(*outline_arrays(labels, ids))
    assert perimeters.tolist() == [reference_perimeter(a) for a in old]  # all rings at once, bit for bit


def test_awkward_shapes_trace_as_before() -> None:
    labels = awkward_labels()
    check_same(labels, np.arange(1, labels.max() + 1))


@pytest.mark.parametrize("seed", range(6))
def test_touching_nuclei_trace_as_before(seed: int) -> None:
    labels = touching_nuclei(seed)
    ids = np.unique(labels)[1:]
    check_same(labels, ids)
    # a subset of ids (the owned ones), ids that do not occur, and uint32 labels
    rng = np.random.default_rng(seed)
    some = np.sort(rng.choice(ids, size=len(ids) // 2, replace=False))
    check_same(labels.astype(np.uint32), some)
    missing = np.array([labels.max() + 5]) if labels.max() < 2**20 else np.array([], dtype=np.int64)
    assert [len(r) for r in nucleus_outlines(labels, missing)] == [0] * len(missing)


def test_random_noise_labels_trace_as_before() -> None:
    """Speckle: many saddles, holes and multi-piece ids."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, size=(30, 34)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 0
    check_same(labels, np.arange(1, 6))


def test_flat_arrays_and_empty_input() -> None:
    labels = awkward_labels()
    ids = np.array([3, 1, 9])
    rows, cols, offsets = outline_arrays(labels, ids)
    rings = reference_outlines(labels, ids)
    assert offsets.tolist() == np.cumsum([0] + [len(r) for r in rings]).tolist()
    np.testing.assert_array_equal(rows, np.concatenate([r[:, 0] for r in rings]))
    np.testing.assert_array_equal(cols, np.concatenate([r[:, 1] for r in rings]))
    rows, cols, offsets = outline_arrays(np.zeros((8, 8), dtype=np.int32), np.array([], dtype=np.int64))
    assert len(rows) == len(cols) == 0 and offsets.tolist() == [0]
    assert len(outline_perimeters(rows, cols, offsets)) == 0
    assert nucleus_outlines(labels, np.array([], dtype=np.int64)) == []
    rows, cols, offsets = outline_arrays(np.zeros((8, 8), dtype=np.int32), np.array([1, 2]))  # no nuclei at all
    assert offsets.tolist() == [0, 0, 0] and outline_perimeters(rows, cols, offsets).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("seed", range(3))
def test_moments_are_regionprops(seed: int) -> None:
    """Area, centroid and mean intensity are regionprops' (float64 sums: within 1e-12 relative);
    the eccentricity is that of regionprops' inertia tensor with the 1/12 pixel-area term added to
    both eigenvalues (so that one-pixel-wide nuclei stay finite). An id that does not occur gets
    area 0."""
    from skimage.measure import regionprops

    labels = touching_nuclei(seed)
    missing = labels.max() // 2
    labels[labels == missing] = 0
    intensity = np.random.default_rng(seed).random(labels.shape).astype(np.float32)
    moments = nucleus_moments(labels, intensity)
    assert len(moments["area"]) == labels.max() and moments["area"][missing - 1] == 0
    props = regionprops(labels, intensity_image=intensity.astype(np.float64))
    at = np.array([p.label for p in props]) - 1
    np.testing.assert_array_equal(moments["area"][at], [p.area for p in props])
    np.testing.assert_allclose(moments["row"][at], [p.centroid[0] for p in props], rtol=1e-12)
    np.testing.assert_allclose(moments["col"][at], [p.centroid[1] for p in props], rtol=1e-12)
    np.testing.assert_allclose(moments["mean_intensity"][at], [p.intensity_mean for p in props], rtol=1e-12)
    l1, l2 = np.array([p.inertia_tensor_eigvals for p in props]).T + 1 / 12
    np.testing.assert_allclose(moments["eccentricity"][at], np.sqrt(1 - l2 / l1), rtol=1e-9, atol=1e-12)
    empty = nucleus_moments(np.zeros((5, 5), dtype=np.int32), np.zeros((5, 5), dtype=np.float32))
    assert all(len(v) == 0 for v in empty.values())


def expected_tile_table(labels: np.ndarray, h_map: np.ndarray, grid, tile, mpp: float) -> pa.Table:  # type: ignore[no-untyped-def]
    """A tile's nucleus table from its definition: the nuclei whose centroid lies in the tile's
    core, numbered 1..n; areas from the pixel counts at the model's resolution; scikit-image's
    outlines (``reference_outlines``) in level-0 px, stored as the outputs store them
    (``stored_rings``), the perimeter that of the unsimplified ring; centroids on the same grid."""
    moments = nucleus_moments(labels, h_map)  # regionprops' figures (test_moments_are_regionprops)
    x, y = grid.to_level0(tile[0], tile[1], moments["row"], moments["col"])
    cx0, cy0, cx1, cy1 = grid.core(*tile)
    owned = (moments["area"] > 0) & (x >= cx0 - 0.5) & (x < cx1 - 0.5) & (y >= cy0 - 0.5) & (y < cy1 - 0.5)
    sel = np.nonzero(owned)[0]
    rings = reference_outlines(labels, sel + 1)
    level0 = [np.stack(grid.to_level0(tile[0], tile[1], r[:, 0], r[:, 1]), axis=1) for r in rings]
    flat = np.concatenate([r.ravel() for r in level0]) if level0 else np.zeros(0)
    offsets = np.r_[0, np.cumsum([len(r) for r in level0])].astype(np.int64)
    sx, sy, kept = stored_rings(flat[0::2], flat[1::2], offsets, OUTLINE_STEP_PX, OUTLINE_TOLERANCE_PX)
    area_um2 = moments["area"][sel] * (grid.scale * mpp) ** 2
    return pa.table(
        {
            "id": pa.array(np.arange(1, len(sel) + 1, dtype=np.uint32)),
            "centroid_x": on_grid(x[sel], OUTLINE_STEP_PX),
            "centroid_y": on_grid(y[sel], OUTLINE_STEP_PX),
            "area_px": area_um2 / mpp**2,
            "area_um2": area_um2,
            "perimeter_px": np.array([reference_perimeter(r) * grid.scale for r in rings], dtype=np.float64),
            "eccentricity": moments["eccentricity"][sel],
            "mean_haematoxylin": moments["mean_intensity"][sel],
            "polygon": pa.ListArray.from_arrays(
                pa.array(2 * np.asarray(kept), pa.int32()), pa.array(np.stack([sx, sy], axis=1).ravel())
            ),
        },
        schema=NUCLEI_SCHEMA,
    )


@pytest.mark.parametrize("slide_mpp", [0.25, 0.5])
def test_tile_table_is_its_definition(slide_mpp: float) -> None:
    """A tile's nucleus table (what every output is written from) equals ``expected_tile_table``."""
    from pipeline.slide.segment import tile_nuclei
    from pipeline.tiling import TileGrid

    grid = TileGrid.for_slide(400, 300, slide_mpp, 0.25, 96, 32)
    labels = touching_nuclei(1, side=grid.model_side)
    h_map = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    for tile in [(0, 0), (1, 1)]:
        new, local = tile_nuclei(labels, h_map, grid, tile, slide_mpp)
        expected = expected_tile_table(labels, h_map, grid, tile, slide_mpp)
        assert new.num_rows == expected.num_rows > 5
        assert new.equals(expected)
        assert int(local.max()) == new.num_rows


@pytest.mark.parametrize("slide_mpp", [0.25, 0.5])
def test_tiles_cut_at_the_slide_edge_as_before(slide_mpp: float) -> None:
    """Cutting a window at the slide's edge keeps the ids; the tile's table and its label window
    (local ids) are what a cut that renumbers (``remove_small_labels`` of the masked window) gives."""
    from pipeline.kernels.nuclei import remove_small_labels
    from pipeline.slide.segment import cut_at_slide_edge, tile_nuclei
    from pipeline.tiling import TileGrid

    grid = TileGrid.for_slide(250, 170, slide_mpp, 0.25, 96, 32)
    labels = touching_nuclei(4, side=grid.model_side)
    h_map = np.random.default_rng(4).random(labels.shape).astype(np.float32)
    edge_tiles = 0
    for tile in grid.tiles_over(np.ones((4, 4), dtype=bool), 1000.0):
        rows, cols = grid.inside_slide(*tile)
        inside = rows.all() and cols.all()
        old_cut = labels if inside else remove_small_labels(np.where(rows[:, None] & cols[None, :], labels, 0), 20)
        new_cut = cut_at_slide_edge(labels, grid, tile, 20)
        edge_tiles += not inside
        old, old_local = tile_nuclei(old_cut, h_map, grid, tile, slide_mpp)
        new, new_local = tile_nuclei(new_cut, h_map, grid, tile, slide_mpp)
        assert new.equals(old)
        np.testing.assert_array_equal(new_local[new_cut], old_local[old_cut])
    assert edge_tiles >= 3


def test_on_grid_keeps_every_value_on_its_side_of_every_pixel_centre() -> None:
    rng = np.random.default_rng(0)
    values = np.r_[rng.uniform(-3, 4000, 100_000), np.arange(-2, 40) / 8, np.arange(40) + 0.97, np.arange(40) + 0.03]
    stored = on_grid(values, 1 / 8)
    assert np.array_equal(stored * 8, np.rint(stored * 8))  # multiples of 1/8
    near_whole = np.abs(values - np.rint(values)) < 1 / 16
    assert np.abs(stored - values)[~near_whole].max() <= 1 / 16  # half a step
    assert np.abs(stored - values)[near_whole].max() <= 3 / 16  # or a step further, off a whole pixel
    np.testing.assert_array_equal(np.floor(stored), np.floor(values))
    np.testing.assert_array_equal(stored == np.rint(stored), values == np.rint(values))


def filled(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside a ring (as labels are drawn from polygons)."""
    from skimage.draw import polygon as fill

    mask = np.zeros(shape, dtype=bool)
    rr, cc = fill(y, x, shape=shape)
    mask[rr, cc] = True
    return mask


# level-0 px per model px: a 40x slide at the model's 0.25 µm, a 20x slide, a 40x scan at 0.2527 µm
@pytest.mark.parametrize("scale", [1.0, 0.25 / 0.499, 0.25 / 0.2527])
def test_stored_outlines_cover_the_same_pixels_within_the_tolerance(scale: float) -> None:
    """Outlines traced on the model's grid, in a slide's level-0 px: once stored (1/8 px, simplified)
    each covers exactly the pixels its traced outline on the 1/8 px grid covers, stays within the
    tolerance of it, is a valid polygon, and has far fewer vertices at 20x."""
    shapely = pytest.importorskip("shapely")
    labels = touching_nuclei(7, side=200)
    ids = np.unique(labels)[1:]
    rows, cols, offsets = outline_arrays(labels, ids)
    x, y = (cols + 0.5) * scale - 0.5 + 3.3, (rows + 0.5) * scale - 0.5 + 1.1
    gx, gy = on_grid(x, OUTLINE_STEP_PX), on_grid(y, OUTLINE_STEP_PX)
    sx, sy, kept = stored_rings(x, y, offsets, OUTLINE_STEP_PX, OUTLINE_TOLERANCE_PX)
    shape = (int(labels.shape[0] * scale) + 8, int(labels.shape[1] * scale) + 8)
    assert np.abs(np.r_[gx - x, gy - y]).max() <= 3 / 16
    for k in range(len(ids)):
        a, b = slice(offsets[k], offsets[k + 1]), slice(kept[k], kept[k + 1])
        assert np.array_equal(filled(sx[b], sy[b], shape), filled(gx[a], gy[a], shape)), ids[k]
        ring = shapely.Polygon(np.stack([sx[b], sy[b]], axis=1))
        assert ring.is_valid, ids[k]
        off = shapely.distance(shapely.points(np.stack([gx[a], gy[a]], axis=1)), ring.exterior)
        assert off.max() <= OUTLINE_TOLERANCE_PX + 1e-9, ids[k]
    assert set(np.flatnonzero(np.isin(np.r_[sx], gx))) == set(range(len(sx)))  # kept vertices: gridded ones
    fewer = np.diff(kept).sum() / np.diff(offsets).sum()
    assert fewer < (0.6 if scale < 0.9 else 0.9), fewer


def test_simplify_keeps_short_rings_and_drops_what_carries_no_pixel() -> None:
    square = (np.array([0.5, 1.5, 1.5, 0.5]), np.array([0.5, 0.5, 1.5, 1.5]))  # around pixel (1, 1)
    assert simplify_keeping_pixels(*square, np.array([0, 4]), 5.0).tolist() == [True] * 4
    triangle = (np.array([0.0, 4, 4]), np.array([0.0, 0, 3]))
    assert simplify_keeping_pixels(*triangle, np.array([0, 3]), 5.0).all()
    # a 10 px long rectangle with a vertex in the middle of each long side: those go
    x = np.array([-0.5, 4.5, 9.5, 9.5, 4.5, -0.5])
    y = np.array([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5])
    assert simplify_keeping_pixels(x, y, np.array([0, 6]), 0.5).tolist() == [True, False, True, True, False, True]
    # … but not when the tolerance is zero and the vertex sticks out, nor over a pixel centre
    y_bump = y + np.array([0, -0.25, 0, 0, 0, 0])
    assert simplify_keeping_pixels(x, y_bump, np.array([0, 6]), 0.2).tolist()[1] is True
    x_empty, offsets = np.zeros(0), np.array([0, 0])
    assert simplify_keeping_pixels(x_empty, x_empty, offsets, 0.5).tolist() == []
