"""From the U-net's probability maps to nucleus instances (the paper's post-processing; with a
four-output model, the horizontal and vertical distance maps help part touching nuclei).

Pure array functions: numpy in → numpy out on the CPU; cupy in → cupy out on the GPU
(dispatch by array type, see :mod:`pipeline.kernels.dispatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_type_hints

import numpy as np

from pipeline.kernels.dispatch import array_module, is_device_array, ndimage_module

# The model's output channels (the contract): centre and material, or also the horizontal and
# vertical distance maps.
OUTPUT_CHANNELS = (2, 4)


@dataclass(frozen=True)
class NucleusThresholds:
    """Post-processing parameters. Defaults are the original system's values;
    a shipped model carries its own tuned values in its ONNX metadata."""

    centre_sigma: float = 1.0  # blur of the centre (detection) map, px at model resolution
    centre_threshold: float = 0.07  # detection threshold on the blurred centre map
    # second, lower detection threshold: a region above it holding no core above centre_threshold
    # is a (weak) core of its own; ≥ centre_threshold = no weak cores (the original system)
    centre_weak_threshold: float = 1.0
    material_sigma: float = 0.5  # blur of the nuclear-material map
    material_threshold: float = 0.33  # foreground threshold on the blurred material map
    min_area_px: int = 20  # objects smaller than this (px at model resolution) are dropped
    # objects whose score (mean nuclear-material probability × peak centre probability, both
    # unblurred) is below this are dropped: fragments and cytoplasm the network half believes in;
    # 0 = none dropped (models without the key)
    min_nucleus_score: float = 0.0
    # the watershed floods −(material + w · centre), both blurred: with w > 0 the centre map's
    # valleys between two cores become the border of touching nuclei; 0 = material only
    centre_surface_weight: float = 0.0
    # four-output models: the centre map the seeds and the watershed read is lowered by this times
    # the fall of the distance maps (:func:`distance_edges`), high where two touching nuclei meet;
    # 0 = the centre map as it is (two-output models)
    distance_weight: float = 0.0

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> NucleusThresholds:
        """Read thresholds from ONNX metadata_props (keys = field names); missing keys keep defaults."""
        kwargs: dict[str, Any] = {}
        for name, kind in get_type_hints(cls).items():
            if name in meta:
                kwargs[name] = int(float(meta[name])) if kind is int else float(meta[name])
        return cls(**kwargs)


def distance_edges(prob: Any) -> Any:
    """Where a four-output model's distance maps say one nucleus ends and the next begins: the
    larger of −∂h/∂x and −∂v/∂y (Sobel, per pixel; 0 where both rise) of the horizontal and
    vertical maps (channels 2 and 3, stored as (d + 1) / 2 of d in [-1, 1]). Across a nucleus the
    maps rise from −1 to +1 (about 0.1 per px for one 20 px across: no edge); where two nuclei
    touch they fall from +1 to −1 (≈ 1 per px). Only the fall counts, so a steep nucleus' own
    rise is never taken for a border.

    >>> prob = np.full((4, 1, 18), 0.5, np.float32)
    >>> prob[2, 0] = np.tile(np.linspace(0, 1, 9), 2)  # two nuclei 9 px wide, side by side
    >>> [round(float(e), 2) for e in distance_edges(prob)[0, 6:12]]
    [0.0, 0.0, 0.88, 0.88, 0.0, 0.0]
    """
    xp, ndi = array_module(prob), ndimage_module(prob)
    h = 2 * prob[2].astype(xp.float32) - 1
    v = 2 * prob[3].astype(xp.float32) - 1
    # a Sobel filter is 8× the central difference per px (a 2-px step, weights 1-2-1)
    falls = xp.maximum(-ndi.sobel(h, axis=1), -ndi.sobel(v, axis=0)) / 8
    return xp.maximum(falls, xp.float32(0))


def separated_centre(prob: Any, weight: float) -> Any:
    """The centre map (channel 0) less ``weight`` × :func:`distance_edges`, clipped at 0: the
    cores of two touching nuclei part where the distance maps say one ends and the other begins.
    ``weight`` 0, or a two-output model: the centre map itself."""
    xp = array_module(prob)
    centre = prob[0].astype(xp.float32, copy=False)
    if weight <= 0 or prob.shape[0] < 4:
        return centre
    return xp.maximum(centre - xp.float32(weight) * distance_edges(prob), xp.float32(0))


def seeds_from_centres(centre: Any, foreground: Any, params: NucleusThresholds) -> Any:
    """One integer seed per connected component of the thresholded, blurred centre map (a core);
    one per component above the lower ``centre_weak_threshold`` that holds no core (a weak core:
    a faint nucleus, or one whose centre response a brighter neighbour's does not reach); and one
    at the centre-map maximum of every foreground component that still has none.

    ``centre``: float map in [0, 1]; ``foreground``: bool mask. Returns int32 markers
    (0 = no seed), numbered 1..n.
    """
    markers, n, blurred = core_seeds(centre, foreground, params)
    return seed_lone_components(markers, n, blurred, foreground)


def core_seeds(centre: Any, foreground: Any, params: NucleusThresholds) -> tuple[Any, int, Any]:
    """The cores and weak cores of :func:`seeds_from_centres` (not the seeds of foreground
    components holding neither): int32 markers numbered 1..n, n, and the blurred centre map."""
    xp, ndi = array_module(centre), ndimage_module(centre)
    blurred = ndi.gaussian_filter(centre.astype(xp.float32, copy=False), params.centre_sigma)
    detected = (blurred > params.centre_threshold) & foreground
    markers, n = ndi.label(detected)
    markers = markers.astype(xp.int32, copy=False)
    if params.centre_weak_threshold < params.centre_threshold:
        weak, n_weak = ndi.label((blurred > params.centre_weak_threshold) & foreground)
        lone = xp.ones(int(n_weak) + 1, dtype=bool)  # weak components holding no core
        lone[0] = False
        lone[weak[markers > 0]] = False
        # n+1, n+2 … in raster order, as label() numbers; 0 for the others, which keep their cores
        new_id = xp.where(lone, xp.cumsum(lone) + int(n), 0).astype(xp.int32)
        markers = markers + new_id[weak]  # a lone component holds no core: markers are 0 there
        n = int(n) + int(lone.sum())
    return markers, int(n), blurred


def seed_lone_components(markers: Any, n: int, blurred: Any, foreground: Any) -> Any:
    """``markers`` (numbered 1..n) plus a seed at the blurred centre-map maximum of every
    foreground component holding none, numbered n+1… in the components' raster order.

    Parameters
    ----------
    markers : array
        int32 seed map (numpy or cupy), seeds numbered 1..n, 0 elsewhere; written in place.
    n : int
        Number of seeds in ``markers``.
    blurred : array
        The blurred centre map, same shape; each new seed goes to its component's maximum (the
        first in raster order on ties).
    foreground : array
        Bool foreground mask, same shape.

    Returns
    -------
    array
        ``markers``, with the new seeds.
    """
    xp, ndi = array_module(markers), ndimage_module(markers)
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


def watershed_from_seeds(surface: Any, markers: Any, mask: Any, lone_after: int | None = None) -> Any:
    """Marker-driven watershed of ``surface`` restricted to ``mask`` (4-connectivity): every mask
    pixel a seed reaches takes that seed's marker id; the rest stay 0.

    ``lone_after`` (CPU; markers numbered 1..``lone_after``): every mask component holding no
    seed is labelled too, numbered ``lone_after`` + 1… in raster order: what seeding it at any of
    its pixels (:func:`seed_lone_components`) and flooding gives, without labelling the mask's
    components (such a component is a basin, below, that no seed borders).

    CPU: flooding only where it decides something. The mask less its seed pixels falls apart into
    *basins* (:func:`contested_basins`); the flood enters a basin only from the seed pixels around
    it and never leaves it, so a basin bordered by one seed is that seed's outright, and
    scikit-image floods only the basins bordered by several seeds (the gaps between touching
    nuclei: a few thousand of a tile's pixels), each on its own box with the seed pixels there
    (side by side on one canvas where that gives the same labels, :func:`flood_gaps`).
    Same result as scikit-image's flood of the whole mask wherever the seed pixels a basin's flood
    starts from have distinct surface values; where some are equal, scikit-image's heap takes them
    in an order that depends on everything else it holds, and a pixel between two nuclei may go the
    other way (``tests/kernels/test_nuclei.py``). Each basin's flood depends on that basin alone, so tiles
    of any size agree.
    Device arrays: the level-bucketed flood of :mod:`pipeline.kernels.level_flood`, per mask
    component, on the device.

    Parameters
    ----------
    surface : array
        2-D float array (numpy or cupy), flooded from its minima up.
    markers : array
        Int seed map of the same shape: marker ids > 0, 0 elsewhere; seeds outside ``mask`` are
        ignored.
    mask : array
        Bool mask of the same shape (the foreground); pixels outside it stay 0.
    lone_after : int or None, optional
        CPU only: the highest marker id; mask components without a seed are then labelled too,
        from ``lone_after`` + 1. None leaves them 0.

    Returns
    -------
    array
        int32 labels of the same shape and array module, 0 = background.
    """
    if is_device_array(surface):
        from pipeline.kernels.level_flood import flood_components

        return flood_components(surface, markers, mask)
    seeds = np.where(mask, markers, 0).astype(np.int32, copy=False)
    basins, bordering, contested = contested_basins(seeds, mask)
    outright = np.where(contested, 0, bordering)  # per basin: its one seed's id; 0 where none borders it
    if lone_after is not None:
        lone = bordering == 0  # a mask component holding no seed
        lone[0] = False
        outright[lone] = np.arange(lone_after + 1, lone_after + 1 + int(lone.sum()), dtype=outright.dtype)
    labels = seeds + outright.take(basins)  # take: 2/3 the time of an index here
    if not contested.any():
        return labels
    number = np.zeros(contested.shape[0], dtype=np.int32)
    number[contested] = np.arange(1, int(contested.sum()) + 1, dtype=np.int32)
    flood_gaps(surface, seeds, number.take(basins), labels)  # the contested basins, numbered 1..k
    return labels


# Basins flooded side by side: each box at most SIDE_BY_SIDE_PX on a side (a larger one pays
# scikit-image's set-up once for much more flooding), laid on shelves SHELF_PX wide, on canvases
# of at most CANVAS_PX pixels: what they hold stays bounded however many basins a tile has.
SIDE_BY_SIDE_PX = 64
SHELF_PX = 512
CANVAS_PX = 2**20


def flood_gaps(surface: np.ndarray, seeds: np.ndarray, gaps: np.ndarray, labels: np.ndarray) -> None:
    """Flood the contested basins ``gaps`` (1..k, 0 elsewhere) from the seed pixels around them
    with scikit-image, each on its box with the seed pixels there, and write their labels into
    ``labels``.

    A basin's labels depend only on the order in which scikit-image's heap takes its pixels. That
    order is fixed by their values and by when each was reached, except between seed pixels of
    equal value, which scikit-image takes in the order its heap happens to hold them. So a basin
    whose seed pixels all differ in value gets the same labels flooded beside others as on its
    own: small ones are laid out side by side on a canvas (apart by a pixel outside the mask) and
    flooded in one call, saving scikit-image's per-call set-up (~0.2 ms against ~0.02 ms of
    flooding for a basin of a few hundred pixels); a basin with tied seed values, or a large one,
    is flooded on its own box, as it always was.

    Parameters
    ----------
    surface : np.ndarray
        2-D float array, flooded from its minima up.
    seeds : np.ndarray
        int32 seed map of the same shape: marker ids > 0 inside the mask, 0 elsewhere.
    gaps : np.ndarray
        int array of the same shape: the contested basins numbered 1..k, 0 elsewhere.
    labels : np.ndarray
        int32 labels of the same shape; the basins' pixels are written in place.
    """
    import scipy.ndimage as ndi
    from skimage.segmentation import watershed

    height, width = seeds.shape
    boxes = [  # each basin's box and the seed pixels one step around it
        (slice(max(r.start - 1, 0), min(r.stop + 1, height)), slice(max(c.start - 1, 0), min(c.stop + 1, width)))
        for r, c in ndi.find_objects(gaps)
    ]
    gap_pixels, where = [], []
    for k, (rows, cols) in enumerate(boxes, start=1):
        gap = gaps[rows, cols] == k
        r, c = np.nonzero(gap)
        gap_pixels.append(gap)
        where.append((r + rows.start) * width + (c + cols.start))
    basin = np.repeat(np.arange(1, len(boxes) + 1), [len(w) for w in where])
    tied = seed_values_tie(surface, seeds, np.concatenate(where), basin, len(boxes))
    together = []
    for k, (box, gap) in enumerate(zip(boxes, gap_pixels, strict=True), start=1):
        if not tied[k] and max(gap.shape) <= SIDE_BY_SIDE_PX:
            together.append((box, gap))
            continue
        box_seeds = seeds[box]
        flooded = watershed(surface[box], box_seeds, mask=gap | (box_seeds > 0))
        labels[box][gap] = flooded[gap]
    for canvas in shelf_canvases([gap.shape for _, gap in together]):
        flood_side_by_side(surface, seeds, [together[i] for i, _ in canvas], [place for _, place in canvas], labels)


def shelf_canvases(shapes: list[tuple[int, int]]) -> list[list[tuple[int, tuple[slice, slice]]]]:
    """Boxes of ``shapes`` (each at most :data:`SHELF_PX` wide) laid left to right on shelves
    :data:`SHELF_PX` wide, a pixel apart, a new canvas once one holds :data:`CANVAS_PX` pixels:
    per canvas, (box index, place on the canvas).

    >>> [[(i, place[0].start, place[1].start) for i, place in c] for c in shelf_canvases([(3, 300), (2, 300), (4, 9)])]
    [[(0, 0, 0), (1, 4, 0), (2, 4, 301)]]
    """
    canvases: list[list[tuple[int, tuple[slice, slice]]]] = []
    canvas: list[tuple[int, tuple[slice, slice]]] = []
    row = col = tallest = 0
    for i, (h, w) in enumerate(shapes):
        if col + w > SHELF_PX:  # the next shelf
            row, col, tallest = row + tallest + 1, 0, 0
            if row * SHELF_PX >= CANVAS_PX:
                canvases.append(canvas)
                canvas, row = [], 0
        canvas.append((i, (slice(row, row + h), slice(col, col + w))))
        col, tallest = col + w + 1, max(tallest, h)
    if canvas:
        canvases.append(canvas)
    return canvases


def flood_side_by_side(
    surface: np.ndarray,
    seeds: np.ndarray,
    basins: list[tuple[tuple[slice, slice], np.ndarray]],
    places: list[tuple[slice, slice]],
    labels: np.ndarray,
) -> None:
    """Basins (box, pixels of the box that are the basin) copied with their boxes' seed pixels to
    ``places`` on one canvas, flooded by one scikit-image call, and their labels written back.

    Parameters
    ----------
    surface : np.ndarray
        2-D float array, flooded from its minima up.
    seeds : np.ndarray
        int32 seed map of the same shape, 0 = no seed.
    basins : list of ((slice, slice), np.ndarray)
        Per basin, its box in ``surface`` and the bool mask of the box's pixels that are the basin.
    places : list of (slice, slice)
        Per basin, where its box goes on the canvas (rows, columns); the canvas is
        :data:`SHELF_PX` wide.
    labels : np.ndarray
        int32 labels of the same shape as ``surface``; the basins' pixels are written in place.
    """
    from skimage.segmentation import watershed

    shape = (max(p[0].stop for p in places), SHELF_PX)
    canvas_surface = np.zeros(shape, dtype=surface.dtype)
    canvas_seeds = np.zeros(shape, dtype=seeds.dtype)
    canvas_mask = np.zeros(shape, dtype=bool)
    for (box, gap), place in zip(basins, places, strict=True):
        box_seeds = seeds[box]
        canvas_surface[place] = surface[box]
        canvas_seeds[place] = box_seeds
        canvas_mask[place] = gap | (box_seeds > 0)
    flooded = watershed(canvas_surface, canvas_seeds, mask=canvas_mask)
    for (box, gap), place in zip(basins, places, strict=True):
        labels[box][gap] = flooded[place][gap]


def seed_values_tie(surface: np.ndarray, seeds: np.ndarray, at: np.ndarray, basin: np.ndarray, k: int) -> np.ndarray:
    """Per basin 0..k: whether two of the seed pixels 4-adjacent to it have the same ``surface``
    value (False for 0). ``at``: the flat indices of the basins' pixels, ``basin``: their basins.

    Parameters
    ----------
    surface : np.ndarray
        2-D float array the basins are flooded on.
    seeds : np.ndarray
        int32 seed map of the same shape, 0 = no seed.
    at : np.ndarray
        Flat (raster) indices into ``seeds`` of the basins' pixels.
    basin : np.ndarray
        The basin (1..k) of each pixel of ``at``.
    k : int
        Number of basins.

    Returns
    -------
    np.ndarray
        Bool array of length k + 1, indexed by basin.

    Examples
    --------
    >>> seeds = np.array([[1, 0, 2, 0, 3]], np.int32)
    >>> seed_values_tie(np.array([[0.5, 0, 0.5, 0, 0.7]]), seeds, np.array([1, 3]), np.array([1, 2]), 2).tolist()
    [False, True, False]
    """
    basin = basin.astype(np.int64)
    pairs = [basin[ids > 0] * seeds.size + across[ids > 0] for across, ids in seeds_across(seeds, at)]
    key = np.unique(np.concatenate(pairs))  # each (basin, seed pixel) once
    basin, pixel = key // seeds.size, key % seeds.size
    value = surface.reshape(-1)[pixel]
    order = np.lexsort((value, basin))
    basin, value = basin[order], value[order]
    same = (basin[1:] == basin[:-1]) & (value[1:] == value[:-1])
    tied = np.zeros(k + 1, dtype=bool)
    tied[basin[1:][same]] = True
    return tied


def seeds_across(seeds: np.ndarray, at: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each of the four sides of the non-seed pixels ``at`` (flat indices): the flat index of
    the pixel across it and the seed id there (0: no seed, or off the image).

    >>> [ids.tolist() for _, ids in seeds_across(np.array([[1, 0, 2]], np.int32), np.array([1]))]
    [[2], [1], [0], [0]]
    """
    height, width = seeds.shape
    col = at % width
    sides = ((1, col == width - 1), (-1, col == 0), (width, at >= (height - 1) * width), (-width, at < width))
    out = []
    for step, off_image in sides:
        across = np.where(off_image, at, at + step)  # off the image: the pixel itself, not a seed
        out.append((across, seeds.reshape(-1).take(across)))
    return out


