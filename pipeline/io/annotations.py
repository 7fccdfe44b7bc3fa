"""Annotated nucleus data for training and evaluation: MoNuSeg folders, MoNuSeg XML, label images.

Everything here reads files; the arrays it returns are plain numpy (RGB uint8 H×W×3 images,
int32 instance labels with 0 = background). The image-level train/validation split of the
30 MoNuSeg 2018 training images is fixed here, so training, threshold tuning, the ablation
and the classical baseline all score the same 7 held-out images.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io.outputs.publish import atomic_path

# Organ of each MoNuSeg 2018 training image (Kumar et al. 2017, Table I / the challenge page).
MONUSEG_ORGANS: dict[str, str] = {
    "TCGA-A7-A13E-01Z-00-DX1": "breast",
    "TCGA-A7-A13F-01Z-00-DX1": "breast",
    "TCGA-AR-A1AK-01Z-00-DX1": "breast",
    "TCGA-AR-A1AS-01Z-00-DX1": "breast",
    "TCGA-E2-A14V-01Z-00-DX1": "breast",
    "TCGA-E2-A1B5-01Z-00-DX1": "breast",
    "TCGA-B0-5698-01Z-00-DX1": "kidney",
    "TCGA-B0-5710-01Z-00-DX1": "kidney",
    "TCGA-B0-5711-01Z-00-DX1": "kidney",
    "TCGA-HE-7128-01Z-00-DX1": "kidney",
    "TCGA-HE-7129-01Z-00-DX1": "kidney",
    "TCGA-HE-7130-01Z-00-DX1": "kidney",
    "TCGA-18-5592-01Z-00-DX1": "liver",
    "TCGA-21-5784-01Z-00-DX1": "liver",
    "TCGA-21-5786-01Z-00-DX1": "liver",
    "TCGA-38-6178-01Z-00-DX1": "liver",
    "TCGA-49-4488-01Z-00-DX1": "liver",
    "TCGA-50-5931-01Z-00-DX1": "liver",
    "TCGA-CH-5767-01Z-00-DX1": "prostate",
    "TCGA-G9-6336-01Z-00-DX1": "prostate",
    "TCGA-G9-6348-01Z-00-DX1": "prostate",
    "TCGA-G9-6356-01Z-00-DX1": "prostate",
    "TCGA-G9-6362-01Z-00-DX1": "prostate",
    "TCGA-G9-6363-01Z-00-DX1": "prostate",
    "TCGA-DK-A2I6-01A-01-TS1": "bladder",
    "TCGA-G2-A2EK-01A-02-TSB": "bladder",
    "TCGA-AY-A8YK-01A-01-TS1": "colon",
    "TCGA-NH-A8F7-01A-01-TS1": "colon",
    "TCGA-KB-A93J-01A-01-TS1": "stomach",
    "TCGA-RD-A8N9-01A-01-TS1": "stomach",
}

# Validation split: one image per organ (7 of 30), chosen once, before any training, and never
# used for training. Thresholds, checkpoints and the ablation are selected on these only.
VALIDATION_IMAGES: tuple[str, ...] = (
    "TCGA-E2-A1B5-01Z-00-DX1",  # breast
    "TCGA-HE-7129-01Z-00-DX1",  # kidney
    "TCGA-21-5786-01Z-00-DX1",  # liver
    "TCGA-G9-6363-01Z-00-DX1",  # prostate
    "TCGA-DK-A2I6-01A-01-TS1",  # bladder
    "TCGA-NH-A8F7-01A-01-TS1",  # colon
    "TCGA-RD-A8N9-01A-01-TS1",  # stomach
)
TRAINING_IMAGES: tuple[str, ...] = tuple(sorted(set(MONUSEG_ORGANS) - set(VALIDATION_IMAGES)))


# Where the project's real data lives (never committed): training, evaluation and the tests that
# need real slides read it from here, and skip or fail naming it when it is absent.
DATA_DIR_VARIABLE = "NUCLEI_DATA_DIR"


def data_dir() -> Path:
    """The project's data folder: ``$NUCLEI_DATA_DIR``, else ``data/`` at the top of the checkout
    (git-ignored)."""
    folder = os.environ.get(DATA_DIR_VARIABLE)
    return Path(folder) if folder else Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class AnnotatedImage:
    """One RGB image with its nucleus instance labels."""

    name: str
    rgb: np.ndarray  # H×W×3 uint8
    labels: np.ndarray  # H×W int32, 0 = background, 1..n = nuclei


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 H×W×3 from a PNG/TIFF/JPEG (alpha dropped, grey expanded)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def read_label_image(path: Path) -> np.ndarray:
    """Instance labels (int32) from a TIFF/PNG label image (0 = background)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int32)


