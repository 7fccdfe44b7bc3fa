"""The work done for one slide, as plain functions that Dask runs on workers, one module per stage.

``plan`` (open, tissue mask, stain statistics, scale, tile grid; the estimate's cross-check of a
stated scale, ``check_slide_scale``, runs beside the tiles) → ``segment`` (read, normalise, infer,
watershed, keep the nuclei whose centroid lies in the core) for batches of tiles → ``assemble``
(maps.zarr level-0 shards from each core's own and neighbouring tiles) → ``reduce`` (nucleus
tables, the maps' lower pyramid levels, statistics, publication). Each function reads and
writes only the slide's working folder; none holds more than a few tiles (or one maps.zarr
shard) in memory, whatever the slide's size. ``inline`` runs the same stages in one process
(``pipeline.predict``, small slides). What the stages share lives apart from them: ``work`` (the
plan record, tiles and their scratch files, this process's model session) and ``model_input``
(what the network is given), so that no stage imports another's module to reach it.
"""

from pipeline.slide.assemble import assemble_labels, assembly_bands, chunks_to_assemble, label_offsets
from pipeline.slide.inline import finish_inline, process_slide_inline, start_slide
from pipeline.slide.plan import check_slide_scale, plan_slide
from pipeline.slide.reduce import reduce_slide
from pipeline.slide.segment import segment_tiles, segment_window
from pipeline.slide.work import SlidePlan, Tile, TileSummary, bands, batches, model_for

__all__ = [
    "SlidePlan",
    "Tile",
    "TileSummary",
    "assemble_labels",
    "assembly_bands",
    "bands",
    "batches",
    "check_slide_scale",
    "chunks_to_assemble",
    "finish_inline",
    "label_offsets",
    "model_for",
    "plan_slide",
    "process_slide_inline",
    "reduce_slide",
    "segment_tiles",
    "segment_window",
    "start_slide",
]
