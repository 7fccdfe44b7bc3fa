"""Scale from the image: a slide's resolution estimated from its own nuclei.

The model was trained at 40x (0.25 µm/px), where its nuclei have a known median area
(``REFERENCE_AREA_PX``, measured on the training images). Read at an assumed resolution ``g``,
a slide of true resolution ``m`` shows nuclei whose area at model resolution is the reference
times ``(g / m)²``; so ``m ≈ g · sqrt(reference / measured)``. The estimate segments a few
tissue windows at a starting scale and iterates that to a fixed point, from two starts (40x and
10x), keeping the fixed point where the model is surest of its nucleus centres (from one start
only, a 10x slide read as 40x can settle at 40x: clumps of small nuclei pass for one). Per-window
estimates give the confidence (the share that agree with the result within 1.25×). It is
independent of the metadata, so it can check it.

Nucleus size varies between tissues (the 30 MoNuSeg images' median nucleus areas span 0.5–1.5×
their geometric mean), and a few sample windows see one tissue compartment: on correctly labelled
images the estimate/metadata ratio spans 0.63–2.18 (shipped model 1.4.0). So the per-slide cross-check catches gross
errors only (``DISAGREEMENT``, e.g. 10x read as 40x); a slide labelled 2x wrong is caught by the
cohort QC, against its cancer type's median ratio (``pipeline.qc.scale_outliers``). The estimate
tells 10x from 20x from 40x, but it is not a substitute for a scanner's own calibration; figures
in benchmarks/RESULTS-scale.md.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import FINEST_SCANNER_MPP, Config
from pipeline.io.readers import Slide, UnreadableRegion
from pipeline.kernels.nuclei import instances_from_probabilities
from pipeline.kernels.stain import MacenkoStains, StainStats
from pipeline.runtime import NucleusModel
from pipeline.slide.model_input import model_input, normalise_stain

# Median nucleus area (px at the model's resolution) the shipped model finds on its 23 training
# images at their true 40x scale (benchmarks/scale_estimate.py --calibrate): 396 px for 1.4.0
# (the file of REFERENCE_MODEL_SHA256; 416 px for the models before it). A model can state its
# own in its metadata as `median_nucleus_area_px`; a new shipped model needs this measured again
# (a test compares the shipped file with REFERENCE_MODEL_SHA256).
REFERENCE_AREA_PX = 396.0
REFERENCE_MODEL_SHA256 = "c4aef2ff35c8c9a4eed4cd2252ea1ead2ce4e24d60e9afe8a9691dfa5dd40224"
WINDOW_PX = 256  # side of one sample window at model resolution (~64 µm at 40x)
N_WINDOWS = 6
MIN_NUCLEI = 20  # fewer nuclei than this over all windows: no estimate
# A later start's fixed point replaces an earlier one when the model is surer of its centres by
# more than this. A margin of 0.015 would keep CMU-1-Small-Region (20x; 0.955 vs 0.959 for its
# fixed points at 0.46 and 0.93 µm/px) from a false scale_disagreement, but it sends 2 of the 7
# held-out images at 10x back to 40x (benchmarks/RESULTS-scale.md): a false flag asks for a look,
# a 10x slide read as 40x is silently wrong, so there is none.
CERTAINTY_MARGIN = 0.0
START_MAGNIFICATIONS = (1.0, 4.0)  # first reads at the model's resolution and at a quarter of it (10x)
CONVERGED = 1.1  # a pass that moves the estimate by less than this factor ends the search
AGREEMENT = 1.25  # a window agrees with the estimate when within this factor of it
MPP_RANGE = (0.05, 16.0)  # estimates are clipped to this range (80x-oversampled to far coarser than 2 µm/px)


@dataclass(frozen=True)
class ScaleEstimate:
    mpp: float  # µm per level-0 pixel
    confidence: float  # share of sample windows whose own estimate agrees within AGREEMENT
    n_nuclei: int  # nuclei measured in the last pass
    n_windows: int

    def as_stats(self) -> dict[str, Any]:
        return {"mpp_estimate": round(self.mpp, 4), "mpp_estimate_confidence": round(self.confidence, 2)}


def reference_area(model: NucleusModel) -> float:
    return float(model.metadata.get("median_nucleus_area_px", REFERENCE_AREA_PX))


def own_scale_reference(model: NucleusModel) -> bool:
    """Whether the model states its own reference nucleus area. The second start (whose
    centre-certainty criterion was checked on the shipped model only) applies to the shipped
    model; a model with its own reference is used from one start."""
    return "median_nucleus_area_px" in model.metadata


def tissue_windows(
    tissue: np.ndarray, view_ds: float, size: tuple[int, int], side0: int, n: int, seed: int = 0
) -> list[tuple[int, int]]:
    """Top-left corners (level-0 px) of up to ``n`` windows of ``side0`` px centred on tissue
    pixels of the low-resolution mask, spread over the tissue (deterministic for a seed).

    Parameters
    ----------
    tissue : np.ndarray
        Bool tissue mask of the low-resolution view, rows × columns.
    view_ds : float
        Level-0 px per mask pixel.
    size : (int, int)
        (width, height) of level 0, in px; windows are clamped inside it.
    side0 : int
        Side of a window, in level-0 px.
    n : int
        Most windows returned.
    seed : int, optional
        Seed of the random choice of tissue pixels when there are more than ``n``.

    Returns
    -------
    list of (int, int)
        (x, y) top-left corners in level-0 px, in raster order of their tissue pixels; empty
        when the mask holds no tissue.

    Examples
    --------
    >>> mask = np.zeros((10, 10), bool); mask[4:6, 4:6] = True
    >>> tissue_windows(mask, 10.0, (100, 100), 20, 1)
    [(45, 45)]
    """
    width, height = size
    ys, xs = np.nonzero(tissue)
    if ys.size == 0:
        return []
    rng = np.random.default_rng(seed)
    picks = rng.choice(ys.size, size=min(n, ys.size), replace=False) if ys.size > n else np.arange(ys.size)
    corners = []
    for i in sorted(picks, key=lambda k: (ys[k], xs[k])):
        cx, cy = (xs[i] + 0.5) * view_ds, (ys[i] + 0.5) * view_ds
        x = int(round(min(max(cx - side0 / 2, 0), max(width - side0, 0))))
        y = int(round(min(max(cy - side0 / 2, 0), max(height - side0, 0))))
        corners.append((x, y))
    return corners


def _read_at(
    slide: Slide,
    corner: tuple[int, int],
    side0: int,
    mpp: float,
    model: NucleusModel,
    stain: StainStats | MacenkoStains | None,
) -> tuple[np.ndarray, float]:
    """One window read as if at ``mpp``: the areas (px at model resolution) of its nuclei, and
    how sure the model is of their centres (99.5th percentile of the centre probability)."""
    import scipy.ndimage as ndi

    window = slide.read_region(corner[0], corner[1], side0, side0, 0)
    zoom = mpp / model.mpp
    side = max(32, int(round(side0 * zoom)) // 16 * 16)
    rgb = np.asarray(
        ndi.zoom(window, (side / window.shape[0], side / window.shape[1], 1), order=1, grid_mode=True, mode="nearest")
    )
    prob = model.predict(model_input([normalise_stain(rgb, stain)], side))[0]
    labels = instances_from_probabilities(prob, model.thresholds)
    areas = np.bincount(labels.ravel())
    cut = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas[cut] = 0  # nuclei the window's edge cuts would read small
    areas = areas[1:]
    return areas[areas > 0].astype(np.float64), float(np.percentile(prob[0], 99.5))


def _fixed_point(
    slide: Slide,
    tissue: np.ndarray,
    view_ds: float,
    model: NucleusModel,
    stain: StainStats | MacenkoStains | None,
    start: float,
    passes: int,
    seed: int,
) -> tuple[float, float, float, int, int] | None:
    """Iterate m ← m·sqrt(reference / measured) from ``start``: (raw estimate, centre certainty at
    the last pass, window agreement, nuclei, windows), or None when too few nuclei are found."""
    ref = reference_area(model)
    mpp = start
    size = slide.level_dimensions[0]
    found = None
    for _ in range(passes):
        side0 = min(max(16, int(round(WINDOW_PX * model.mpp / mpp))), max(size))
        corners = tissue_windows(tissue, view_ds, size, side0, N_WINDOWS, seed)
        reads = []
        for corner in corners:
            try:
                reads.append(_read_at(slide, corner, side0, mpp, model, stain))
            except UnreadableRegion:  # a tile the decoder rejects: the window is left out (segmentation names it)
                continue
        per_window = [areas for areas, _ in reads]
        pooled = np.concatenate(per_window) if per_window else np.zeros(0)
        if pooled.size < MIN_NUCLEI:
            return found
        new = float(np.clip(mpp * math.sqrt(ref / np.median(pooled)), *MPP_RANGE))
        estimates = [mpp * math.sqrt(ref / np.median(a)) for a in per_window if a.size >= 3]
        agree = sum(1 for e in estimates if 1 / AGREEMENT <= e / new <= AGREEMENT) / max(len(estimates), 1)
        certainty = float(np.median([c for _, c in reads]))
        found = (new, certainty, agree, int(pooled.size), len(corners))
        converged = abs(math.log(new / mpp)) < math.log(CONVERGED)
        mpp = new
        if converged:
            break
    return found


def estimate_mpp(
    slide: Slide,
    tissue: np.ndarray,
    view_ds: float,
    model: NucleusModel,
    stain: StainStats | MacenkoStains | None,
    starts: tuple[float, ...] = START_MAGNIFICATIONS,
    passes: int = 4,
    seed: int = 0,
) -> ScaleEstimate | None:
    """The slide's resolution from its nuclei, or None when too few nuclei are found (no tissue,
    blank glass).

    The size iteration can settle where it started: a 10x slide read as 40x shows clumps of
    several small nuclei whose size passes for one. So it starts from each of ``starts`` (factors
    of the model's resolution), and keeps the fixed point where the model is surest of its nucleus
    centres (``CERTAINTY_MARGIN``): the centre map's 99.5th percentile is ≈ 0.99 at the right
    scale and falls to 0.87–0.97 at 4× off on the validation images.

    Parameters
    ----------
    slide : Slide
        The open slide.
    tissue : np.ndarray
        Bool tissue mask of the slide's low-resolution view.
    view_ds : float
        Level-0 px per view pixel.
    model : NucleusModel
        The nucleus model; its ``mpp`` (µm per model px) sets the resolution it segments at.
    stain : StainStats, MacenkoStains or None
        The slide's stain statistics for the normalisation; None: no normalisation.
    starts : tuple of float, optional
        Starting resolutions of the size iteration, as factors of the model's mpp.
    passes : int, optional
        Most passes of the size iteration from each start.
    seed : int, optional
        Seed of the choice of sample windows.

    Returns
    -------
    ScaleEstimate or None
        The estimated µm per level-0 px with its confidence and the nuclei and windows it rests
        on; None when too few nuclei are found.
    """
    best = None
    for factor in starts[:1] if own_scale_reference(model) else starts:
        found = _fixed_point(slide, tissue, view_ds, model, stain, model.mpp * factor, passes, seed)
        if found is not None and (best is None or found[1] > best[1] + CERTAINTY_MARGIN):
            best = found
    if best is None:
        return None
    raw, _, agree, n_nuclei, n_windows = best
    return ScaleEstimate(raw, agree, n_nuclei, n_windows)


# ------------------------------------------------------------------------- the decision ----

DISAGREEMENT = Config.scale_tolerance  # metadata and estimate further apart: a warning and a QC note
# The longest side of a glass slide (mm): a standard 3 × 1 inch slide is 76.2 mm long, and whole-mount
# slides (75 × 50 mm) are no longer. A resolution that makes the scanned image longer than this is
# wrong, and would plan a tile grid over that much imagined tissue.
MAX_SLIDE_MM = 80.0


@dataclass(frozen=True)
class SlideScale:
    """The resolution a slide is segmented at, where it came from, and what a person should know."""

    mpp: float
    source: str  # manifest | slide | estimate | default
    field: str | None  # metadata field or manifest column; None for estimate and default
    estimate: ScaleEstimate | None
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    check_pending: bool = False  # the estimate's cross-check is still to be made (check_stated_scale)

    def describe(self) -> str:
        """'0.499 µm/px from Aperio MPP', '0.958 µm/px estimated from the nuclei'."""
        where = {"estimate": "estimated from the nuclei", "default": "assumed (the default; nothing else known)"}
        return f"{self.mpp:.3g} µm/px " + (f"from {self.field}" if self.field else where[self.source])


def decide_scale(
    slide_id: str,
    manifest_mpp: float | None,
    slide: Slide,
    tissue: np.ndarray,
    view_ds: float,
    model: NucleusModel,
    stain: StainStats | MacenkoStains | None,
    *,
    estimate: bool,
    prefer_estimate: bool,
    default_mpp: float,
    max_mpp: float,
    low_resolution_mpp: float,
    tolerance: float = DISAGREEMENT,
    seed: int = 0,
    check_later: bool = False,
) -> SlideScale:
    """The slide's resolution: the manifest's, else its metadata's, else estimated from its
    nuclei, else the default (with a warning). With ``estimate`` the estimate also cross-checks
    a stated resolution; with ``check_later`` too, a cross-check that cannot change the
    resolution (a stated one, without ``prefer_estimate``) is left to :func:`check_stated_scale`,
    run beside the tiles (``SlideScale.check_pending``). Raises ValueError, naming the value and
    its source, when the slide is too coarse to segment nuclei.

    Parameters
    ----------
    slide_id : str
        The slide's id, prefixed to the warnings.
    manifest_mpp : float or None
        The resolution the manifest states, in µm per level-0 px; None when it states none.
    slide : Slide
        The open slide.
    tissue : np.ndarray
        Bool tissue mask of the slide's low-resolution view.
    view_ds : float
        Level-0 px per view pixel.
    model : NucleusModel
        The nucleus model; its ``mpp`` (µm per model px) sets the resolution it segments at.
    stain : StainStats, MacenkoStains or None
        The slide's stain statistics for the normalisation; None: no normalisation.
    estimate : bool
        Whether to estimate the resolution from the nuclei also when one is stated, to cross-check it.
    prefer_estimate : bool
        Whether an estimate that disagrees with the stated resolution replaces it.
    default_mpp : float
        The resolution assumed, in µm/px, when none is stated and none can be estimated.
    max_mpp : float
        The coarsest resolution segmented, in µm/px; a coarser slide is refused.
    low_resolution_mpp : float
        Coarser than this (µm/px), the slide is flagged ``low_resolution``.
    tolerance : float, optional
        Ratio between stated and estimated resolution beyond which they disagree (both ways).
    seed : int, optional
        Seed of the estimate's choice of sample windows.
    check_later : bool, optional
        Leave a cross-check that cannot change the resolution to :func:`check_stated_scale`.

    Returns
    -------
    SlideScale
        The resolution to segment at, its source and field, the estimate, and the flags and notes
        (each note is also issued as a warning).

    Raises
    ------
    ValueError
        When the slide is too coarse to segment nuclei, longer than a glass slide at that
        resolution, or finer than any scanner.
    """
    flags: list[str] = []
    notes: list[str] = []
    mpp, source, field = _stated_scale(manifest_mpp, slide, flags, notes)
    stated = source in ("manifest", "slide")
    pending = stated and estimate and check_later and not prefer_estimate
    found = None
    if (estimate or not stated) and not pending:
        found = plausible_estimate(estimate_mpp(slide, tissue, view_ds, model, stain, seed=seed), notes)
    if not stated:
        if found is not None:
            mpp, source = found.mpp, "estimate"
            notes.append(
                f"no resolution in the slide or the manifest: {found.mpp:.3g} µm/px estimated from "
                f"{found.n_nuclei} nuclei (confidence {found.confidence:.2f})"
            )
        else:
            mpp, source = default_mpp, "default"
            flags.append("mpp_default")
            notes.append(
                f"no resolution in the slide or the manifest and too few nuclei to estimate one: "
                f"assumed {default_mpp} µm/px (set the manifest's mpp column)"
            )
    elif found is not None and disagrees(mpp, found, tolerance):
        flags.append("scale_disagreement")
        chosen = found.mpp if prefer_estimate else mpp
        notes.append(disagreement_note(mpp, field, found, chosen))
        if prefer_estimate:
            mpp, source, field = found.mpp, "estimate", None
    scale = SlideScale(mpp, source, field, found, tuple(flags), tuple(notes), pending)
    _refuse_impossible(scale, max(slide.level_dimensions[0]), model.mpp, max_mpp)
    if mpp > low_resolution_mpp:
        flags.append("low_resolution")
        notes.append(
            f"{scale.describe()} is coarser than {low_resolution_mpp} µm/px: nuclei are small; check the review patches"
        )
        scale = SlideScale(mpp, source, field, found, tuple(flags), tuple(notes), pending)
    for note in notes:
        warnings.warn(f"{slide_id}: {note}", stacklevel=2)
    return scale


def _stated_scale(
    manifest_mpp: float | None, slide: Slide, flags: list[str], notes: list[str]
) -> tuple[float, str, str | None]:
    """(mpp, source, field) stated by the manifest, else by the slide's metadata (flagging
    non-square pixels), else (nan, "", None)."""
    res = slide.resolution
    if manifest_mpp:
        return float(manifest_mpp), "manifest", "manifest mpp column"
    if res is None:
        return float("nan"), "", None
    if not res.square:
        flags.append("non_square_pixels")
        notes.append(f"non-square pixels ({res.describe()}); segmented at the x spacing")
    return res.mpp, "slide", res.field


def _refuse_impossible(scale: SlideScale, long_side_px: int, model_mpp: float, max_mpp: float) -> None:
    """Raise ValueError, naming the value and its source, for a resolution no slide can be
    segmented at: too coarse, making the slide longer than a glass slide, or finer than any scanner."""
    mpp = scale.mpp
    if mpp > max_mpp:
        raise ValueError(f"{scale.describe()} is too coarse to segment nuclei (limit {max_mpp})")
    length_mm = long_side_px * mpp / 1000
    if length_mm > MAX_SLIDE_MM:
        raise ValueError(
            f"{scale.describe()} makes the slide {length_mm:,.0f} mm long ({long_side_px:,} px), "
            f"longer than any glass slide ({MAX_SLIDE_MM:.0f} mm): is the resolution right?"
        )
    if mpp < FINEST_SCANNER_MPP:  # an estimate this fine was dropped before: a stated value
        raise ValueError(
            f"{scale.describe()} is finer than any slide scanner's (limit {FINEST_SCANNER_MPP}): a mistake? "
            f"(segmenting at it would read {model_mpp / mpp:.0f}× each tile's side); give the right mpp in the manifest"
        )


def plausible_estimate(found: ScaleEstimate | None, notes: list[str]) -> ScaleEstimate | None:
    """The estimate, or None (with a note) when it is finer than any scanner: not a resolution."""
    if found is not None and found.mpp < FINEST_SCANNER_MPP:
        notes.append(
            f"the nuclei suggest {found.mpp:.3g} µm/px, finer than any scanner: not a resolution (is this H&E tissue?)"
        )
        return None
    return found


def disagrees(mpp: float, found: ScaleEstimate, tolerance: float) -> bool:
    return not 1 / tolerance <= found.mpp / mpp <= tolerance


def disagreement_note(mpp: float, field: str | None, found: ScaleEstimate, chosen: float) -> str:
    """The note for a stated resolution and an estimate that disagree, with the one segmented at.

    Parameters
    ----------
    mpp : float
        The stated resolution, in µm per level-0 px.
    field : str or None
        The metadata field or manifest column it came from.
    found : ScaleEstimate
        The estimate from the nuclei.
    chosen : float
        The resolution the slide is segmented at, in µm/px.

    Returns
    -------
    str
        One line for the slide's warnings.
    """
    return (
        f"{mpp:.3g} µm/px from {field} but {found.mpp:.3g} estimated from the nuclei "
        f"({found.mpp / mpp:.2f}×); segmented at {chosen:.3g}"
    )


@dataclass(frozen=True)
class ScaleCheck:
    """The estimate's cross-check of a stated resolution, made beside the tiles: what it found,
    and the flags and notes it adds to the slide's."""

    estimate: ScaleEstimate | None
    flags: tuple[str, ...]
    warnings: tuple[str, ...]
    seconds: float