def labels_from_mask_folder(folder: Path) -> np.ndarray:
    """Instance labels from a Kaggle-DSB-style folder of one binary PNG per nucleus.

    Masks are numbered in sorted file order (1..n); where masks overlap the later one wins.
    """
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"no mask PNGs in {folder}")
    labels: np.ndarray | None = None
    for k, f in enumerate(files, start=1):
        with Image.open(f) as im:
            m = np.asarray(im.convert("L")) > 0
        if labels is None:
            labels = np.zeros(m.shape, dtype=np.int32)
        labels[m] = k
    assert labels is not None
    return labels


def read_monuseg_xml(path: Path) -> list[np.ndarray]:
    """Polygons (float64 arrays of (x, y) vertices, as written) from an Aperio/MoNuSeg XML file."""
    root = ET.parse(path).getroot()
    polygons = []
    for region in root.iter("Region"):
        verts = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        if len(verts) >= 3:
            polygons.append(np.asarray(verts, dtype=np.float64))
    return polygons


def rasterise_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from polygons in the MATLAB ``poly2mask`` convention of MoNuSeg.

    MoNuSeg vertices are MATLAB pixel coordinates (1-based, pixel centres on integers): a vertex
    ``v`` denotes the 0-based pixel ``v - 1``. A pixel belongs to a polygon when its centre lies
    inside it. Polygons are numbered 1..n in file order; overlaps go to the later polygon.
    """
    from skimage.draw import polygon as fill_polygon

    labels = np.zeros(shape, dtype=np.int32)
    for k, poly in enumerate(polygons, start=1):
        rr, cc = fill_polygon(poly[:, 1] - 1.0, poly[:, 0] - 1.0, shape=shape)
        labels[rr, cc] = k
    return labels


def labels_from_monuseg_xml(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels of a MoNuSeg XML annotation on an image of ``shape`` (rows, cols)."""
    return rasterise_polygons(read_monuseg_xml(path), shape)


def read_truth(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Ground-truth instance labels from any supported form: a MoNuSeg XML file (needs ``shape``),
    a folder of per-nucleus PNG masks (or a MoNuSeg image folder holding ``masks/``), or a label image."""
    if path.is_dir():
        masks = path / "masks"
        return labels_from_mask_folder(masks if masks.is_dir() else path)
    if path.suffix.lower() == ".xml":
        if shape is None:
            raise ValueError(f"{path}: an XML annotation needs the image shape")
        return labels_from_monuseg_xml(path, shape)
    return read_label_image(path)


def _cache_key(folder: Path, name: str) -> str:
    masks = sorted((folder / name / "masks").iterdir())
    h = hashlib.sha1(f"{folder.resolve()}|{name}|{len(masks)}|{masks[-1].stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_monuseg_image(folder: Path, name: str, cache_dir: Path | None = None) -> AnnotatedImage:
    """One MoNuSeg training image (``folder/<name>/images/<name>.png`` + ``masks/``) with its labels.

    Decoding ~500 mask PNGs per image is slow, so the labels are cached (outside the repository)
    as ``.npy`` in ``cache_dir`` when given.
    """
    rgb = read_rgb(folder / name / "images" / f"{name}.png")
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{name}.{_cache_key(folder, name)}.labels.npy"
        if cached.exists():
            return AnnotatedImage(name, rgb, np.load(cached))
    labels = labels_from_mask_folder(folder / name / "masks")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached, durable=False) as tmp, open(tmp, "wb") as f:  # a cache: rebuilt if lost
            np.save(f, labels)
    return AnnotatedImage(name, rgb, labels)


def load_monuseg(folder: Path, names: tuple[str, ...], cache_dir: Path | None = None) -> list[AnnotatedImage]:
    """Several MoNuSeg images, in the order given."""
    return [load_monuseg_image(folder, n, cache_dir) for n in names]
