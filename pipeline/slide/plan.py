"""Planning a slide: open it, find its tissue on a low-resolution view, compute its stain
statistics once, lay the tile grid over the tissue and create its working folder.

The :class:`SlidePlan` it returns is all the later stages (``segment``, ``assemble``,
``reduce``) need to know about the slide; it is small and shipped to every task.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.io.outputs.maps import create_maps, shard_tiles
from pipeline.io.outputs.publish import new_partial_dir, remove_stale_partials, scratch_dir
from pipeline.io.readers import SlideError, UnreadableTile, choose_reader, low_resolution_view, open_slide
from pipeline.kernels.artifacts import artifact_mask, artifact_masks, artifacts_on_tissue
from pipeline.kernels.stain import MacenkoStains, StainStats, macenko_stains, reinhard_stats
from pipeline.kernels.tissue import tissue_mask
from pipeline.manifest import SlideEntry
from pipeline.slide.inputs import slide_inputs
from pipeline.slide.scale import ScaleCheck, check_stated_scale, decide_scale
from pipeline.slide.work import ARTIFACT_MASK_FILE, SlidePlan, model_for
from pipeline.tiling import TileGrid, default_tile_px, derive_halo_px

SCALE_TISSUE_FILE = "scale_tissue.npy"  # scratch: packed bits of the view's ink-free tissue, for the scale check
MIN_ARTIFACT_MM2 = 0.001  # smallest artifact region (~32 µm across): specks are not ink
ARTIFACT_NOTE_SHARE = 0.05  # artifacts over this share of the tissue get a QC note (a judgement: 1/20 is worth a look)


def plan_slide(entry: SlideEntry, out_dir: str, config: Config) -> SlidePlan:
    """Open the slide, find its tissue on a low-resolution view, compute its stain statistics
    once, lay the tile grid over the tissue and create the slide's working folder."""
    started = time.perf_counter()
    reader = choose_reader(entry.slide_path, config.reader)
    model = model_for(config)
    with open_slide(entry.slide_path, reader) as slide:
        width, height = slide.level_dimensions[0]
        view_level_px = 0
        view_started = time.perf_counter()
        unreadable: list[UnreadableTile] = []  # tiles of the view's level the decoder rejects: glass, listed
        view, view_ds = low_resolution_view(slide, config.tissue_view_px, unreadable=unreadable)
        if unreadable:
            lw, lh = slide.level_dimensions[unreadable[0].level]
            view_level_px = lw * lh
        tissue = tissue_mask(view)
        # Stain statistics and scale sample windows come from tissue without anything ink-like
        # (ink would shift the normalisation of every tile); which artifacts are excluded from
        # segmentation is decided below, once the scale gives their size in µm².
        provisional_px = min_artifact_px(view_ds, entry.mpp or slide.mpp or model.mpp)
        masks = artifact_masks(view, provisional_px)
        clean = tissue & ~artifact_mask(masks)
        stain: StainStats | MacenkoStains | None = None
        if config.stain == "reinhard":
            stain = reinhard_stats(view, clean)
        elif config.stain == "macenko":
            stain = macenko_stains(view, clean)
        tissue_view_s = time.perf_counter() - view_started  # view, tissue mask, ink-free tissue, stain statistics
        scale_started = time.perf_counter()
        try:
            scale = decide_scale(
                entry.slide_id,
                entry.mpp,
                slide,
                clean,
                view_ds,
                model,
                stain,
                estimate=config.estimate_scale,
                prefer_estimate=config.prefer_estimate,
                default_mpp=config.default_mpp,
                max_mpp=config.max_mpp,
                low_resolution_mpp=config.low_resolution_mpp,
                tolerance=config.scale_tolerance,
                seed=slide_seed(entry.slide_id),
                check_later=True,
            )
        except ValueError as exc:
            raise SlideError(str(exc)) from exc
        scale_s = time.perf_counter() - scale_started
    artifacts_started = time.perf_counter()
    mpp = scale.mpp
    view_px_mm2 = (view_ds * mpp) ** 2 / 1e6
    tissue_mm2 = float(tissue.sum()) * view_px_mm2
    if min_artifact_px(view_ds, mpp) != provisional_px:  # the scale found differs: regions sized again
        masks = artifact_masks(view, min_artifact_px(view_ds, mpp))
    excluded, artifact_mm2, note = find_artifacts(masks, tissue, view_px_mm2)
    flags, notes = list(scale.flags), list(scale.warnings)
    if note:
        flags.append("artifacts")
        notes.append(note)
    tissue = tissue & ~excluded
    tissue_view_s += time.perf_counter() - artifacts_started  # artifacts measured on the view
    halo = config.halo_px if config.halo_px >= 0 else derive_halo_px(model.context_px, config.max_nucleus_px)
    tile_px = config.tile_px or default_tile_px(halo, on_gpu=model.device != "cpu")
    grid = TileGrid.for_slide(width, height, mpp, model.mpp, tile_px, halo)
    tiles = tuple(grid.tiles_over(tissue, view_ds))
    remove_stale_partials(Path(out_dir), entry.slide_id)
    work = new_partial_dir(Path(out_dir), entry.slide_id)
    scratch_dir(work).mkdir()
    if scale.check_pending:  # the cross-check runs beside the tiles, on the same tissue
        np.save(scratch_dir(work) / SCALE_TISSUE_FILE, np.packbits(clean, axis=None))
    if excluded.any():
        np.save(work / ARTIFACT_MASK_FILE, np.packbits(excluded, axis=None))
    shard = shard_tiles(grid.core0, config.map_shard_px) * grid.core0
    create_maps(work, width, height, mpp, grid.core0, shard, config.save_probabilities)
    return SlidePlan(
        slide_id=entry.slide_id,
        cancer_type=entry.cancer_type,
        slide_path=str(entry.slide_path),
        reader=reader,
        width=width,
        height=height,
        mpp=mpp,
        mpp_source=scale.source,
        mpp_field=scale.field,
        mpp_estimate=scale.estimate,
        flags=tuple(flags),
        warnings=tuple(notes),
        grid=grid,
        tiles=tiles,
        stain=stain,
        tissue_mm2=tissue_mm2,
        artifact_mm2=artifact_mm2,
        artifact_view=(view.shape[0], view.shape[1], view_ds) if excluded.any() else None,
        work_dir=str(work),
        out_dir=out_dir,
        model_path=str(model.path),
        model_sha256=model.sha256,
        thresholds=model.thresholds,
        config=config,
        inputs=slide_inputs(entry.slide_path, entry.mpp, model.sha256, config),
        stage_seconds={
            "plan": time.perf_counter() - started - tissue_view_s - scale_s,
            "tissue_view": tissue_view_s,
            "scale": scale_s,
        },
        unreadable_view=tuple(unreadable),
        view_level_px=view_level_px,
        scale_check_view=(clean.shape[0], clean.shape[1], view_ds) if scale.check_pending else None,
    )


