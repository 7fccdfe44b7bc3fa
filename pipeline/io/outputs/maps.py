"""``maps.zarr``: the slide's label map (and, on request, its probability maps) as OME-Zarr.

The layout is OME-NGFF 0.5 (Zarr v3, metadata under the ``ome`` attribute key), the version
ome-zarr-py 0.18 (the reader behind napari-ome-zarr) reads and writes with Zarr v3::

    maps.zarr/                    labels group of the slide:  ome.labels = ["labels"]
    maps.zarr/labels/             image-label, multiscales (y, x in micrometre)
    maps.zarr/labels/0 1 2 …      uint32 nucleus ids (= nuclei.parquet ids), level 0 = the slide's grid
    maps.zarr/probabilities/      multiscales (c, y, x), only with save_probabilities
    maps.zarr/probabilities/0 …   uint8 centre and material probability × 255

Every level is a sharded Zarr v3 array: inner chunks of one tile core, shards of
``shard_tiles`` × ``shard_tiles`` cores, so a slide is a few hundred files, not one per tile.
Level 0 is written shard by shard by the label-assembly tasks (each shard by exactly one task:
concurrent writers to one shard would corrupt it); the lower levels halve the one above by
taking every second pixel (nearest neighbour: ids stay ids, and level k's pixel ``i`` *is*
level 0's pixel ``2**k * i``, so a scale of ``2**k * mpp`` places it exactly, with no
translation) until the long side is at most ``PYRAMID_TOP_PX``; they are built in the slide's
reduce, one shard at a time, so memory is bounded by a shard whatever the slide's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAPS_DIR = "maps.zarr"
LABELS = "labels"
PROBABILITIES = "probabilities"
NGFF_VERSION = "0.5"  # OME-NGFF on Zarr v3; ome-zarr-py 0.18 / napari-ome-zarr read it (0.4 is Zarr v2)
PYRAMID_TOP_PX = 1024  # the pyramid halves until the long side fits this (a screen-sized overview)
# zstd level of the label arrays: on the shipped model's 4096² generated slide (all levels,
# 1024² chunks in 4096² shards) level 9 stores them in 1.56 MB against 1.87 at zarr's default (3),
# for ~17 s more compression per Gpx; levels 5–7 gain 4 %, 12 no more than 9 at 3× the time.
# It keeps a slide's default outputs under 200 MB per million nuclei (benchmarks/RESULTS-outputs.md).
LABELS_ZSTD_LEVEL = 9
PROBABILITY_CHANNELS = ("centre", "material")  # the model's first two outputs, the maps a run keeps
_UINT8_WINDOW = {"start": 0, "end": 255, "min": 0, "max": 255}
_SPACE = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]


def shard_tiles(core: int, shard_px: int) -> int:
    """Tile cores per shard side: as many whole cores as fit in ``shard_px`` level-0 px (at least one).

    >>> shard_tiles(1024, 4096), shard_tiles(1013, 4096), shard_tiles(5000, 4096)
    (4, 4, 1)
    """
    return max(1, shard_px // core)


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(height, width) of each level: level 0, then halved (rounded up) until the long side is at
    most ``PYRAMID_TOP_PX``.

    >>> pyramid_shapes(3000, 5000)
    [(3000, 5000), (1500, 2500), (750, 1250), (375, 625)]
    >>> pyramid_shapes(800, 600)
    [(800, 600)]
    """
    shapes = [(height, width)]
    while max(shapes[-1]) > PYRAMID_TOP_PX:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _datasets(levels: int, mpp: float, leading: list[float]) -> list[dict[str, Any]]:
    return [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [*leading, mpp * 2**k, mpp * 2**k]}]}
        for k in range(levels)
    ]


def _multiscale(name: str, axes: list[dict[str, str]], datasets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "nearest",
        "metadata": {"description": "each level takes every second pixel of the level above"},
    }


