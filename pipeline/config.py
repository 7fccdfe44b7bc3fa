"""One frozen configuration for a run: defaults → YAML file → environment → command line.

The resolved config is written into every run.json, so a result can always be traced to
the settings that made it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from pipeline.io.input_files import read_input_file
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
    default_mpp: float = 0.25  # µm/px assumed (with a warning) when no metadata says and no estimate is possible
    estimate_scale: bool = True  # estimate the resolution from the nuclei: used without metadata, else a cross-check
    prefer_estimate: bool = False  # when metadata and estimate disagree beyond scale_tolerance, run at the estimate
    # metadata and estimate further apart than this factor: flagged scale_disagreement. A check for gross errors
    # (10x read as 40x): on correctly labelled images the estimate/metadata ratio reaches 0.63 and 2.18 (tissue;
    # benchmarks/RESULTS-scale.md); a 2x mislabel is left to the cohort QC, within the slide's cancer type
    scale_tolerance: float = 3.0
    max_mpp: float = 2.0  # coarser than this (µm/px) a slide is refused: nuclei are a few pixels wide
    low_resolution_mpp: float = 0.6  # coarser than this (up to max_mpp) a slide runs, flagged low_resolution
    # --- tiling (pixels at the model's resolution) ---
    # tile core; 0 = derived (pipeline.tiling.default_tile_px): 1024 where tiles run on the CPU, on a GPU
    # the smallest core whose window is ≤ 1.35× its area. The label map's chunks are the core in level-0 px
    tile_px: int = 0
    halo_px: int = -1  # -1 = derived: model context + a nucleus's reach from its centroid (see pipeline.tiling)
    max_nucleus_px: int = 96  # largest nucleus extent at 40x (MoNuSeg max area 5147 px² ≈ 81 px)
    tiles_per_task: int = 2  # tiles inferred per Dask task (≥100 ms of work per task)
    # --- tissue and stain ---
    tissue_view_px: int = 2048  # long side of the low-resolution view used for tissue + stain stats
    stain: str = "reinhard"  # one of STAIN_CHOICES
    # --- outputs ---
    save_probabilities: bool = False  # also write uint8 probability maps into maps.zarr
    # nuclei.parquet (GeoParquet) is always written; the paper's CSV and QuPath's GeoJSON cost ~310 and
    # ~670 bytes per nucleus more (benchmarks/RESULTS-outputs.md), so they are written on request, or
    # later from nuclei.parquet (python -m pipeline.export)
    write_csv: bool = False
    write_geojson: bool = False
    # side of a maps.zarr shard (one file) in level-0 px, rounded down to whole tile cores: a 40x
    # slide of 100k² px is at most 625 level-0 shards of 4096² (not up to 9,604 chunk files of
    # 1024²), and an assembly task holds one shard (64 MB of uint32 ids) at a time
    # (benchmarks/RESULTS-outputs.md)
    map_shard_px: int = 4096
    # --- execution ---
    reader: str = "auto"  # one of READER_CHOICES (forcing a reader is for experts and tests)
    scheduler: str = ""  # address or scheduler-file of an existing dask-scheduler; empty = local
    n_workers: int = 0  # local cluster workers; 0 = sized to the machine
    threads_per_worker: int = 0  # 0 = cores / workers
    memory_limit: str = "auto"  # per local worker
    # where a local run's dashboard listens: this machine only by default (it shows worker logs and
    # folders and lets anyone who reaches it see the run); "0.0.0.0:8787" opens it on purpose, "off" none
    dashboard: str = "127.0.0.1:8787"
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


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def _coerce_bool(name: str, value: Any, where: str) -> bool:
    """A yes/no setting: a bool as it is, else one of the words people write for yes and no
    (environment variables and options arrive as text)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(f"{where}{name}={value!r} is not a yes/no value (true, false, 1, 0, yes, no, on, off)")


def _coerce_int(name: str, value: Any, where: str) -> int:
    """A whole-number setting. A bool is refused (YAML reads ``yes`` as True, which int() would
    take as 1), and a float only when it is whole (YAML reads ``1e3`` as a float)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}{name}={value!r} is not a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{where}{name}={value!r} is not a whole number")
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where}{name}={value!r} is not a whole number") from None


def _coerce_float(name: str, value: Any, where: str) -> float:
    """A number setting; NaN and infinities are refused, since every bound check would pass or
    fail on them silently."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}{name}={value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{where}{name}={value!r} is not a finite number")
    return number


def _coerce_text(name: str, value: Any, where: str) -> str:
    """A text setting: any single value as its text; a YAML mapping or list is refused rather
    than turned into its Python repr."""
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}{name} must be a single value, not a {type(value).__name__}")
    return str(value)


# Each field's type, resolved from its annotation (the module's annotations are text until resolved).
_FIELD_TYPES: dict[str, type] = get_type_hints(Config)
_COERCERS: dict[type, Callable[[str, Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_text,
}


def _coerce(name: str, value: Any, source: str = "") -> Any:
    """``value`` as the type of the field ``name``; a value of another kind is an error naming
    where it came from (a YAML file, a NUCLEI_* variable, an option), never silently changed."""
    where = f"{source}: " if source else ""
    return _COERCERS.get(_FIELD_TYPES[name], _coerce_text)(name, value, where)


def load_config(
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    source: str = "the command line",
) -> Config:
    """Resolve the config: defaults, then a YAML file, then NUCLEI_* variables, then overrides.

    Parameters
    ----------
    yaml_path : str, Path or None
        A YAML file of ``Config`` fields (at most 64 KiB, a regular file); None = none.
    overrides : dict or None
        Fields set last (the command line's options, or an API call's keyword arguments).
    environ : dict or None
        Where the ``NUCLEI_*`` variables are read; None = ``os.environ``.
    source : str
        Where the overrides come from, as messages name it.

    Returns
    -------
    Config
        The resolved, validated settings.

    Raises
    ------
    ValueError
        One message naming every key that is unknown or out of bounds, and where it came from.
    """
    names = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise ValueError(f"{source}: {unknown_settings(unknown, names)}")
    values: dict[str, tuple[Any, str]] = {}
    if yaml_path:
        for name, value in read_config_file(Path(yaml_path)).items():
            values[name] = (value, str(yaml_path))
    env = os.environ if environ is None else environ
    unknown_env = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in _known_env_names(names))
    if unknown_env:
        raise ValueError(
            f"unknown environment variable {unknown_env[0]}: a NUCLEI_* variable is a config key in capitals "
            f"(NUCLEI_TILE_PX, ...; {_closest_env_name(unknown_env[0], names)}) or one of "
            f"{', '.join(ENV_VARIABLES_ELSEWHERE)}; unset it or fix its name"
        )
    for name in names:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = (env[key], key)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = (value, source)
    config = Config(**{k: _coerce(k, v, source) for k, (v, source) in values.items()})
    validate_config(config)
    validate_for_machine(config, usable_cores(), total_memory_bytes())
    return config


def unknown_settings(unknown: list[str], names: set[str]) -> str:
    """The message for settings that are no field of :class:`Config`, with the nearest names.

    >>> unknown_settings(["tile_size"], {"tile_px", "halo_px", "stain"})
    "unknown setting 'tile_size' (did you mean 'tile_px'?); the settings are the fields of pipeline.config.Config"
    """
    import difflib

    said = []
    for name in unknown:
        near = difflib.get_close_matches(name, sorted(names), n=1)
        said.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown setting{plural} {', '.join(said)}; the settings are the fields of pipeline.config.Config"


# NUCLEI_* variables read outside the config (each where it is used): any other is a typo, refused
# rather than silently ignored.
ENV_VARIABLES_ELSEWHERE = (
    "NUCLEI_RMM_POOL",  # pipeline.cluster: the RMM pool's share of each GPU's memory
    "NUCLEI_CACHE",  # pipeline.cli.example: where the example slide is kept
    "NUCLEI_REQUIRE_TORCH",  # tests/conftest.py: CI fails instead of skipping the PyTorch tests
    "NUCLEI_DATA_DIR",  # pipeline.io.annotations: where the real data of tests and benchmarks lies
)


def _known_env_names(names: set[str]) -> set[str]:
    return {ENV_PREFIX + name.upper() for name in names} | set(ENV_VARIABLES_ELSEWHERE)


def _closest_env_name(key: str, names: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(_known_env_names(names)), n=1)
    return f"did you mean {close[0]}?" if close else "no config key is close to it"


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file (safe loading: no Python objects)."""
    import yaml

    try:
        text = read_input_file(path, MAX_CONFIG_BYTES, "config file").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        # a flat file of settings has no use for aliases; refusing them keeps an alias bomb from expanding
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise ValueError(f"{path}: YAML aliases (*name) are not accepted in a config file")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not a readable YAML config file: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds key: value lines, not a {type(data).__name__}")
    names = {f.name for f in fields(Config)}
    unknown = {str(k) for k in data} - names
    if unknown:
        raise ValueError(f"{path}: unknown config keys: {', '.join(sorted(unknown))}")
    return data


MAX_CONFIG_BYTES = 65536
MAX_TILE_PX = 8192  # a tile's core, at the model's resolution (its halo comes on top)
# The resolutions a slide can be segmented at (µm/px). Finer than FINEST_SCANNER_MPP is beyond
# any slide scanner (an 80x scan is ≈ 0.125): such a value is a mistake, and at the model's 0.25 it
# would read windows of (0.25/mpp)² times a tile's pixels. Coarser than COARSEST_MPP a nucleus
# (5-10 µm across) spans two pixels or less, and the model's tiles would be upsampled from cores
# of under 1/16 of their side: max_mpp (the limit a run uses, default 2.0) cannot go beyond it.
FINEST_SCANNER_MPP = 0.1
COARSEST_MPP = 4.0
# The largest nucleus a run may be told to expect, in px at 40x (64 µm): the largest of the 16,958
# MoNuSeg training nuclei is 142 px across, the default 96. The halo grows with it (two thirds of it
# on each side, pipeline.tiling), and with it every tile's window.
MAX_NUCLEUS_PX = 256
# An explicit halo, at the model's resolution: four times the shipped model's derived halo (176 =
# its measured context of 100 px + the reach of a 96-px nucleus), and as wide as the CPU tile core;
# a 1024-px core with it is read as a 3072² window (9× its area, ~4 GB of ONNX Runtime arena at the
# measured ~430 bytes a window pixel). Wider only multiplies the pixels inferred per nucleus found.
MAX_HALO_PX = 1024
# Local worker processes per core. Each worker holds its own model session (an ONNX Runtime arena of
# ~755 MB for a 1024-px tile, benchmarks/RESULTS-pipeline.md) and its tasks compete for the same
# cores: more workers than cores adds processes, memory and context switches, not speed.
MAX_WORKERS_PER_CORE = 1
# Task threads per core in a local cluster (workers × threads): inference and the watershed keep a
# core busy each; twice the cores leaves room for reads waiting on the disk.
MAX_THREADS_PER_CORE = 2
# The least memory a local worker may be given: one task's ONNX Runtime arena for a 1024-px tile
# (~755 MB measured) plus the interpreter with the package, model and a tile's arrays (~0.3 GB).
# Below it a worker passes Dask's limit on its first tile and is restarted, again and again.
MIN_WORKER_MEMORY_BYTES = 1 << 30


def _memory_limit_ok(value: str) -> bool:
    from dask.utils import parse_bytes

    text = value.strip().lower()
    if text == "auto":
        return True
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return 0 <= number  # 0 = no limit, (0, 1] = share of memory, more = bytes
    try:
        return parse_bytes(text) > 0
    except (ValueError, TypeError):
        return False


def _tiling_problems(config: Config) -> list[str]:
    """The tile core and halo: multiples of 16 (the model's input multiple), within bounds that
    keep a tile's window a size one task can infer, and no halo wider than its core."""
    problems = []
    if config.tile_px != 0 and (config.tile_px < 64 or config.tile_px % 16):
        problems.append(f"tile_px={config.tile_px} must be 0 (derived) or a multiple of 16 and ≥ 64")
    if config.halo_px != -1 and (config.halo_px < 0 or config.halo_px % 16):
        problems.append(f"halo_px={config.halo_px} must be -1 (derived) or a multiple of 16")
    if config.halo_px > MAX_HALO_PX:
        problems.append(
            f"halo_px={config.halo_px} must be at most {MAX_HALO_PX} (model px: 4× the shipped model's derived "
            "halo of 176; wider multiplies the pixels each tile infers, not the nuclei found)"
        )
    if config.tile_px and config.halo_px > config.tile_px:
        problems.append(f"halo_px={config.halo_px} must not exceed the tile core (tile_px={config.tile_px})")
    if not 1 <= config.max_nucleus_px <= MAX_NUCLEUS_PX:
        problems.append(
            f"max_nucleus_px={config.max_nucleus_px} must be between 1 and {MAX_NUCLEUS_PX} (px at 40x, 64 µm; "
            "the largest MoNuSeg training nucleus is 142 px across)"
        )
    return problems


def _choice_problems(config: Config) -> list[str]:
    """Each choice among the values declared once in ``CHOICES`` (the command line offers the same)."""
    problems = []
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
    return problems


def _default_resolution_problems(config: Config) -> list[str]:
    """The resolution assumed without metadata: one a scanner gives and a run would accept, and
    the tile core's upper bound (checked here so that the message keeps its place among the others)."""
    problems = []
    if not FINEST_SCANNER_MPP <= config.default_mpp <= min(config.max_mpp, COARSEST_MPP):
        problems.append(
            f"default_mpp={config.default_mpp} must be microns per pixel between {FINEST_SCANNER_MPP} and "
            f"max_mpp ({config.max_mpp})"
        )
    if config.tile_px > MAX_TILE_PX:
        problems.append(f"tile_px={config.tile_px} must be at most {MAX_TILE_PX}")
    return problems


def _execution_problems(config: Config) -> list[str]:
    """The local cluster's sizes (0 = derived, never negative), its workers' memory limit, and
    where its dashboard listens."""
    problems = []
    for name, meaning in (
        ("n_workers", "0 = sized to the machine"),
        ("threads_per_worker", "0 = cores / workers"),
        ("slides_in_flight", "0 = 3 × worker threads"),
        ("intra_op_threads", "0 = one"),
    ):
        if getattr(config, name) < 0:
            problems.append(f"{name}={getattr(config, name)} must be ≥ 0 ({meaning})")
    if not _memory_limit_ok(config.memory_limit):
        problems.append(
            f"memory_limit={config.memory_limit!r} must be 'auto', a size such as '4GB', or a share of memory (0-1)"
        )
    problem = _dashboard_problem(config.dashboard)
    if problem:
        problems.append(problem)
    return problems


def _dashboard_problem(dashboard: str) -> str | None:
    """Why ``dashboard`` is no HOST:PORT (port 0 = any free port) nor 'off', or None."""
    if dashboard == "off":
        return None
    address = re.fullmatch(r"\[?[0-9A-Za-z.:_-]*\]?:(\d{1,5})", dashboard)
    if not address:
        return f"dashboard={dashboard!r} must be HOST:PORT (e.g. 127.0.0.1:8787) or 'off'"
    if not 0 <= int(address.group(1)) <= 65535:
        return f"dashboard={dashboard!r}: a port is a number from 0 (any free port) to 65535"
    return None


def _work_unit_problems(config: Config) -> list[str]:
    """The units work is cut into: shards of the label map and tiles per task, at least one each."""
    problems = []
    if config.map_shard_px < 1:
        problems.append(f"map_shard_px={config.map_shard_px} must be ≥ 1 (level-0 px; rounded to whole tile cores)")
    if config.tiles_per_task < 1:
        problems.append("tiles_per_task must be ≥ 1")
    return problems


def _resolution_limit_problems(config: Config) -> list[str]:
    """The resolutions a slide is refused or flagged at, within what can be segmented at all, and
    a tolerance between metadata and estimate that is a factor (> 1), and at least one attempt per slide."""
    problems = []
    for name in ("max_mpp", "low_resolution_mpp"):
        if not FINEST_SCANNER_MPP <= getattr(config, name) <= COARSEST_MPP:
            problems.append(
                f"{name}={getattr(config, name)} must be microns per pixel between {FINEST_SCANNER_MPP} and "
                f"{COARSEST_MPP} (coarser, nuclei are two pixels wide and tiles a few pixels each)"
            )
    if not config.scale_tolerance > 1:
        problems.append(f"scale_tolerance={config.scale_tolerance} must be a factor > 1")
    if config.max_attempts < 1:
        problems.append("max_attempts must be ≥ 1")
    return problems


# The checks of validate_config, in the order their problems are listed in its message.
_CONFIG_CHECKS: tuple[Callable[[Config], list[str]], ...] = (
    _tiling_problems,
    _choice_problems,
    _default_resolution_problems,
    _execution_problems,
    _work_unit_problems,
    _resolution_limit_problems,
)


def validate_config(config: Config) -> None:
    """Raise ValueError naming every setting of ``config`` that is out of bounds (all of them in
    one message, so that a user fixes them in one go)."""
    problems = [problem for check in _CONFIG_CHECKS for problem in check(config)]
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a batch system's allocation sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def total_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def validate_for_machine(config: Config, cores: int, memory_bytes: int) -> None:
    """The local cluster's size against this machine: ``cores`` usable cores, ``memory_bytes`` of
    memory. A run on an existing scheduler (``config.scheduler``) starts no workers here."""
    if config.scheduler:
        return
    from dask.utils import format_bytes, parse_bytes

    problems = []
    max_workers = MAX_WORKERS_PER_CORE * cores
    if config.n_workers > max_workers:
        problems.append(
            f"n_workers={config.n_workers}: this machine has {cores} usable core(s), at most {max_workers} local "
            "worker process(es) (each holds its own model session; more than one per core adds memory, not speed)"
        )
    workers = config.n_workers or 1
    if workers * config.threads_per_worker > MAX_THREADS_PER_CORE * cores:
        problems.append(
            f"{workers} worker(s) × threads_per_worker={config.threads_per_worker}: this machine has {cores} usable "
            f"core(s), at most {MAX_THREADS_PER_CORE * cores} task threads in all"
        )
    text = config.memory_limit.strip().lower()
    if text != "auto" and _memory_limit_ok(text):
        try:
            share = float(text)
        except ValueError:
            limit = parse_bytes(text)
        else:  # 0 = no limit, (0, 1] = share of this machine's memory, more = bytes
            limit = int(share * memory_bytes) if share <= 1 else int(share)
        if limit and limit < MIN_WORKER_MEMORY_BYTES:
            problems.append(
                f"memory_limit={config.memory_limit!r} gives a worker {format_bytes(limit)}, under the "
                f"{format_bytes(MIN_WORKER_MEMORY_BYTES)} one tile's inference needs (its worker would be restarted "
                "on every tile)"
            )
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


# The settings that change what a slide's published outputs hold (with the model's sha256 and the
# slide's own inputs): a rerun redoes a slide made with other values. Execution settings (reader,
# device, runtime, workers, ...) are meant to give the same outputs and are left out; so is tile_px:
# tiles sample one slide-wide grid, and the nuclei do not depend on the tiling (tests/system/test_pipeline.py),
# while its default differs between CPU and GPU workers.
OUTPUT_FIELDS: tuple[str, ...] = (
    "default_mpp",
    "estimate_scale",
    "prefer_estimate",
    "scale_tolerance",
    "max_mpp",
    "low_resolution_mpp",
    "halo_px",
    "max_nucleus_px",
    "tissue_view_px",
    "stain",
    "save_probabilities",
    "write_csv",
    "map_shard_px",
    "write_geojson",
    "half",
)
# Of those, the ones that only add a file: a slide made with one of them on still serves a run that
# leaves it off (its folder holds more); a slide made without it is redone when a run asks for it.
EXTRA_OUTPUT_FIELDS: tuple[str, ...] = ("write_csv", "write_geojson")