def check_slide_scale(plan: SlidePlan) -> ScaleCheck | None:
    """The estimate's cross-check of the slide's stated resolution that planning left for later
    (it cannot change the resolution the tiles are segmented at, so it runs beside them; its
    flags and notes join the slide's in ``reduce``); None when there is none to make."""
    if plan.scale_check_view is None:
        return None
    tissue, view_ds = scale_check_tissue(plan)
    with open_slide(plan.slide_path, plan.reader) as slide:
        return check_stated_scale(
            plan.slide_id,
            plan.mpp,
            plan.mpp_field,
            slide,
            tissue,
            view_ds,
            model_for(plan.config, plan.model_path),
            plan.stain,
            tolerance=plan.config.scale_tolerance,
            seed=slide_seed(plan.slide_id),
        )


def scale_check_tissue(plan: SlidePlan) -> tuple[np.ndarray, float]:
    """The view's ink-free tissue the planning kept for the scale check, and the view's downsample."""
    assert plan.scale_check_view is not None
    rows, cols, view_ds = plan.scale_check_view
    bits = np.load(scratch_dir(Path(plan.work_dir)) / SCALE_TISSUE_FILE)
    return np.unpackbits(bits)[: rows * cols].reshape(rows, cols).astype(bool), view_ds


def find_artifacts(
    masks: dict[str, np.ndarray], tissue: np.ndarray, view_px_mm2: float
) -> tuple[np.ndarray, dict[str, float], str | None]:
    """From the view's artifact masks by kind: the pixels to exclude (artifacts on the tissue,
    whether the tissue mask counted them or not: dark ink is grey), their area (mm²) by kind, and
    a note when they cover more than ``ARTIFACT_NOTE_SHARE`` of the tissue."""
    artifacts = artifacts_on_tissue(masks, tissue)
    excluded = artifact_mask(artifacts)
    artifact_mm2 = {k: round(float(m.sum()) * view_px_mm2, 4) for k, m in artifacts.items()}
    covered = float((tissue | excluded).sum())
    share = float(excluded.sum()) / covered if covered else 0.0
    if share <= ARTIFACT_NOTE_SHARE:
        return excluded, artifact_mm2, None
    kinds = ", ".join(f"{k.replace('_', ' ')} {v:.2f} mm²" for k, v in artifact_mm2.items() if v > 0)
    return excluded, artifact_mm2, f"artifacts cover {share:.0%} of the tissue ({kinds}); excluded from segmentation"


def min_artifact_px(view_ds: float, mpp: float) -> int:
    """The smallest artifact region, in pixels of the low-resolution view."""
    return max(4, int(round(MIN_ARTIFACT_MM2 / ((view_ds * mpp) ** 2 / 1e6))))


def slide_seed(slide_id: str) -> int:
    """A seed of the slide's own, so that its sample windows do not depend on the run."""
    return int.from_bytes(hashlib.sha256(slide_id.encode()).digest()[:4], "little")