def create_maps(folder: Path, width: int, height: int, mpp: float, chunk: int, shard: int, probabilities: bool) -> None:
    """An empty ``maps.zarr`` in ``folder`` for a ``width``×``height`` slide at ``mpp`` µm/px: every
    level's array with chunks ``chunk`` (the tile core) and shards ``shard`` level-0 px (a multiple
    of ``chunk``), and the OME-NGFF metadata; level 0 is then filled by the assembly, the lower
    levels by ``build_pyramid``.

    Parameters
    ----------
    folder : Path
        The slide's working folder; ``maps.zarr`` is created in it (replacing one there).
    width, height : int
        Size of the slide's level 0, in px.
    mpp : float
        The slide's resolution, in µm per level-0 px (the OME-NGFF scale).
    chunk : int
        Chunk side, in px (the same at every level): the tile core.
    shard : int
        Shard side, in px (the same at every level); a multiple of ``chunk``.
    probabilities : bool
        Whether to create the probability maps too (uint8, one channel per model output,
        ``PROBABILITY_CHANNELS``).

    Raises
    ------
    ValueError
        When ``shard`` is not a multiple of ``chunk``.
    """
    import zarr
    from zarr.codecs import ZstdCodec

    if shard % chunk:
        raise ValueError(f"maps.zarr shard side {shard} px is not a multiple of the chunk side {chunk} px")
    shapes = pyramid_shapes(height, width)
    root = zarr.open_group(str(folder / MAPS_DIR), mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": NGFF_VERSION, "labels": [LABELS]}
    labels = root.create_group(LABELS)
    for k, shape in enumerate(shapes):
        labels.create_array(
            str(k),
            shape=shape,
            chunks=(chunk, chunk),
            shards=(shard, shard),
            dtype="uint32",
            fill_value=0,
            compressors=[ZstdCodec(level=LABELS_ZSTD_LEVEL)],
            dimension_names=("y", "x"),
        )
    labels.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(LABELS, _SPACE, _datasets(len(shapes), mpp, []))],
        "image-label": {},
    }
    if not probabilities:
        return
    group = root.create_group(PROBABILITIES)
    for k, shape in enumerate(shapes):
        group.create_array(
            str(k),
            shape=(len(PROBABILITY_CHANNELS), *shape),
            chunks=(len(PROBABILITY_CHANNELS), chunk, chunk),
            shards=(len(PROBABILITY_CHANNELS), shard, shard),
            dtype="uint8",
            fill_value=0,
            dimension_names=("c", "y", "x"),
        )
    channel_axis = {"name": "c", "type": "channel"}
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(PROBABILITIES, [channel_axis, *_SPACE], _datasets(len(shapes), mpp, [1.0]))],
        "omero": {
            "channels": [
                {"label": name, "color": color, "active": True, "window": _UINT8_WINDOW}
                for name, color in zip(PROBABILITY_CHANNELS, ("FF00FF", "00FFFF"), strict=True)
            ],
            "rdefs": {"model": "color"},
        },
    }


def open_maps(folder: Path) -> Any:
    """The ``maps.zarr`` group in ``folder`` (a slide folder, published or partial), writable."""
    import zarr

    return zarr.open_group(str(folder / MAPS_DIR), mode="r+")


def open_labels(folder: Path, level: int = 0) -> Any:
    """The label map of the slide folder ``folder`` at pyramid ``level`` (0 = the slide's grid), read-only."""
    import zarr

    return zarr.open_array(str(folder / MAPS_DIR / LABELS / str(level)), mode="r")


def level0(maps: Any, name: str) -> Any:
    """Level 0 of the multiscale ``name`` (``LABELS`` or ``PROBABILITIES``) in ``maps``, None when absent."""
    return maps[f"{name}/0"] if name in maps else None


def build_pyramid(folder: Path) -> None:
    """Fill levels 1, 2, … of every multiscale in ``folder``'s maps.zarr from the level above,
    one shard of the level being written at a time (an all-zero shard is not written)."""
    maps = open_maps(folder)
    for name in (LABELS, PROBABILITIES):
        if name not in maps:
            continue
        group = maps[name]
        levels = len(group.attrs["ome"]["multiscales"][0]["datasets"])
        for k in range(1, levels):
            halve_into(group[str(k - 1)], group[str(k)])


def halve_into(source: Any, target: Any) -> None:
    """``target`` = every second pixel of ``source`` along its last two axes, written one whole
    shard of ``target`` at a time. A shard is gathered one row of its chunks at a time (each read
    takes that row's footprint in ``source`` with a step), so what is decoded at once is two rows
    of ``source``'s chunks across one shard's footprint, not the footprint of the whole shard."""
    height, width = target.shape[-2:]
    shard_y, shard_x = (target.shards or target.chunks)[-2:]
    rows = target.chunks[-2]
    for y0 in range(0, height, shard_y):
        y1 = min(y0 + shard_y, height)
        for x0 in range(0, width, shard_x):
            x1 = min(x0 + shard_x, width)
            block = np.zeros((*target.shape[:-2], y1 - y0, x1 - x0), dtype=target.dtype)
            for r0 in range(y0, y1, rows):
                r1 = min(r0 + rows, y1)
                block[..., r0 - y0 : r1 - y0, :] = source[..., 2 * r0 : 2 * r1 : 2, 2 * x0 : 2 * x1 : 2]
            if block.any():
                target[..., y0:y1, x0:x1] = block
