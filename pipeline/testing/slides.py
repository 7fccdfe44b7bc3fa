"""Generated slides for tests and benchmarks: synthetic H&E-like images with known nuclei,
written as pyramidal TIFFs, and cohorts of them with their manifests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PINK = np.array([236, 178, 205], dtype=np.float32)  # eosin-stained stroma
PURPLE = np.array([92, 60, 140], dtype=np.float32)  # haematoxylin-stained nucleus


@dataclass(frozen=True)
class SyntheticNucleus:
    x: float  # level-0 px
    y: float
    radius: float


def synthetic_slide_image(
    width: int,
    height: int,
    seed: int = 0,
    radius: tuple[float, float] = (5.0, 8.0),
    spacing: float = 26.0,
    tissue: str = "disc",
) -> tuple[np.ndarray, list[SyntheticNucleus]]:
    """An RGB image of pink tissue on white glass holding well-separated purple nuclei
    (discs on a jittered grid), and the nuclei's true centres and radii.

    Parameters
    ----------
    width, height : int
        Size of the image, in px.
    seed : int, optional
        Seed of the jitter, radii and noise.
    radius : (float, float), optional
        Range of the nuclei's radii, in px.
    spacing : float, optional
        Spacing of the nuclei's grid, in px.
    tissue : str, optional
        ``"disc"``: an elliptical tissue region inside white glass; anything else: tissue
        everywhere.

    Returns
    -------
    image : np.ndarray
        RGB uint8 array, height×width×3.
    nuclei : list of SyntheticNucleus
        Each nucleus's centre (x, y) and radius, in px.
    """
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 246, dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    if tissue == "disc":
        inside = ((xx - width / 2) / (0.45 * width)) ** 2 + ((yy - height / 2) / (0.45 * height)) ** 2 < 1
    else:
        inside = np.ones((height, width), dtype=bool)
    img[inside] = PINK
    nuclei = []
    for cy in np.arange(spacing / 2, height, spacing):
        for cx in np.arange(spacing / 2, width, spacing):
            x = cx + rng.uniform(-spacing * 0.1, spacing * 0.1)
            y = cy + rng.uniform(-spacing * 0.1, spacing * 0.1)
            if not inside[min(int(y), height - 1), min(int(x), width - 1)]:
                continue
            r = rng.uniform(*radius)
            y0, y1 = max(0, int(y - r - 2)), min(height, int(y + r + 3))
            x0, x1 = max(0, int(x - r - 2)), min(width, int(x + r + 3))
            d = np.hypot(yy[y0:y1, x0:x1] - y, xx[y0:y1, x0:x1] - x)
            img[y0:y1, x0:x1][d <= r] = PURPLE
            nuclei.append(SyntheticNucleus(float(x), float(y), float(r)))
    noise = rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img + noise, 0, 255).astype(np.uint8), nuclei


# A Hamamatsu VMS slide's JPEGs are read in strips between restart markers: one per MCU row here
# (8 px with 4:4:4 sampling), and each file's height a multiple of it, as OpenSlide requires.
VMS_MCU_PX = 8
VMS_MAP_DOWNSAMPLE = 4  # the map file: a smaller copy of the whole slide, OpenSlide's level 1


def write_hamamatsu_vms(folder: Path, image: np.ndarray, mpp: float, columns: int = 2, rows: int = 2) -> Path:
    """Write ``image`` as a Hamamatsu VMS slide in ``folder``: an index (``slide.vms``) naming a
    ``columns`` × ``rows`` grid of JPEG files with restart markers and a map JPEG, with the
    physical size (nm) that gives ``mpp``, following the format as OpenSlide documents it. The
    JPEGs use 4:4:4 sampling, so any decoder returns the same pixels. Returns the index's path.

    Parameters
    ----------
    folder : Path
        Where the files are written (created).
    image : np.ndarray
        RGB uint8 image, H×W×3; each piece a whole number of 8 px blocks.
    mpp : float
        Resolution, in µm/px.
    columns, rows : int, optional
        The grid of JPEG files.

    Returns
    -------
    Path
        The index file, ``slide.vms``.

    Raises
    ------
    ValueError
        When the image does not split into whole 8 px blocks.
    RuntimeError
        When Pillow writes no JPEG restart markers (before 10.2).
    """
    from PIL import Image

    h, w = image.shape[:2]
    piece_w, piece_h = w // columns, h // rows
    if piece_w * columns != w or piece_h * rows != h or piece_w % VMS_MCU_PX or piece_h % VMS_MCU_PX:
        raise ValueError(f"a {w}×{h} image does not split into {columns}×{rows} JPEGs of whole 8 px blocks")
    folder.mkdir(parents=True, exist_ok=True)
    jpeg: dict[str, Any] = {"quality": 90, "subsampling": 0, "restart_marker_rows": 1}
    index = [
        "[Virtual Microscope Specimen]",
        "NoLayers=1",
        f"NoJpegColumns={columns}",
        f"NoJpegRows={rows}",
        f"PhysicalWidth={round(w * mpp * 1000)}",
        f"PhysicalHeight={round(h * mpp * 1000)}",
        f"SourceLens={10 / mpp:g}",
        "MapFile=map.jpg",
    ]
    for row in range(rows):
        for col in range(columns):
            name = f"image_{col}_{row}.jpg"
            piece = image[row * piece_h : (row + 1) * piece_h, col * piece_w : (col + 1) * piece_w]
            Image.fromarray(np.ascontiguousarray(piece)).save(folder / name, **jpeg)
            if b"\xff\xdd" not in (folder / name).read_bytes()[:4096]:  # DRI: the restart interval
                raise RuntimeError("this Pillow writes no JPEG restart markers (restart_marker_rows needs Pillow 10.2)")
            index.append(f"ImageFile={name}" if (col, row) == (0, 0) else f"ImageFile({col},{row})={name}")
    f = VMS_MAP_DOWNSAMPLE
    mh, mw = h // f // VMS_MCU_PX * VMS_MCU_PX, w // f // VMS_MCU_PX * VMS_MCU_PX
    small = image[: mh * f, : mw * f].reshape(mh, f, mw, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    Image.fromarray(small).save(folder / "map.jpg", **jpeg)
    path = folder / "slide.vms"
    path.write_text("\r\n".join(index) + "\r\n")
    return path


def write_pyramidal_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float,
    compression: str = "jpeg",
    tile: int = 256,
    levels: int = 3,
    aperio: bool = True,
) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF (SVS-like when ``aperio``), with MPP metadata.

    Parameters
    ----------
    path : Path
        The file to write.
    image : np.ndarray
        Level 0, RGB uint8 H×W×3.
    mpp : float
        Resolution of level 0, in µm/px (in the description and the resolution tags).
    compression : str, optional
        tifffile's compression name.
    tile : int, optional
        Tile side, in px.
    levels : int, optional
        Most levels, each half the previous; levels under two tiles wide are not written.
    aperio : bool, optional
        Write an Aperio image description.

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    h, w = image.shape[:2]
    description = (
        f"Aperio Image Library v12.0.0\r\n{w}x{h} ({tile}x{tile}) JPEG/RGB Q=90|AppMag = {10 / mpp:g}|MPP = {mpp}"
        if aperio
        else ""
    )
    kwargs: dict[str, Any] = {"compression": compression, "tile": (tile, tile), "photometric": "rgb"}
    if compression == "jpeg":
        kwargs["compressionargs"] = {"level": 92}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(
            image,
            description=description,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            subfiletype=0,
            metadata=None,
            **kwargs,
        )
        level = image
        for _ in range(1, levels):
            if min(level.shape[:2]) < 2 * tile:
                break
            lh, lw = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:lh, :lw].reshape(lh // 2, 2, lw // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            tif.write(level, subfiletype=1, metadata=None, **kwargs)
    return path


def tiny_cohort(folder: Path, n: int, side: int = 64) -> list:
    """``n`` tiny one-level TIFF slides (ten cancer types) and their manifest entries, for
    measuring what a long manifest costs the scheduler."""
    import tifffile

    from pipeline.manifest import SlideEntry

    image, _ = synthetic_slide_image(side, side, seed=0, tissue="full", spacing=20)
    entries = []
    for i in range(n):
        path = folder / f"t{i:05d}.tiff"
        tifffile.imwrite(path, image, compression="zlib")
        entries.append(SlideEntry(f"t{i:05d}", path, cancer_type=f"T{i % 10}", mpp=0.25))
    return entries


def synthetic_slide_cohort(
    folder: Path,
    n: int,
    width: int,
    height: int,
    seed: int = 0,
    prefix: str = "s",
    cancer_types: tuple[str, ...] = ("BRCA",),
) -> Path:
    """``n`` generated pyramidal slides in ``folder`` and their manifest (relative paths; cancer
    types assigned in turn); returns the manifest's path.

    Parameters
    ----------
    folder : Path
        Where the slides and manifest are written.
    n : int
        Number of slides.
    width, height : int
        Size of each slide, in px (0.25 µm/px).
    seed : int, optional
        Seed of the first slide; slide i uses ``seed + i``.
    prefix : str, optional
        Prefix of the slides' ids and file names.
    cancer_types : tuple of str, optional
        Cancer types, assigned in turn.

    Returns
    -------
    Path
        The manifest, ``manifest.csv``.
    """
    rows = ["slide_path,slide_id,cancer_type"]
    for i in range(n):
        image, _ = synthetic_slide_image(width, height, seed=seed + i)
        write_pyramidal_tiff(folder / f"{prefix}{i}.svs", image, mpp=0.25)
        rows.append(f"{prefix}{i}.svs,{prefix}{i},{cancer_types[i % len(cancer_types)]}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def glass_tiff(path: Path, width: int, height: int, tile: int = 256) -> Path:
    """A one-level tiled TIFF of white glass whatever its declared size: every tile is the same
    Deflate-compressed bytes, so a 300,000 × 1,000 px file is ~1 MB and is written in a second
    (hostile input for the reader's memory and time bounds).

    Parameters
    ----------
    path : Path
        The file to write.
    width, height : int
        Declared size of the image, in px.
    tile : int, optional
        Tile side, in px.

    Returns
    -------
    Path
        ``path``.
    """
    import math
    import zlib

    import tifffile

    encoded = zlib.compress(np.full((tile, tile, 3), 255, np.uint8).tobytes())
    n = math.ceil(width / tile) * math.ceil(height / tile)
    tifffile.imwrite(
        path,
        (encoded for _ in range(n)),
        shape=(height, width, 3),
        dtype="uint8",
        tile=(tile, tile),
        compression="zlib",
        photometric="rgb",
        bigtiff=width * height * 3 > 2**31,
    )
    return path


def synthetic_label_region(
    width: int,
    height: int,
    region: tuple[int, int, int, int],
    seed: int = 0,
    radius: tuple[float, float] = (5.0, 8.0),
    spacing: float = 26.0,
) -> np.ndarray:
    """The window ``region`` = (x0, y0, x1, y1) of a generated ``width``×``height`` slide's label
    map (uint32): nuclei as in ``synthetic_slide_image`` (discs on a jittered grid, on a tissue
    disc), one id per grid cell. Each window is computed on its own, so a label map of any size
    is made window by window in bounded memory (benchmarks of maps.zarr).

    Parameters
    ----------
    width, height : int
        Size of the whole slide, in px.
    region : (int, int, int, int)
        The window (x0, y0, x1, y1), in px, x1 and y1 excluded.
    seed : int, optional
        Seed of the nuclei's jitter and radii.
    radius : (float, float), optional
        Range of the nuclei's radii, in px.
    spacing : float, optional
        Spacing of the nuclei's grid, in px.

    Returns
    -------
    np.ndarray
        uint32 labels of the window, (y1 - y0)×(x1 - x0), 0 = background.
    """
    x0, y0, x1, y1 = region
    cols = int(np.ceil(width / spacing))
    ys, xs = np.arange(y0, y1, dtype=np.float32), np.arange(x0, x1, dtype=np.float32)
    row, col = (ys // spacing).astype(np.int64), (xs // spacing).astype(np.int64)
    # the grid cells the window touches: each cell's centre and radius from an integer hash of
    # (cell, seed), so no state is shared between windows
    rows, cells_x = np.arange(row[0], row[-1] + 1), np.arange(col[0], col[-1] + 1)
    cell = rows[:, None] * cols + cells_x[None, :]
    u = [((cell * 2654435761 + (seed * 3 + k) * 40503 + 12345) % 2**32 * 2246822519 % 2**32) / 2**32 for k in range(3)]
    cy = (rows[:, None] + 0.5) * spacing + (u[0] - 0.5) * 0.2 * spacing
    cx = (cells_x[None, :] + 0.5) * spacing + (u[1] - 0.5) * 0.2 * spacing
    r = radius[0] + u[2] * (radius[1] - radius[0])
    inside = ((cx - width / 2) / (0.45 * width)) ** 2 + ((cy - height / 2) / (0.45 * height)) ** 2 < 1
    ids = np.where(inside, cell + 1, 0).astype(np.uint32)
    # per pixel: its cell's index in the window's cells, then the disc test
    iy, ix = row - rows[0], col - cells_x[0]
    dy = ys[:, None] - cy.astype(np.float32)[iy][:, ix]
    dx = xs[None, :] - cx.astype(np.float32)[iy][:, ix]
    nucleus = dy * dy + dx * dx <= (r.astype(np.float32) ** 2)[iy][:, ix]
    return np.where(nucleus, ids[iy][:, ix], np.uint32(0))
