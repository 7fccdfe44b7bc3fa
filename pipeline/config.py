"""One frozen configuration for a run: defaults → YAML file → environment → command line.

The resolved config is written into every run.json, so a result can always be traced to
the settings that made it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.io.readers import READER_CHOICES
from pipeline.runtime import RUNTIME_CHOICES

ENV_PREFIX = "NUCLEI_"

# The values a choice may take, declared once: config validation and every command line use
# these (readers and runtimes come from their registries).
STAIN_CHOICES = ("reinhard", "macenko", "none")
DEVICE_CHOICES = ("auto", "cpu", "gpu")
CHOICES: dict[str, tuple[str, ...]] = {
    "stain": STAIN_CHOICES,
    "reader": READER_CHOICES,
    "device": DEVICE_CHOICES,
    "runtime": RUNTIME_CHOICES,
}


@dataclass(frozen=True)
class Config:
    # --- model and resolution ---
    model: str = ""  # path to an ONNX model; empty = the model shipped in the package
    default_mpp: float = 0.25  # µm/px assumed (with a warning) when neither slide nor manifest says
    # --- tiling (pixels at the model's resolution) ---
    tile_px: int = 1024  # tile core; the label map's chunks are this core in level-0 pixels
    halo_px: int = -1  # -1 = derived: model context + largest nucleus (see pipeline.tiling)
    max_nucleus_px: int = 96  # largest nucleus extent at 40x (MoNuSeg max area 5147 px² ≈ 81 px)
    tiles_per_task: int = 2  # tiles inferred per Dask task (≥100 ms of work per task)
    # --- tissue and stain ---
    tissue_view_px: int = 2048  # long side of the low-resolution view used for tissue + stain stats
    stain: str = "reinhard"  # one of STAIN_CHOICES
    # --- outputs ---
    save_probabilities: bool = False  # also write uint8 probability maps into maps.zarr
    write_geojson: bool = True
    # --- execution ---
    reader: str = "auto"  # one of READER_CHOICES (forcing a reader is for experts and tests)
    scheduler: str = ""  # address or scheduler-file of an existing dask-scheduler; empty = local
    n_workers: int = 0  # local cluster workers; 0 = sized to the machine
    threads_per_worker: int = 0  # 0 = cores / workers
    memory_limit: str = "auto"  # per local worker
    slides_in_flight: int = 0  # slides being processed at once; 0 = 3 × worker threads (at least 4)
    max_attempts: int = 3  # a slide that kills workers this many times is marked failed
    intra_op_threads: int = 0  # ONNX Runtime threads per session; 0 = one (tasks run in parallel)
    # --- device ---
    device: str = "auto"  # one of DEVICE_CHOICES: where the stages after the file read run (auto: GPU if present)
    runtime: str = "auto"  # one of RUNTIME_CHOICES (torch runs the same ONNX graph where ORT-GPU is absent)
    half: bool = False  # fp16 inference on the GPU (validated within 0.005 AJI of fp32)
    trt_cache_dir: str = ""  # TensorRT engine cache folder; empty = no cache
    progress: bool = True

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any) -> Any:
    field = {f.name: f for f in fields(Config)}[name]
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def load_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> Config:
    """Resolve the config: defaults, then a YAML file, then NUCLEI_* variables, then overrides."""
    names = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    if yaml_path:
        import yaml

        data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{yaml_path}: unknown config keys: {', '.join(sorted(unknown))}")
        values.update(data)
    env = os.environ if environ is None else environ
    for name in names:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    config = Config(**{k: _coerce(k, v) for k, v in values.items()})
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    problems = []
    if config.tile_px < 64 or config.tile_px % 16:
        problems.append(f"tile_px={config.tile_px} must be a multiple of 16 and ≥ 64")
    if config.halo_px != -1 and (config.halo_px < 0 or config.halo_px % 16):
        problems.append(f"halo_px={config.halo_px} must be -1 (derived) or a multiple of 16")
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
    if config.tiles_per_task < 1:
        problems.append("tiles_per_task must be ≥ 1")
    if config.max_attempts < 1:
        problems.append("max_attempts must be ≥ 1")
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


# The settings that change what a slide's published outputs hold (with the model's sha256 and the
# slide's own inputs): a rerun redoes a slide made with other values. Execution settings (reader,
# device, runtime, workers, ...) are meant to give the same outputs and are left out.
OUTPUT_FIELDS: tuple[str, ...] = (
    "default_mpp",
    "tile_px",
    "halo_px",
    "max_nucleus_px",
    "tissue_view_px",
    "stain",
    "save_probabilities",
    "write_geojson",
    "half",
)
