"""``maps.zarr``: the slide's label map (and, on request, probability maps) on the level-0 grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_maps(folder: Path, width: int, height: int, chunk: int, probabilities: bool) -> None:
    """maps.zarr with ``labels`` (uint32, level-0 grid, chunks = tile core) and optionally
    ``probabilities`` (uint8, 2×H×W: centre, material)."""
    import zarr

    root = zarr.open_group(str(folder / "maps.zarr"), mode="w")
    root.create_array("labels", shape=(height, width), chunks=(chunk, chunk), dtype="uint32", fill_value=0)
    if probabilities:
        root.create_array(
            "probabilities", shape=(2, height, width), chunks=(2, chunk, chunk), dtype="uint8", fill_value=0
        )
    root.attrs["coordinates"] = "level-0 pixels of the slide"


def open_maps(folder: Path) -> Any:
    import zarr

    return zarr.open_group(str(folder / "maps.zarr"), mode="r+")