def contested_basins(seeds: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The basins of a seeded mask: its 4-connected regions of pixels that are not seeds.

    Returns ``basins`` (int32 H×W: basin ids 1..n, 0 on seeds and outside the mask) and, per
    basin id, ``bordering`` (the largest seed id among its pixels' 4-neighbours; 0: none) and
    ``contested`` (several seed ids among them).

    >>> seeds = np.array([[1, 0, 0, 2, 0]], np.int32)
    >>> basins, bordering, contested = contested_basins(seeds, np.ones_like(seeds, bool))
    >>> basins.tolist(), bordering.tolist(), contested.tolist()
    ([[0, 1, 1, 0, 2]], [0, 2, 2], [False, True, False])
    """
    import scipy.ndimage as ndi

    seeded = seeds > 0
    free = np.asarray(mask, dtype=bool) & ~seeded
    basins, n = ndi.label(free)
    basins = basins.astype(np.int32, copy=False)
    rim = np.zeros_like(seeded)  # basin pixels with a seed pixel among their 4-neighbours
    rim[:, :-1] |= seeded[:, 1:]
    rim[:, 1:] |= seeded[:, :-1]
    rim[:-1] |= seeded[1:]
    rim[1:] |= seeded[:-1]
    rim &= free
    at = np.flatnonzero(rim)
    basin = basins.reshape(-1)[at]
    none = np.iinfo(np.int32).max
    low = np.full(len(at), none, dtype=np.int32)  # per rim pixel: the smallest and largest seed id across its sides
    high = np.zeros(len(at), dtype=np.int32)
    for _, ids in seeds_across(seeds, at):
        np.maximum(high, ids, out=high)
        ids[ids == 0] = none
        np.minimum(low, ids, out=low)
    lowest = np.full(n + 1, none, dtype=np.int32)
    highest = np.zeros(n + 1, dtype=np.int32)
    np.minimum.at(lowest, basin, low)  # every rim pixel has a seed across some side
    np.maximum.at(highest, basin, high)
    return basins, highest, lowest < highest


def instances_from_probabilities(prob: Any, params: NucleusThresholds) -> Any:
    """Nucleus instance labels (int32, 0 = background) from a 2×H×W probability array
    (channel 0 = nucleus centre, channel 1 = nuclear material), or a 4×H×W one (channels 2 and 3:
    the horizontal and vertical distance maps, read with ``distance_weight``: :func:`separated_centre`).

    Steps, as in the original system: blur + threshold the material map → foreground; seeds from the centre
    map; watershed of −material from the seeds inside the foreground; holes filled; objects
    smaller than ``min_area_px`` dropped. Labels are renumbered 1..n in order of their seeds.

    Glass and background are skipped: the steps run on the box that can hold foreground
    (:func:`foreground_box`), with the same labels as on the whole window.
    """
    xp = array_module(prob)
    if prob.ndim != 3 or prob.shape[0] not in OUTPUT_CHANNELS:
        raise ValueError(f"expected probabilities shaped 2×H×W or 4×H×W, got {tuple(prob.shape)}")
    if params.distance_weight > 0 and prob.shape[0] != 4:
        raise ValueError(f"distance_weight {params.distance_weight} needs the distance maps of a four-output model")
    box = foreground_box(prob[1], params)
    if box is None:
        return xp.zeros(prob.shape[1:], dtype=xp.int32)
    if box == (slice(0, prob.shape[1]), slice(0, prob.shape[2])):
        return instances_in_box(prob, params)
    labels = xp.zeros(prob.shape[1:], dtype=xp.int32)
    labels[box] = instances_in_box(prob[(slice(None), *box)], params)
    return labels


def instances_in_box(prob: Any, params: NucleusThresholds) -> Any:
    """:func:`instances_from_probabilities` on the whole of ``prob``."""
    xp, ndi = array_module(prob), ndimage_module(prob)
    centre = separated_centre(prob, params.distance_weight)
    material = ndi.gaussian_filter(prob[1].astype(xp.float32, copy=False), params.material_sigma)
    foreground = material > params.material_threshold
    surface = -material
    if params.centre_surface_weight > 0:
        blurred_centre = ndi.gaussian_filter(centre, params.centre_sigma)
        surface = -(material + xp.float32(params.centre_surface_weight) * blurred_centre)
    if is_device_array(prob):
        labels = watershed_from_seeds(surface, seeds_from_centres(centre, foreground, params), foreground)
    else:  # components without a core are numbered by the watershed's basins, not labelled apart
        markers, n, _ = core_seeds(centre, foreground, params)
        labels = watershed_from_seeds(surface, markers, foreground, lone_after=n)
    labels = fill_label_holes(labels)
    labels = remove_small_labels(labels, params.min_area_px)
    if params.min_nucleus_score > 0:
        labels = remove_unlikely_labels(labels, prob, params.min_nucleus_score)
    return labels


# scipy.ndimage.gaussian_filter's (and cupyx's) default: the kernel reaches int(4·σ + 0.5) px
GAUSSIAN_TRUNCATE = 4.0


def blur_reach(sigma: float) -> int:
    """How far (px) a Gaussian blur of ``sigma`` reaches, as scipy.ndimage sizes its kernel."""
    return int(GAUSSIAN_TRUNCATE * float(sigma) + 0.5)


def foreground_box(material: Any, params: NucleusThresholds) -> tuple[slice, slice] | None:
    """The box outside which the blurred material map cannot pass the foreground threshold (its
    raw values there stay below it by 0.1%, more than float32 rounding of a blur can add) with a
    margin for both blurs, so that every step gives inside it what it gives on the whole window;
    None when no pixel can be foreground. A threshold ≤ 0 gives the whole window.

    >>> material = np.zeros((40, 50), np.float32); material[20, 30] = 1
    >>> foreground_box(material, NucleusThresholds(material_sigma=0.5, centre_sigma=1.0))
    (slice(13, 28, None), slice(23, 38, None))
    """
    xp = array_module(material)
    height, width = material.shape
    if params.material_threshold <= 0:
        return (slice(0, height), slice(0, width))
    near = material > params.material_threshold * (1 - 1e-3)
    rows = xp.nonzero(near.any(axis=1))[0]
    if rows.shape[0] == 0:
        return None
    cols = xp.nonzero(near.any(axis=0))[0]
    # foreground lies within one material blur of a near pixel; inside the box every pixel one
    # more reach (material blur, or the distance maps' Sobel and the centre blur) from its edge is
    # computed exactly as on the window
    reach = blur_reach(params.material_sigma)
    margin = reach + max(reach, blur_reach(params.centre_sigma) + int(params.distance_weight > 0)) + 1
    return (
        slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, height)),
        slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, width)),
    )


def seed_components(prob: Any, params: NucleusThresholds) -> dict[str, int]:
    """How much separating the watershed has to do on a 2×H×W probability array: foreground
    components, seeds, and components holding several seeds (touching nuclei: only those are
    flooded, see :func:`watershed_from_seeds`). The same foreground and seeds as
    :func:`instances_from_probabilities`; numpy or cupy.

    >>> prob = np.zeros((2, 20, 40), np.float32)
    >>> prob[1, 5:15, 5:35] = 1                            # one foreground blob …
    >>> prob[0, 9:11, 10:12] = prob[0, 9:11, 28:30] = 1    # … holding two centres
    >>> prob[1, 16:19, 2:6] = 1                            # a second blob, no centre
    >>> seed_components(prob, NucleusThresholds())
    {'components': 2, 'seeds': 3, 'multi_seed_components': 1}
    """
    xp, ndi = array_module(prob), ndimage_module(prob)
    material = ndi.gaussian_filter(prob[1].astype(xp.float32), params.material_sigma)
    foreground = material > params.material_threshold
    markers = seeds_from_centres(prob[0].astype(xp.float32), foreground, params)
    components, n_comp = ndi.label(foreground)
    n_seeds = int(markers.max()) if markers.size else 0
    if int(n_comp) == 0 or n_seeds == 0:
        return {"components": int(n_comp), "seeds": n_seeds, "multi_seed_components": 0}
    seeded = markers > 0
    pairs = xp.unique(components[seeded].astype(xp.int64) * (n_seeds + 1) + markers[seeded])
    per_component = xp.bincount(pairs // (n_seeds + 1), minlength=int(n_comp) + 1)
    return {"components": int(n_comp), "seeds": n_seeds, "multi_seed_components": int((per_component[1:] > 1).sum())}


def fill_label_holes(labels: Any) -> Any:
    """Fill background pixels enclosed by nuclei (background components that do not touch the
    image border) with the label of a neighbouring nucleus, growing inwards from the rim."""
    xp, ndi = array_module(labels), ndimage_module(labels)
    background = labels == 0
    components, n = ndi.label(background)
    if int(n) <= 1:
        return labels
    edge = xp.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
    enclosed = xp.ones(int(n) + 1, dtype=bool)
    enclosed[0] = False
    enclosed[edge] = False
    holes = enclosed.take(components)
    if not bool(holes.any()):
        return labels
    out = labels.copy()
    flat, width = out.reshape(-1), labels.shape[1]
    at = xp.flatnonzero(holes)  # a hole never touches the image's edge: all 8 neighbours exist
    around = (-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1)
    for _ in range(64):  # holes are a few pixels wide; each pass fills one ring
        grown = flat[at + around[0]]  # the largest label among the 8 neighbours (a 3×3 dilation)
        for step in around[1:]:
            xp.maximum(grown, flat[at + step], out=grown)
        fill = grown > 0
        if not bool(fill.any()):
            break
        flat[at[fill]] = grown[fill]
        at = at[~fill]
    return out


def nucleus_scores(labels: Any, prob: Any) -> Any:
    """Each label's score, indexed by label (0 = background, score 0): the mean nuclear-material
    probability over its pixels times the highest centre probability among them.

    >>> import numpy as np
    >>> labels = np.array([[1, 1, 0, 2]])
    >>> prob = np.array([[[0.9, 0.5, 0.0, 0.2]], [[0.8, 0.6, 0.0, 0.5]]], dtype=np.float32)
    >>> np.round(nucleus_scores(labels, prob), 3).tolist()
    [0.0, 0.63, 0.1]
    """
    xp, ndi = array_module(labels), ndimage_module(labels)
    n = int(labels.max()) if labels.size else 0
    flat = labels.ravel()
    counts = xp.bincount(flat, minlength=n + 1)
    material = xp.bincount(flat, weights=prob[1].ravel().astype(xp.float64), minlength=n + 1)
    mean_material = material / xp.maximum(counts, 1)
    peak_centre = xp.zeros(n + 1, dtype=xp.float64)
    if n:
        peak_centre[1:] = xp.asarray(ndi.maximum(prob[0], labels, xp.arange(1, n + 1)), dtype=xp.float64)
    scores = mean_material * peak_centre
    scores[0] = 0.0
    return scores


def remove_unlikely_labels(labels: Any, prob: Any, min_score: float) -> Any:
    """Drop labels whose :func:`nucleus_scores` is below ``min_score`` and renumber the rest 1..n
    in their order."""
    xp = array_module(labels)
    keep = nucleus_scores(labels, prob) >= min_score
    keep[0] = False
    new_ids = xp.zeros(keep.shape[0], dtype=xp.int32)
    new_ids[keep] = xp.arange(1, int(keep.sum()) + 1, dtype=xp.int32)
    return new_ids.take(labels)


def remove_small_labels(labels: Any, min_area: int) -> Any:
    """Drop labels with fewer than ``min_area`` pixels and renumber the rest 1..n."""
    xp = array_module(labels)
    counts = xp.bincount(labels.ravel())
    keep = counts >= min_area
    keep[0] = False
    new_ids = xp.zeros(counts.shape[0], dtype=xp.int32)
    new_ids[keep] = xp.arange(1, int(keep.sum()) + 1, dtype=xp.int32)
    return new_ids.take(labels)