def check_stated_scale(
    slide_id: str,
    mpp: float,
    field: str | None,
    slide: Slide,
    tissue: np.ndarray,
    view_ds: float,
    model: NucleusModel,
    stain: StainStats | MacenkoStains | None,
    *,
    tolerance: float = DISAGREEMENT,
    seed: int = 0,
) -> ScaleCheck:
    """The cross-check :func:`decide_scale` leaves for later (``check_later``): the estimate from
    the nuclei against the stated ``mpp``, which stays the slide's resolution (the same flags and
    notes as the check made at once).

    Parameters
    ----------
    slide_id : str
        The slide's id, prefixed to the warnings.
    mpp : float
        The stated resolution, in µm per level-0 px.
    field : str or None
        The metadata field or manifest column it came from.
    slide : Slide
        The open slide.
    tissue : np.ndarray
        Bool tissue mask of the slide's low-resolution view.
    view_ds : float
        Level-0 px per view pixel.
    model : NucleusModel
        The nucleus model; its ``mpp`` (µm per model px) sets the resolution it segments at.
    stain : StainStats, MacenkoStains or None
        The slide's stain statistics for the normalisation; None: no normalisation.
    tolerance : float, optional
        Ratio between stated and estimated resolution beyond which they disagree (both ways).
    seed : int, optional
        Seed of the estimate's choice of sample windows.

    Returns
    -------
    ScaleCheck
        The estimate, the flags and notes it adds (each note is also issued as a warning), and the
        seconds it took.
    """
    started = time.perf_counter()
    notes: list[str] = []
    flags: list[str] = []
    found = plausible_estimate(estimate_mpp(slide, tissue, view_ds, model, stain, seed=seed), notes)
    if found is not None and disagrees(mpp, found, tolerance):
        flags.append("scale_disagreement")
        notes.append(disagreement_note(mpp, field, found, mpp))
    for note in notes:
        warnings.warn(f"{slide_id}: {note}", stacklevel=2)
    return ScaleCheck(found, tuple(flags), tuple(notes), time.perf_counter() - started)
