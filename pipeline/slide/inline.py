"""A whole slide in one process: the stages run one after the other, without Dask
(``pipeline.predict``, tests, debugging, and slides small enough for one task)."""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.manifest import SlideEntry
from pipeline.slide.assemble import assemble_labels, chunks_to_assemble
from pipeline.slide.plan import check_slide_scale, plan_slide
from pipeline.slide.reduce import reduce_slide
from pipeline.slide.segment import segment_tiles
from pipeline.slide.work import SlidePlan, batches


def finish_inline(plan: SlidePlan) -> dict[str, Any]:
    """Segment, assemble and reduce a planned slide in this process (and make its scale check)."""
    scale_check = check_slide_scale(plan)
    summaries = [segment_tiles(plan, b) for b in batches(plan.tiles, plan.config.tiles_per_task)]
    assembled = [assemble_labels(plan, chunks_to_assemble(plan), summaries)]
    return reduce_slide(plan, summaries, assembled, scale_check)


def process_slide_inline(entry: SlideEntry, out_dir: str, config: Config) -> dict[str, Any]:
    """The whole slide in this process, without Dask (predict, tests, debugging)."""
    return finish_inline(plan_slide(entry, out_dir, config))


def start_slide(entry: SlideEntry, out_dir: str, config: Config) -> SlidePlan | dict[str, Any]:
    """Plan a slide; a slide small enough for one task (≤ ``tiles_per_task`` tiles) is finished
    in the same task and its stats returned, saving the scheduler four tasks and a round trip."""
    plan = plan_slide(entry, out_dir, config)
    if len(plan.tiles) <= config.tiles_per_task:
        return finish_inline(plan)
    return plan
