"""Generated fixtures for tests and benchmarks: synthetic H&E-like slides with known nuclei,
and a small classical model that meets the ONNX contract.

Nothing here is used by a real run: the pipeline's default model is the trained one shipped in
``pipeline/model/weights``.
"""

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


def synthetic_slide_image(width: int, height: int, seed: int = 0, radius: tuple[float, float] = (5.0, 8.0),
                          spacing: float = 26.0, tissue: str = "disc") -> tuple[np.ndarray, list[SyntheticNucleus]]:
    """An RGB image of pink tissue on white glass holding well-separated purple nuclei
    (discs on a jittered grid), and the nuclei's true centres and radii."""
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


def write_pyramidal_tiff(path: Path, image: np.ndarray, mpp: float, compression: str = "jpeg",
                         tile: int = 256, levels: int = 3, aperio: bool = True) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF (SVS-like when ``aperio``), with MPP metadata."""
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
        tif.write(image, description=description, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                  subfiletype=0, metadata=None, **kwargs)
        level = image
        for _ in range(1, levels):
            if min(level.shape[:2]) < 2 * tile:
                break
            lh, lw = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:lh, :lw].reshape(lh // 2, 2, lw // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            tif.write(level, subfiletype=1, metadata=None, **kwargs)
    return path


def build_blob_model(path: Path, mpp: float = 0.25) -> Path:
    """A classical nucleus detector written as an ONNX graph that meets the model contract:
    darkness (1 − mean RGB) blurred at two scales and squashed by sigmoids gives the
    nuclear-material map (small blur) and the centre map (large blur, peaks at blob centres)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def gaussian(sigma: float, radius: int) -> np.ndarray:
        ax = np.arange(-radius, radius + 1, dtype=np.float32)
        g = np.exp(-(ax**2) / (2 * sigma**2))
        k = np.outer(g, g)
        return (k / k.sum()).astype(np.float32)

    small, large = gaussian(1.0, 3), gaussian(3.0, 9)
    w_dark = np.full((1, 3, 1, 1), -1.0 / 3.0, dtype=np.float32)
    inits = [
        numpy_helper.from_array(w_dark, "w_dark"),
        numpy_helper.from_array(np.array([1.0], np.float32), "b_dark"),
        numpy_helper.from_array(small[None, None], "w_small"),
        numpy_helper.from_array(large[None, None], "w_large"),
        numpy_helper.from_array(np.array([30.0], np.float32), "gain_m"),
        numpy_helper.from_array(np.array([-0.35], np.float32), "shift_m"),
        numpy_helper.from_array(np.array([40.0], np.float32), "gain_c"),
        numpy_helper.from_array(np.array([-0.42], np.float32), "shift_c"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w_dark", "b_dark"], ["dark"]),
        helper.make_node("Conv", ["dark", "w_small"], ["dark_s"], pads=[3, 3, 3, 3]),
        helper.make_node("Conv", ["dark", "w_large"], ["dark_l"], pads=[9, 9, 9, 9]),
        helper.make_node("Add", ["dark_s", "shift_m"], ["m0"]),
        helper.make_node("Mul", ["m0", "gain_m"], ["m1"]),
        helper.make_node("Add", ["dark_l", "shift_c"], ["c0"]),
        helper.make_node("Mul", ["c0", "gain_c"], ["c1"]),
        helper.make_node("Concat", ["c1", "m1"], ["logits"], axis=1),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes,
        "blob_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "mpp": str(mpp),
        "version": "test-blob-1",
        "training_data": "none (classical detector for tests)",
        "centre_sigma": "1.0",
        "centre_threshold": "0.5",
        "material_sigma": "0.5",
        "material_threshold": "0.5",
        "min_area_px": "20",
        "context_px": "16",
        "receptive_field_px": "25",
    }
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
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


def synthetic_cohort(folder: Path, n: int, width: int, height: int, seed: int = 0, prefix: str = "s",
                     cancer_types: tuple[str, ...] = ("BRCA",)) -> Path:
    """``n`` generated pyramidal slides in ``folder`` and their manifest (relative paths; cancer
    types assigned in turn); returns the manifest's path."""
    rows = ["slide_path,slide_id,cancer_type"]
    for i in range(n):
        image, _ = synthetic_slide_image(width, height, seed=seed + i)
        write_pyramidal_tiff(folder / f"{prefix}{i}.svs", image, mpp=0.25)
        rows.append(f"{prefix}{i}.svs,{prefix}{i},{cancer_types[i % len(cancer_types)]}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest
