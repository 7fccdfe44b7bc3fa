"""Nucleus instances from the network's maps (pipeline.kernels.nuclei): seeds, watershed, holes, scores,
on tiny generated arrays."""

import dataclasses

import numpy as np
import pytest
from skimage.segmentation import watershed

from pipeline.kernels.nuclei import (
    NucleusThresholds,
    contested_basins,
    core_seeds,
    fill_label_holes,
    foreground_box,
    instances_from_probabilities,
    instances_in_box,
    remove_small_labels,
    seed_components,
    seed_lone_components,
    seed_values_tie,
    seeds_from_centres,
    watershed_from_seeds,
)


def disc_probabilities(centres: list[tuple[int, int]], radius: float, shape=(96, 96)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    prob = np.zeros((2, *shape), dtype=np.float32)
    for cy, cx in centres:
        d = np.hypot(yy - cy, xx - cx)
        prob[1] = np.maximum(prob[1], (d <= radius).astype(np.float32))
        prob[0] = np.maximum(prob[0], (d <= 2).astype(np.float32))
    return prob


def test_separate_nuclei_become_separate_instances() -> None:
    labels = instances_from_probabilities(disc_probabilities([(20, 20), (60, 70), (75, 20)], 8), NucleusThresholds())
    assert labels.max() == 3
    for cy, cx in [(20, 20), (60, 70), (75, 20)]:
        assert labels[cy, cx] > 0


def test_touching_nuclei_are_split_by_their_seeds() -> None:
    prob = disc_probabilities([(40, 30), (40, 44)], 8)  # overlapping material, two centres
    labels = instances_from_probabilities(prob, NucleusThresholds())
    assert labels.max() == 2
    assert labels[40, 30] != labels[40, 44]


def test_seed_components_count_the_touching_nuclei() -> None:
    """Two touching pairs and one lone nucleus: 3 components, 5 seeds, 2 to flood."""
    prob = disc_probabilities([(20, 20), (20, 34), (60, 60), (60, 74), (80, 20)], 8, shape=(96, 96))
    assert seed_components(prob, NucleusThresholds()) == {"components": 3, "seeds": 5, "multi_seed_components": 2}
    apart = disc_probabilities([(20, 20), (60, 70)], 8)
    assert seed_components(apart, NucleusThresholds())["multi_seed_components"] == 0
    assert seed_components(np.zeros((2, 16, 16), np.float32), NucleusThresholds())["components"] == 0


def test_foreground_without_seed_gets_one_and_tiny_objects_go() -> None:
    prob = disc_probabilities([(30, 30)], 8)
    prob[0] = 0  # no centre detected anywhere
    prob[1, 80:83, 80:83] = 1  # a 9-px speck
    labels = instances_from_probabilities(prob, NucleusThresholds(min_area_px=20))
    assert labels.max() == 1 and labels[30, 30] == 1 and labels[81, 81] == 0


def test_a_faint_centre_beside_a_bright_one_becomes_its_own_nucleus() -> None:
    """Two touching nuclei in one foreground blob; the network is sure of one centre (0.9) and
    unsure of the other (0.45). Strong cores alone merge them; a weak-core threshold splits them,
    and the bright nucleus' own fringe above that threshold adds no second seed."""
    prob = disc_probabilities([(40, 30), (40, 44)], 8)
    prob[0] = 0
    yy, xx = np.mgrid[:96, :96]
    prob[0][np.hypot(yy - 40, xx - 30) <= 3] = 0.9
    prob[0][np.hypot(yy - 40, xx - 44) <= 3] = 0.45
    prob[0][np.hypot(yy - 40, xx - 30) <= 5] = np.maximum(prob[0][np.hypot(yy - 40, xx - 30) <= 5], 0.35)
    strong_only = NucleusThresholds(centre_sigma=1.0, centre_threshold=0.7, material_threshold=0.5, min_area_px=20)
    merged = instances_from_probabilities(prob, strong_only)
    assert merged.max() == 1
    split = instances_from_probabilities(prob, dataclasses.replace(strong_only, centre_weak_threshold=0.3))
    assert split.max() == 2 and split[40, 30] != split[40, 44] and 0 not in (split[40, 30], split[40, 44])
    sizes = np.bincount(split.ravel())[1:]
    assert sizes.min() > 0.4 * sizes.sum() / 2  # a boundary between them, not a sliver


def test_componentwise_watershed_equals_full_watershed() -> None:
    rng = np.random.default_rng(1)
    centres = [(int(y), int(x)) for y, x in rng.integers(8, 88, size=(25, 2))]
    prob = disc_probabilities(centres, 7)
    prob[1] = np.clip(prob[1] * 0.8 + rng.random(prob[1].shape) * 0.2, 0, 1)
    params = NucleusThresholds()
    fg = prob[1] > params.material_threshold
    markers = seeds_from_centres(prob[0], fg, params)
    np.testing.assert_array_equal(watershed_from_seeds(-prob[1], markers, fg), watershed(-prob[1], markers, mask=fg))


def crowded_nuclei(size: int = 160, seed: int = 0, levels: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth random −material surface (float64; quantised to ``levels`` values when given, so
    that many pixels tie), its foreground and multi-pixel seeds, several per foreground component
    (the blob model's maps: most of a component is seed): (surface, markers, mask)."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(seed)
    material = ndi.gaussian_filter(rng.random((size, size)), 3)
    material = (material - material.min()) / np.ptp(material)
    if levels:
        material = np.round(material * levels) / levels
    mask = material > np.quantile(material, 0.3)
    markers, _ = ndi.label(material > np.quantile(material, 0.6))
    return -material, markers.astype(np.int32), mask


def test_basin_watershed_is_scikit_image_flood_where_no_seed_values_tie() -> None:
    """Float64 surface, no two seed pixels of equal value: the basin-wise flood and one
    scikit-image flood of the whole mask agree pixel for pixel."""
    for seed in range(3):
        surface, markers, mask = crowded_nuclei(seed=seed)
        _, _, contested = contested_basins(np.where(mask, markers, 0), mask)
        assert contested.sum() >= 5  # gaps between touching nuclei, flooded by scikit-image
        assert (~contested[1:]).sum() >= 5  # and basins decided without flooding
        whole = watershed(surface, np.where(mask, markers, 0), mask=mask)
        np.testing.assert_array_equal(watershed_from_seeds(surface, markers, mask), whole)


def flood_each_basin_alone(surface: np.ndarray, seeds: np.ndarray, gaps: np.ndarray, labels: np.ndarray) -> None:
    """The flood the side-by-side canvas must reproduce: basin ``k`` of ``gaps`` flooded by its own
    scikit-image call on its box and the seed pixels one step around it."""
    import scipy.ndimage as ndi

    for k, (rows, cols) in enumerate(ndi.find_objects(gaps), start=1):
        box = (
            slice(max(rows.start - 1, 0), rows.stop + 1),
            slice(max(cols.start - 1, 0), cols.stop + 1),
        )
        gap, box_seeds = gaps[box] == k, seeds[box]
        labels[box][gap] = watershed(surface[box], box_seeds, mask=gap | (box_seeds > 0))[gap]


@pytest.mark.parametrize("canvas", ["one canvas", "many canvases, large basins alone"])
def test_basins_flooded_side_by_side_get_the_labels_of_one_flood_each(
    canvas: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small basins whose seed pixels all differ in value are flooded together on a canvas, the
    others (tied seed values, or large) each on its own: the labels of one scikit-image flood per
    basin on its box (``flood_each_basin_alone``), pixel for pixel. The surface takes 12 values on
    the left half (ties everywhere there) and is exact on the right; flooding the tied basins side
    by side too moves 2–22 pixels per picture here."""
    import pipeline.kernels.nuclei as nuclei

    if canvas != "one canvas":
        monkeypatch.setattr(nuclei, "SIDE_BY_SIDE_PX", 60)  # 7-10 of a picture's 11-12 basins are larger
        monkeypatch.setattr(nuclei, "SHELF_PX", 64)
        monkeypatch.setattr(nuclei, "CANVAS_PX", 64 * 64)  # a canvas of 64 rows: one or two shelves
    for seed in range(4):
        exact, markers, mask = crowded_nuclei(size=300, seed=seed)
        quantised, _, _ = crowded_nuclei(size=300, seed=seed, levels=12)
        surface = np.where(np.arange(300)[None, :] < 150, quantised, exact)
        seeds = np.where(mask, markers, 0)
        basins, _, contested = contested_basins(seeds, mask)
        number = np.zeros(contested.shape[0], dtype=np.int32)
        number[contested] = np.arange(1, int(contested.sum()) + 1, dtype=np.int32)
        gaps = number[basins]
        at = np.flatnonzero(gaps)
        tied = seed_values_tie(surface, seeds, at, gaps.ravel()[at], int(contested.sum()))
        assert tied.sum() >= 2 and (~tied[1:]).sum() >= 2  # flooded on their own, and side by side
        with monkeypatch.context() as alone:
            alone.setattr(nuclei, "flood_gaps", flood_each_basin_alone)
            one_by_one = watershed_from_seeds(surface, markers, mask)
        np.testing.assert_array_equal(watershed_from_seeds(surface, markers, mask), one_by_one)


def test_components_without_a_core_are_numbered_as_when_seeded_at_their_peak() -> None:
    """The CPU watershed numbers the foreground components holding no core from its basins
    (``lone_after``) instead of labelling the foreground for their peaks: the same labels as
    seeding each at its peak and flooding, here with many such components among touching ones."""
    import scipy.ndimage as ndi

    for seed in range(3):
        rng = np.random.default_rng(seed)
        prob = ndi.gaussian_filter(rng.random((2, 180, 200)), (0, 2.5, 2.5)).astype(np.float32)
        prob = (prob - prob.min(axis=(1, 2), keepdims=True)) / np.ptp(prob, axis=(1, 2), keepdims=True)
        params = NucleusThresholds(centre_threshold=0.8, material_threshold=0.5, min_area_px=3)
        fg = ndi.gaussian_filter(prob[1], params.material_sigma) > params.material_threshold
        markers, n, blurred = core_seeds(prob[0], fg, params)
        seeded = seed_lone_components(markers.copy(), n, blurred, fg)
        assert seeded.max() - n >= 5 and n >= 5  # components without a core, and with
        surface = -ndi.gaussian_filter(prob[1], params.material_sigma)
        np.testing.assert_array_equal(
            watershed_from_seeds(surface, markers, fg, lone_after=n), watershed_from_seeds(surface, seeded, fg)
        )


def test_basin_watershed_does_not_depend_on_the_rest_of_the_image() -> None:
    """Many tied values: each basin's labels are the same in a crop as in the whole image (tiles
    of any size agree), wherever the basin lies inside the crop."""
    surface, markers, mask = crowded_nuclei(size=200, seed=3, levels=12)
    whole = watershed_from_seeds(surface, markers, mask)
    crop = (slice(37, 171), slice(21, 158))
    part = watershed_from_seeds(surface[crop], markers[crop], mask[crop])
    basins, _, contested = contested_basins(np.where(mask[crop], markers[crop], 0), mask[crop])
    edge = np.unique(np.concatenate([basins[0], basins[-1], basins[:, 0], basins[:, -1]]))
    inside = (basins > 0) & ~np.isin(basins, edge)
    assert contested[np.unique(basins[inside])].sum() >= 5
    np.testing.assert_array_equal(part[inside], whole[crop][inside])


@pytest.mark.parametrize("corner", ["inside", "at the edge"])
def test_glass_is_skipped_with_the_same_labels(corner: str) -> None:
    """A window half glass: the steps run on the box that can hold foreground, and every label is
    the one the steps give run on all of the window (``instances_in_box`` of the whole window)."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(6)
    prob = np.zeros((2, 180, 200), np.float32)
    tissue = (slice(50, 140), slice(60, 170)) if corner == "inside" else (slice(0, 90), slice(90, 200))
    field = ndi.gaussian_filter(rng.random((2, 90, 110)), (0, 2.5, 2.5))
    field = (field - field.min(axis=(1, 2), keepdims=True)) / np.ptp(field, axis=(1, 2), keepdims=True)
    prob[(slice(None), *tissue)] = field
    prob[1][tissue[0], tissue[1].start] = prob[1][tissue[0].start, tissue[1]] = 1  # nuclei at the box's edge
    strong = NucleusThresholds(centre_threshold=0.6, material_threshold=0.4, min_area_px=5)
    for params in (strong, dataclasses.replace(strong, centre_threshold=0.7, centre_weak_threshold=0.5)):
        box = foreground_box(prob[1], params)
        assert box is not None and (box[0].stop - box[0].start) * (box[1].stop - box[1].start) < 0.5 * 180 * 200
        labels = instances_from_probabilities(prob, params)
        assert labels.max() >= 10
        np.testing.assert_array_equal(labels, instances_in_box(prob, params))
    assert not instances_from_probabilities(np.zeros_like(prob), NucleusThresholds()).any()


def fill_by_whole_image_dilation(labels: np.ndarray) -> np.ndarray:
    """Background components that do not touch the image's edge, filled ring by ring with the
    largest label among each pixel's 3×3 neighbours."""
    import scipy.ndimage as ndi

    components, _ = ndi.label(labels == 0)
    edge = np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
    holes = (components > 0) & ~np.isin(components, edge)
    out = labels.copy()
    while True:
        grown = ndi.grey_dilation(out, size=3)
        fill = holes & (out == 0) & (grown > 0)
        if not fill.any():
            return out
        out = np.where(fill, grown, out)


def test_hole_fill_equals_whole_image_dilation() -> None:
    """Holes of every width, some touching diagonally, some open to the image's edge: the fill that
    visits hole pixels only gives the labels of growing every label into its enclosed background
    one ring at a time by a 3×3 grey dilation of the whole image (``fill_by_whole_image_dilation``)."""
    import scipy.ndimage as ndi

    surface, markers, mask = crowded_nuclei(size=120, seed=4)
    labels = watershed_from_seeds(surface, markers, mask)
    rng = np.random.default_rng(5)
    punched = ndi.gaussian_filter(rng.random(labels.shape), 1.5)
    labels[punched > np.quantile(punched, 0.8)] = 0
    expected = fill_by_whole_image_dilation(labels)
    assert (expected != labels).sum() > 100
    np.testing.assert_array_equal(fill_label_holes(labels), expected)


def test_holes_filled_and_small_labels_renumbered() -> None:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:9, 2:9] = 5
    labels[5, 5] = 0  # a hole
    labels[15, 15] = 7  # 1-px object
    filled = fill_label_holes(labels)
    assert filled[5, 5] == 5
    out = remove_small_labels(filled, 5)
    assert set(np.unique(out)) == {0, 1}


def test_unlikely_nuclei_are_dropped_by_their_score() -> None:
    """Two equally shaped blobs above every threshold: the one the network half believes in
    (material 0.6, centre peak 0.75: score 0.45) goes at a minimum score of 0.5, the confident one
    (0.95 × 0.99) stays; at 0 both stay, labelled as without the score."""
    import scipy.ndimage as ndi

    from pipeline.kernels.nuclei import NucleusThresholds, instances_from_probabilities

    yy, xx = np.mgrid[:60, :120]
    prob = np.zeros((2, 60, 120), dtype=np.float32)
    for cx, material, centre in ((30, 0.95, 0.99), (90, 0.6, 0.75)):
        disc = (yy - 30) ** 2 + (xx - cx) ** 2 <= 12**2
        prob[1][disc] = material
        prob[0][disc] = centre * np.exp(-((yy - 30) ** 2 + (xx - cx) ** 2) / 40.0)[disc]
    params = NucleusThresholds(centre_threshold=0.5, material_threshold=0.3, min_area_px=20)
    both = instances_from_probabilities(prob, params)
    assert both.max() == 2
    kept = instances_from_probabilities(prob, dataclasses.replace(params, min_nucleus_score=0.5))
    assert kept.max() == 1 and kept[30, 30] == 1 and kept[30, 90] == 0
    np.testing.assert_array_equal(kept == 1, both == both[30, 30])
    assert ndi.label(both > 0)[1] == 2


def test_centre_surface_weight_puts_the_border_in_the_centre_valley() -> None:
    """Two touching nuclei whose material map dips inside the larger one (pale chromatin, at
    column 45) rather than where they meet (column 52, the valley between the two centres):
    flooding the material alone puts the border in the dip; with the centre map in the surface it
    follows the centres' valley. Weight 0 is the material flood exactly."""
    yy, xx = np.mgrid[:60, :100]
    prob = np.zeros((2, 60, 100), dtype=np.float32)
    nuclei = (np.hypot(yy - 30, xx - 30) <= 22) | (np.hypot(yy - 30, xx - 64) <= 12)
    prob[1][nuclei] = (0.95 - 0.3 * np.exp(-((xx - 45) ** 2) / 8.0))[nuclei]
    prob[0] = np.maximum(
        np.clip(1 - np.hypot(yy - 30, xx - 30) / 22, 0, 1), np.clip(1 - np.hypot(yy - 30, xx - 64) / 12, 0, 1)
    )
    params = NucleusThresholds(centre_threshold=0.6, material_threshold=0.5, min_area_px=20)

    def border(labels: np.ndarray) -> int:
        row = labels[30]
        return int(np.nonzero((row[:-1] != row[1:]) & (row[:-1] > 0) & (row[1:] > 0))[0][0])

    flat = instances_from_probabilities(prob, params)
    weighted = instances_from_probabilities(prob, dataclasses.replace(params, centre_surface_weight=2.0))
    assert flat.max() == weighted.max() == 2
    assert abs(border(flat) - 45) <= 1 and abs(border(weighted) - 52) <= 1
    np.testing.assert_array_equal(
        instances_from_probabilities(prob, dataclasses.replace(params, centre_surface_weight=0.0)), flat
    )


def touching_pair_with_distance_maps() -> tuple[np.ndarray, np.ndarray]:
    """Two nuclei of radius 10 whose discs overlap (centres 16 px apart), with the maps a
    four-output model gives: material over both, a centre map that stays high across the join
    (so its cores merge), and the horizontal and vertical distance maps of the two nuclei."""
    from pipeline.training.targets import distance_maps

    yy, xx = np.mgrid[:50, :70]
    left, right = np.hypot(yy - 25, xx - 27) <= 10, np.hypot(yy - 25, xx - 43) <= 10
    truth = np.where(right & (xx >= 35), 2, np.where(left, 1, 0)).astype(np.int32)
    prob = np.zeros((4, 50, 70), dtype=np.float32)
    prob[1] = truth > 0
    prob[0] = np.where(truth > 0, 0.9, 0.0)  # one core over both
    prob[2:] = distance_maps(truth)
    return prob, truth


def test_distance_maps_part_touching_nuclei_the_centre_map_merges() -> None:
    prob, truth = touching_pair_with_distance_maps()
    params = NucleusThresholds(centre_threshold=0.7, material_threshold=0.5, min_area_px=20)
    merged = instances_from_probabilities(prob, params)
    assert merged.max() == 1  # the centre map alone: one nucleus
    parted = instances_from_probabilities(prob, dataclasses.replace(params, distance_weight=1.0))
    assert parted.max() == 2
    assert parted[25, 27] != parted[25, 43]
    # each found nucleus is mostly one true one
    for found in (1, 2):
        counts = np.bincount(truth[parted == found], minlength=3)
        assert counts[1:].max() >= 0.85 * counts.sum()
    # weight 0 reads channels 0 and 1 only, as for a two-output model
    np.testing.assert_array_equal(instances_from_probabilities(prob[:2], params), merged)


def test_distance_weight_needs_the_distance_maps() -> None:
    prob, _ = touching_pair_with_distance_maps()
    with pytest.raises(ValueError, match="four-output model"):
        instances_from_probabilities(prob[:2], NucleusThresholds(distance_weight=1.0))
    with pytest.raises(ValueError, match="2×H×W or 4×H×W"):
        instances_from_probabilities(prob[:3], NucleusThresholds())


def test_glass_is_skipped_with_the_same_labels_when_the_distance_maps_are_read() -> None:
    """The box that skips glass is wide enough for the distance maps' Sobel too: the same labels
    as on the whole window."""
    prob, _ = touching_pair_with_distance_maps()
    window = np.zeros((4, 120, 160), np.float32)
    window[2:] = 0.5
    window[:, 60:110, 80:150] = prob
    params = NucleusThresholds(centre_threshold=0.7, material_threshold=0.5, min_area_px=20, distance_weight=1.0)
    box = foreground_box(window[1], params)
    assert box is not None and box != (slice(0, 120), slice(0, 160))
    labels = instances_from_probabilities(window, params)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels, instances_in_box(window, params))
