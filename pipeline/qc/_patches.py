"""Random region checking: sample review patches from a slide's tissue and draw the nuclei.

Paper: 15 patches of 256×256 px at 40x per slide, sampled at random; a pathologist marks each
one adequate or not. Sampling (``sample_patches``) and drawing (``render_review_image``) are
pure; ``extract_review_patches`` does the file work for one slide and caches its result in
``qc/patches/<slide_id>/patches.json``, so a rebuild neither resamples nor redraws.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from pipeline.io.outputs.publish import atomic_path, atomic_write_json, disk_full
from pipeline.io.outputs.stats import MPP_40X

PATCH_PX_40X = 256  # paper: review patches are 256×256 px at 40x
N_PATCHES = 15  # paper: 15 random patches per slide
# Long side of the low-resolution view the tissue mask is computed on: a 40x TCGA slide
# (~100k px) gives ~100 level-0 px per mask pixel, i.e. ~2.5 mask pixels per 40x patch.
TISSUE_VIEW_PX = 1024
THUMBNAIL_PX = 256  # long side of the slide thumbnail kept for the report
OVERLAY_PX = 512  # long side of the thumbnail with the slide's nuclei drawn on it
OVERLAY_ALPHA = (0.6, 0.9)  # opacity of the nucleus tint: one nucleus in a pixel .. the densest pixels
# A patch is accepted when at least this share of its footprint on the mask is tissue.
MIN_PATCH_TISSUE = 0.5
TRIES_PER_PATCH = 40  # rejection-sampling budget before the overlap / tissue-share rules relax
# Nuclei whose centroid lies this far outside a patch can still reach into it (largest nuclei
# at 40x are ~80 px across; the config's max_nucleus_px = 96 px at 40x = 24 µm).
NUCLEUS_REACH_UM = 24.0
OUTLINE_RGB = (0, 255, 0)  # nucleus outlines: green stands out on H&E
GAP_PX = 8  # white gap between the raw patch and its overlay in the review image
PATCHES_FILE = "patches.json"
# zlib level of the review PNGs: level 1 encodes H&E patches ~2x faster than the default 6 for
# files ~8 % larger (measured here on a pipeline-segmented synthetic slide patch).
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class Patch:
    """One review region, in level-0 pixels of the slide."""

    index: int
    x: int
    y: int
    w: int
    h: int


def patch_side_level0(mpp: float) -> int:
    """Level-0 pixels covering a 256 px patch at 40x (128 for a 20x slide at 0.5 µm/px)."""
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"invalid microns per pixel: {mpp}")
    return max(1, int(round(PATCH_PX_40X * MPP_40X / mpp)))


def slide_rng(seed: int, slide_id: str) -> np.random.Generator:
    """A generator fixed by (seed, slide id): a slide's patches do not depend on the others."""
    digest = hashlib.sha256(slide_id.encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _tissue_share(table: np.ndarray, downsample: float, x: int, y: int, side: int) -> float:
    """Share of tissue in a patch's footprint on the mask, from its summed-area ``table``."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    r0, c0 = min(int(y / downsample), h - 1), min(int(x / downsample), w - 1)
    r1 = min(max(r0 + 1, int(math.ceil((y + side) / downsample))), h)
    c1 = min(max(c0 + 1, int(math.ceil((x + side) / downsample))), w)
    total = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return float(total) / ((r1 - r0) * (c1 - c0))


def sample_patches(
    mask: np.ndarray,
    downsample: float,
    slide_size: tuple[int, int],
    side: int,
    n: int,
    rng: np.random.Generator,
) -> list[Patch]:
    """``n`` square patches of ``side`` level-0 px whose centres are uniform over the tissue.

    Parameters
    ----------
    mask : bool tissue mask of a low-resolution view; ``downsample`` level-0 px per mask px.
    slide_size : (width, height) of level 0.
    side : patch side in level-0 px.
    rng : the slide's generator (``slide_rng``).

    A centre is a uniformly chosen tissue pixel of the mask plus a uniform offset inside it,
    so centres are uniform over the tissue area. The patch is clamped into the slide and
    accepted when its (clamped) centre is on tissue, at least ``MIN_PATCH_TISSUE`` of its
    footprint is tissue and it overlaps no accepted patch; when tissue is too scarce for that,
    these rules are relaxed (the drawn centre was still on tissue). An empty mask samples the
    whole slide.
    """
    width, height = slide_size
    tissue = np.flatnonzero(mask)
    if tissue.size == 0:
        mask = np.ones_like(mask, dtype=bool)
        tissue = np.flatnonzero(mask)
    mw = mask.shape[1]
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    patches: list[Patch] = []
    for strict in (True, False):
        tries = 0
        while len(patches) < n and tries < TRIES_PER_PATCH * n:
            tries += 1
            pick = int(tissue[rng.integers(tissue.size)])
            u, v = rng.random(2)
            cx = (pick % mw + u) * downsample
            cy = (pick // mw + v) * downsample
            x = int(min(max(round(cx - side / 2), 0), max(width - side, 0)))
            y = int(min(max(round(cy - side / 2), 0), max(height - side, 0)))
            if strict:
                # Clamping and rounding may move the centre: it must still be on tissue.
                r = min(int((y + side / 2) / downsample), mask.shape[0] - 1)
                c = min(int((x + side / 2) / downsample), mask.shape[1] - 1)
                if not mask[r, c] or _tissue_share(table, downsample, x, y, side) < MIN_PATCH_TISSUE:
                    continue
                if any(abs(p.x - x) < side and abs(p.y - y) < side for p in patches):
                    continue
            patches.append(Patch(len(patches), x, y, side, side))
    return patches


def render_review_image(
    region: np.ndarray, polygons: list[np.ndarray], x: int, y: int, out_px: int = PATCH_PX_40X
) -> tuple[np.ndarray, np.ndarray]:
    """The raw patch at 40x and the same patch with nucleus outlines drawn.

    Parameters
    ----------
    region : RGB uint8 level-0 pixels of the patch (side × side).
    polygons : nucleus outlines, each an (m, 2) array of level-0 (x, y).
    x, y : level-0 position of the region's top-left corner.
    out_px : output side (256 at 40x; a 20x region is upsampled ×2).
    """
    side_h, side_w = region.shape[:2]
    raw = Image.fromarray(region).resize((out_px, out_px), Image.Resampling.BICUBIC)
    over = raw.copy()
    draw = ImageDraw.Draw(over)
    scale = np.array([out_px / side_w, out_px / side_h])
    origin = np.array([x, y], dtype=np.float64)
    for poly in polygons:
        if len(poly) < 2:
            continue
        pts = (np.asarray(poly, dtype=np.float64) - origin + 0.5) * scale - 0.5
        draw.line(np.vstack([pts, pts[:1]]).ravel().tolist(), fill=OUTLINE_RGB, width=1)
    return np.asarray(raw), np.asarray(over)


def nuclei_overlay(view: np.ndarray, level0: tuple[int, int], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The slide's low-resolution view with every nucleus drawn: each thumbnail pixel that holds
    nucleus centroids is tinted green, more opaque where they are denser (a million nuclei stay
    one picture; each nucleus covers 3×3 px at least). ``level0`` is the slide's (width, height);
    ``xs, ys`` level-0 centroids.

    >>> view = np.full((40, 60, 3), 255, np.uint8)
    >>> out = nuclei_overlay(view, (600, 400), np.array([15.0, 15.0, 590.0]), np.array([15.0, 18.0, 390.0]))
    >>> out.shape, out[1, 1].tolist(), out[39, 59].tolist(), out[20, 30].tolist()
    ((40, 60, 3), [25, 255, 25], [102, 255, 102], [255, 255, 255])
    """
    thumb = Image.fromarray(view)
    thumb.thumbnail((OVERLAY_PX, OVERLAY_PX))
    rgb = np.asarray(thumb, dtype=np.float32)
    h, w = rgb.shape[:2]
    if len(xs):
        col = np.clip((np.asarray(xs, np.float64) * w / level0[0]).astype(np.int64), 0, w - 1)
        row = np.clip((np.asarray(ys, np.float64) * h / level0[1]).astype(np.int64), 0, h - 1)
        counts = np.bincount(row * w + col, minlength=h * w).reshape(h, w).astype(np.float32)
        top = max(1.0, float(np.percentile(counts[counts > 0], 99)))
        lo, hi = OVERLAY_ALPHA
        alpha = np.where(counts > 0, lo + (hi - lo) * np.clip((counts - 1) / max(top - 1, 1), 0, 1), 0)
        # 3×3 px per nucleus at least: single pixels vanish in JPEG's colour subsampling and downscaling
        alpha = ndi.maximum_filter(alpha, size=3, mode="constant")[..., None]
        rgb = rgb * (1 - alpha) + np.asarray(OUTLINE_RGB, np.float32) * alpha
    return np.round(rgb).astype(np.uint8)


def read_centroids(nuclei_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Every nucleus centroid (level-0 x, y) of a slide: two columns of nuclei.parquet."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(nuclei_path), columns=["centroid_x", "centroid_y"])
    return table.column("centroid_x").to_numpy(), table.column("centroid_y").to_numpy()


def side_by_side(raw: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """Raw patch | white gap | overlay, as one RGB image."""
    h = raw.shape[0]
    gap = np.full((h, GAP_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([raw, gap, overlay], axis=1)


def read_polygons(nuclei_path: str | Path, patches: list[Patch], reach_px: float) -> list[list[np.ndarray]]:
    """Nucleus polygons reaching into each patch, read in one filtered scan of nuclei.parquet.

    The filter is on the GeoParquet ``bbox`` covering: only the row groups (tiles) whose boxes
    overlap a patch are read, and a nucleus is drawn on every patch its box overlaps. A table
    written before it had ``bbox`` is filtered on the centroids, widened by ``reach_px``. The
    outlines are read from ``geometry``, or from ``polygon`` where a table written before has it."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from pipeline.io.outputs.parquet import BBOX, BBOX_FIELDS, GEOMETRY, wkb_polygons

    if not patches:
        return []
    names = pq.read_schema(str(nuclei_path)).names
    outline = "polygon" if "polygon" in names else GEOMETRY  # tables written before hold both
    if BBOX in names:
        x0, y0, x1, y1 = (pc.field(BBOX, n) for n in BBOX_FIELDS)
        columns: dict[str, Any] = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "outline": pc.field(outline)}
        reach = 0.0
    else:
        cx, cy = pc.field("centroid_x"), pc.field("centroid_y")
        columns = {"x0": cx, "y0": cy, "x1": cx, "y1": cy, "outline": pc.field(outline)}
        reach = reach_px
    expr = None
    for p in patches:
        box = (
            (columns["x1"] >= p.x - reach)
            & (columns["x0"] < p.x + p.w + reach)
            & (columns["y1"] >= p.y - reach)
            & (columns["y0"] < p.y + p.h + reach)
        )
        expr = box if expr is None else expr | box
    table = pads.dataset(str(nuclei_path), format="parquet").to_table(columns=columns, filter=expr)
    x0, y0, x1, y1 = (table.column(k).to_numpy() for k in ("x0", "y0", "x1", "y1"))
    flat = table.column("outline").combine_chunks()
    if outline == GEOMETRY:
        flat = wkb_polygons(flat, str(nuclei_path))
    offsets = flat.offsets.to_numpy()
    coords = flat.values.to_numpy(zero_copy_only=False)
    out: list[list[np.ndarray]] = []
    for p in patches:
        inside = np.flatnonzero(
            (x1 >= p.x - reach) & (x0 < p.x + p.w + reach) & (y1 >= p.y - reach) & (y0 < p.y + p.h + reach)
        )
        out.append([coords[offsets[i] : offsets[i + 1]].reshape(-1, 2) for i in inside])
    return out


@dataclass
class SlidePatches:
    """The review patches of one slide (what patches.json holds)."""

    slide_id: str
    seed: int
    n_requested: int
    side: int
    mpp: float
    patches: list[Patch]
    images: list[str]  # review image paths, relative to the qc folder
    thumbnail: str  # relative to the qc folder, "" when none
    note: str
    overlay: str = ""  # the thumbnail with the slide's nuclei drawn, relative to the qc folder; "" when none

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["patches"] = [asdict(p) for p in self.patches]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SlidePatches:
        d = dict(d)
        d["patches"] = [Patch(**p) for p in d["patches"]]
        return cls(**d)


def load_slide_patches(qc_dir: Path, slide_id: str) -> SlidePatches | None:
    """The cached patches of a slide, or None."""
    path = os.path.join(qc_dir, "patches", slide_id, PATCHES_FILE)  # str: 5,060 calls per build
    try:
        with open(path, encoding="utf-8") as f:
            return SlidePatches.from_json(json.load(f))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_image(path: Path, rgb: np.ndarray, **kwargs: Any) -> None:
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path, durable=False) as tmp:  # regenerated by the next build if lost
        Image.fromarray(rgb).save(tmp, format=fmt, **kwargs)


def extract_review_patches(
    qc_dir: Path,
    slide_id: str,
    slide_path: str | None,
    nuclei_path: str | Path,
    stats_mpp: float,
    seed: int,
    n: int = N_PATCHES,
    cached: SlidePatches | None = None,
) -> SlidePatches:
    """Sample, draw and record one slide's review patches (reusing a matching cached set).

    ``cached`` is the slide's recorded patches.json, when the caller has already read it.
    A slide whose file is missing or unreadable gets no patches and a note saying why; it
    never stops the other slides.
    """
    from pipeline.io.readers import GlassWhereUnreadable, SlideError, low_resolution_view, open_slide
    from pipeline.kernels.tissue import tissue_mask

    if (
        cached is not None
        and cached.seed == seed
        and cached.n_requested == n
        and cached.patches
        and all(os.path.exists(os.path.join(qc_dir, p)) for p in cached.images)
        and (bool(cached.overlay) or not os.path.exists(nuclei_path))  # sets from before overlays: redone
    ):
        return cached
    result = SlidePatches(slide_id, seed, n, 0, stats_mpp, [], [], "", "")
    if not slide_path or not os.path.exists(slide_path):
        result.note = f"slide file missing ({slide_path}): no review patches"
        return result
    try:
        slide = open_slide(slide_path)  # a missing-mpp warning is silenced by the caller
    except SlideError as exc:
        result.note = f"slide unreadable ({exc}): no review patches"
        return result
    folder = qc_dir / "patches" / slide_id
    try:
        mpp = slide.mpp if slide.mpp else stats_mpp
        if not (mpp and math.isfinite(mpp) and mpp > 0):
            result.note = "no microns per pixel: no review patches"
            return result
        result.mpp = float(mpp)
        # tiles the decoder rejects show as glass (listed in the slide's stats.json), here as there
        view, downsample = low_resolution_view(slide, TISSUE_VIEW_PX, unreadable=[])
        readable = GlassWhereUnreadable(slide, [])
        mask = np.asarray(tissue_mask(view))
        if not mask.any():
            result.note = "no tissue found: patches sampled over the whole slide"
        side = patch_side_level0(mpp)
        result.side = side
        result.patches = sample_patches(mask, downsample, slide.level_dimensions[0], side, n, slide_rng(seed, slide_id))
        folder.mkdir(parents=True, exist_ok=True)
        polygons: list[list[np.ndarray]] = [[] for _ in result.patches]
        if os.path.exists(nuclei_path):
            polygons = read_polygons(nuclei_path, result.patches, NUCLEUS_REACH_UM / mpp)
        else:
            result.note = "; ".join(filter(None, [result.note, "nuclei.parquet missing: outlines not drawn"]))
        for p, polys in zip(result.patches, polygons, strict=True):
            region = readable.read_region(p.x, p.y, p.w, p.h, level=0)
            raw, over = render_review_image(region, polys, p.x, p.y)
            name = f"patch_{p.index:02d}.png"
            _write_image(folder / name, side_by_side(raw, over), compress_level=PNG_COMPRESS_LEVEL)
            result.images.append(f"patches/{slide_id}/{name}")
        thumb = Image.fromarray(view)
        thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        _write_image(folder / "thumbnail.jpg", np.asarray(thumb), quality=80)
        result.thumbnail = f"patches/{slide_id}/thumbnail.jpg"
        if os.path.exists(nuclei_path):
            xs, ys = read_centroids(nuclei_path)
            overlay = nuclei_overlay(view, slide.level_dimensions[0], xs, ys)
            _write_image(folder / "thumbnail_nuclei.jpg", overlay, quality=90, subsampling=0)  # 4:4:4 keeps dots
            result.overlay = f"patches/{slide_id}/thumbnail_nuclei.jpg"
    except Exception as exc:  # one bad slide never stops the cohort's QC; a full disk stops it
        if disk_full(exc):
            raise
        result.patches, result.images = [], []
        result.note = f"patch extraction failed ({type(exc).__name__}: {exc})"
        return result
    finally:
        slide.close()
    atomic_write_json(folder / PATCHES_FILE, result.to_json(), indent=1, sort_keys=True)
    return result
