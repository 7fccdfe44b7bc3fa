"""The MoNuSeg XML reader (MATLAB poly2mask convention) against the per-nucleus PNG masks.

Needs the MoNuSeg samples in the project's data folder (never committed); skipped when absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.annotations import (
    data_dir,
    labels_from_mask_folder,
    rasterise_polygons,
    read_monuseg_xml,
    read_rgb,
    read_truth,
)

DATA = data_dir()
XML_DIR = DATA / "monuseg2018_train_xml_samples"
PNG_DIR = DATA / "monuseg2018_train"
SAMPLES = {"TCGA-B0-5710-01Z-00-DX1": 359, "TCGA-B0-5698-01Z-00-DX1": 357}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (XML_DIR / "Annotations").is_dir() or not PNG_DIR.is_dir(),
        reason=f"MoNuSeg data not in {DATA}",
    ),
]


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def sample(request):
    name = request.param
    polygons = read_monuseg_xml(XML_DIR / "Annotations" / f"{name}.xml")
    masks = labels_from_mask_folder(PNG_DIR / name / "masks")
    return name, polygons, masks


def test_every_region_is_read(sample):
    name, polygons, masks = sample
    assert len(polygons) == SAMPLES[name]
    n_masks = len(np.unique(masks)) - 1
    assert n_masks in (len(polygons), len(polygons) - 1)  # SOURCE.md: equal or one below


def test_poly2mask_convention_matches_the_png_masks(sample):
    _, polygons, masks = sample
    xml = rasterise_polygons(polygons, masks.shape)
    png = masks > 0
    inside = (png & (xml > 0)).sum() / png.sum()
    iou = (png & (xml > 0)).sum() / (png | (xml > 0)).sum()
    assert inside > 0.98 and iou > 0.85
    # The 1-based convention matters: a vertex read as 0-based (no shift), or shifted the
    # other way, agrees worse with the masks.
    for offset in (1.0, -1.0):
        shifted = rasterise_polygons([p + offset for p in polygons], masks.shape) > 0
        iou_shifted = (png & shifted).sum() / (png | shifted).sum()
        assert iou > iou_shifted + 0.02


def test_instances_correspond_one_to_one(sample):
    _, polygons, masks = sample
    xml = rasterise_polygons(polygons, masks.shape)
    # every PNG nucleus lies (almost) entirely in one XML polygon
    ids, inverse = np.unique(masks[masks > 0], return_inverse=True)
    owners = xml[masks > 0]
    agree = []
    for k in range(len(ids)):
        o = owners[inverse == k]
        agree.append(np.bincount(o).max() / o.size)
    assert np.median(agree) > 0.97 and np.mean(np.array(agree) > 0.8) > 0.97


def test_tif_and_png_images_are_the_same(sample):
    name = sample[0]
    tif = read_rgb(XML_DIR / "Tissue_Images" / f"{name}.tif")
    png = read_rgb(PNG_DIR / name / "images" / f"{name}.png")
    assert tif.shape == (1000, 1000, 3) and np.array_equal(tif, png)


def test_read_truth_dispatches_on_the_source(sample, tmp_path):
    from PIL import Image

    name, _, masks = sample
    from_xml = read_truth(XML_DIR / "Annotations" / f"{name}.xml", shape=masks.shape)
    assert from_xml.shape == masks.shape and from_xml.max() == SAMPLES[name]
    with pytest.raises(ValueError):
        read_truth(XML_DIR / "Annotations" / f"{name}.xml")
    # a one-mask-per-nucleus folder (two of this image's nuclei) and a label image
    (tmp_path / "masks").mkdir()
    for k in (1, 2):
        Image.fromarray(((masks == k) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"mask_{k:04d}.png")
    two = np.where(np.isin(masks, (1, 2)), masks, 0)
    assert np.array_equal(read_truth(tmp_path), two)
    Image.fromarray(two.astype(np.uint16)).save(tmp_path / "labels.png")
    assert np.array_equal(read_truth(tmp_path / "labels.png"), two)
