"""What a slide's outputs cost on disk, per million nuclei, for each format; the defaults against
every table written by default (nuclei.parquet without geometry, nuclei.csv, nuclei.geojson,
maps.zarr), measured in the same run on the same slide.

    python benchmarks/output_footprint.py --side 4096 --out DIR

A generated slide (as ``gpu_benchmark.py``: 0.25 µm/px, nuclei on tissue everywhere; ``--spacing
24`` gives ~1,700 nuclei per Mpx, the density of real tissue) is segmented once with every table
asked for (``write_csv``, ``write_geojson``); then, outside the run:

* each file's bytes per nucleus (= MB per million nuclei), the centroid GeoJSON that
  ``python -m pipeline.export geojson-centroids`` writes, and the gzip-compressed CSV and GeoJSON
  (level 6, as ``gzip`` writes by default) for comparison;
* the previous nuclei.parquet (the same table without ``geometry``/``bbox``, zstd, default
  encodings) written from the same rows, and the GeoParquet table with default encodings;
* the CSV compressed by a few codecs (gzip, zstd, brotli at some levels): size and time;
* the cost of building the WKB column: numpy (``parquet.polygon_wkb``, what the pipeline uses)
  against shapely 2 (``polygons`` + ``to_wkb``), best of ``--repeats``, µs per nucleus.

Results: ``<out>/output_footprint.json`` and ``.md``.

Real slides (a manifest; ``--mpp`` in it where a file has none):

    python benchmarks/output_footprint.py --slides MANIFEST [--baseline RUN_DIR] --out DIR

runs ``python -m pipeline.run`` of this checkout on the manifest's slides (defaults only) and
reports each slide's default outputs in bytes per nucleus, ``nuclei.parquet`` by column (the
compressed column chunks, and the footer); with ``--baseline``, the output folder of a run of the
same manifest by another version, the same figures for it side by side (before / after). Each
table is also read back as other tools read it: geopandas, and DuckDB where it is installed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def sibling_script(relative: str) -> Any:
    """Another benchmark script of this folder, imported from its file."""
    import importlib.util

    path = ROOT / "benchmarks" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # its functions pickle by this name
    spec.loader.exec_module(module)
    return module


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gzip_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def best_us_per_nucleus(fn: Callable[[], Any], repeats: int, n: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def previous_parquet(table: Any, path: Path) -> int:
    """nuclei.parquet without its geometry: the table's columns only, zstd, default encodings."""
    import pyarrow.parquet as pq

    pq.write_table(table, path, compression="zstd")
    return path.stat().st_size


def parquet_bytes_by_column(path: Path) -> dict[str, int]:
    """The compressed bytes of each top-level column of a Parquet file over its row groups, and
    ``(footer)`` (the file metadata: schema, row groups, statistics)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    sizes: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + column.total_compressed_size
    sizes["(footer)"] = meta.serialized_size
    return sizes


def slide_footprint(folder: Path) -> dict[str, Any]:
    """Bytes per nucleus of a published slide's default outputs, nuclei.parquet by column."""
    import pyarrow.parquet as pq

    parquet = folder / "nuclei.parquet"
    n = pq.ParquetFile(parquet).metadata.num_rows
    files = {name: tree_bytes(folder / name) / n for name in ("nuclei.parquet", "maps.zarr", "stats.json")}
    columns = {k: v / n for k, v in parquet_bytes_by_column(parquet).items()}
    return {
        "n_nuclei": n,
        "row_groups": pq.ParquetFile(parquet).metadata.num_row_groups,
        "files": files,
        "defaults": sum(files.values()),
        "columns": columns,
    }


def read_back(parquet: Path) -> dict[str, Any]:
    """How other tools read a nuclei.parquet: geopandas (geometry type, rows), DuckDB (the type it
    gives ``geometry``, rows, and a bbox query's count against pyarrow's) where installed."""
    import geopandas
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    frame = geopandas.read_parquet(parquet)
    meta = pq.ParquetFile(parquet).metadata
    out: dict[str, Any] = {
        "geopandas": f"{len(frame)} rows, {sorted(set(frame.geom_type))}, valid {int(frame.is_valid.sum())}",
    }
    box = pq.read_table(parquet, columns=["bbox"]).column("bbox").combine_chunks()
    xmax = float(np.median(box.field("xmax").to_numpy()))
    ymax = float(np.median(box.field("ymax").to_numpy()))
    expr = (pc.field("bbox", "xmin") < xmax) & (pc.field("bbox", "ymin") < ymax)
    out["bbox_query_pyarrow"] = pads.dataset(str(parquet)).to_table(columns=["id"], filter=expr).num_rows
    try:
        import duckdb
    except ImportError:
        out["duckdb"] = "not installed"
        return out
    con = duckdb.connect()
    kind = con.execute(f"SELECT typeof(geometry) FROM '{parquet}' LIMIT 1").fetchone()
    rows = con.execute(f"SELECT count(*) FROM '{parquet}'").fetchone()
    query = f"SELECT count(*) FROM '{parquet}' WHERE bbox.xmin < {xmax} AND bbox.ymin < {ymax}"
    out["duckdb"] = (
        f"duckdb {duckdb.__version__}: geometry as {kind[0] if kind else None}, {rows[0] if rows else 0} rows"
    )
    out["bbox_query_duckdb"] = (con.execute(query).fetchone() or [None])[0]
    out["row_groups"] = meta.num_row_groups
    return out


def real_slides(manifest: Path, baseline: Path | None, out: Path | None) -> int:
    """The default outputs of real slides, by column, against a baseline run's where given."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="output-footprint-real-"))
    command = [sys.executable, "-m", "pipeline.run", str(manifest), "--out", str(work / "run")]
    command += ["--no-qc", "--no-progress", "--dashboard", "off"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        print(f"pipeline.run failed ({done.returncode}): {done.stderr[-2000:]}", file=sys.stderr)
        return 1
    slides = sorted(p.name for p in (work / "run" / "slides").iterdir() if p.is_dir())
    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python benchmarks/output_footprint.py --slides "
        + str(manifest)
        + (f" --baseline {baseline}" if baseline else ""),
        "slides": {},
    }
    lines = [f"date: {data['date']}  ", f"machine: {data['machine']}  ", f"command: `{data['command']}`", ""]
    for slide in slides:
        now = slide_footprint(work / "run" / "slides" / slide)
        then = slide_footprint(baseline / "slides" / slide) if baseline else None
        record = {
            "after": now,
            "before": then,
            "read_back": read_back(work / "run" / "slides" / slide / "nuclei.parquet"),
        }
        data["slides"][slide] = record
        stats = json.loads((work / "run" / "slides" / slide / "stats.json").read_text())
        lines += [
            f"### {slide}: {now['n_nuclei']} nuclei, {stats.get('mpp')} µm/px ({stats.get('mpp_source')}), "
            f"{now['row_groups']} row groups",
            "",
            "| bytes per nucleus | " + ("before | after |" if then else "now |"),
            "|---|---|" + ("---|" if then else ""),
        ]
        names = list(dict.fromkeys([*(then["columns"] if then else {}), *now["columns"]]))
        rows = [(f"nuclei.parquet: {k}", k, "columns") for k in names]
        rows += [(k, k, "files") for k in now["files"]] + [("**default outputs**", None, "defaults")]
        for label, key, part in rows:
            cells = []
            for record_ in ([then] if then else []) + [now]:
                value = record_[part] if key is None else record_[part].get(key)
                cells.append("–" if value is None else f"{value:.1f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "read back: " + "; ".join(f"{k}: {v}" for k, v in record["read_back"].items()), ""]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "output_footprint_real.json").write_text(json.dumps(data, indent=2))
        (out / "output_footprint_real.md").write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--spacing", type=float, default=24.0)
    p.add_argument("--radius", type=float, nargs=2, default=(6.0, 9.0))
    p.add_argument("--model", default="", help="'' for the shipped model, 'blob', or an ONNX file")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--slides", type=Path, default=None, help="a manifest of real slides (instead of a generated one)")
    p.add_argument("--baseline", type=Path, default=None, help="with --slides: a run of them by another version")
    args = p.parse_args(argv)
    if args.slides:
        return real_slides(args.slides, args.baseline, args.out)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import Config
    from pipeline.io.outputs.numbers import list_parts
    from pipeline.io.outputs.parquet import nucleus_row_group, polygon_wkb
    from pipeline.io.outputs.tables import write_nucleus_tables
    from pipeline.manifest import SlideEntry
    from pipeline.slide.inline import process_slide_inline

    gb = sibling_script("gpu/gpu_benchmark.py")  # its generated slide and models
    work = Path(tempfile.mkdtemp(prefix="output-footprint-"))
    model_path, model_name = gb.benchmark_model(args.model, work)
    slide, drawn = gb.generated_slide(work, args.side, args.spacing, tuple(args.radius))
    config = Config(model=str(model_path), progress=False, device="cpu", write_csv=True, write_geojson=True)
    stats = process_slide_inline(SlideEntry(slide.stem, slide), str(work / "run"), config)
    folder = work / "run" / "slides" / slide.stem
    n = int(stats["n_nuclei"])
    if n == 0:
        print("no nuclei found: nothing to measure", file=sys.stderr)
        return 1

    per_nucleus = {name: tree_bytes(folder / name) / n for name in sorted(os.listdir(folder))}
    centroids = work / "centroids"
    centroids.mkdir()
    tables = pq.ParquetFile(folder / "nuclei.parquet")
    batches = (nucleus_row_group(tables, i) for i in range(tables.num_row_groups))
    write_nucleus_tables(batches, centroids, slide.stem, ["geojson-centroids"])
    per_nucleus["nuclei_centroids.geojson (export)"] = tree_bytes(centroids / "nuclei_centroids.geojson") / n
    per_nucleus["nuclei.csv.gz (gzip -6)"] = gzip_bytes(folder / "nuclei.csv") / n
    per_nucleus["nuclei.geojson.gz (gzip -6)"] = gzip_bytes(folder / "nuclei.geojson") / n
    table = pa.concat_tables(nucleus_row_group(tables, i) for i in range(tables.num_row_groups))
    per_nucleus["previous nuclei.parquet"] = previous_parquet(table, work / "previous.parquet") / n
    geo = pq.read_table(folder / "nuclei.parquet")
    per_nucleus["nuclei.parquet, default encodings"] = previous_parquet(geo, work / "default.parquet") / n
    csv_text = (folder / "nuclei.csv").read_bytes()
    codecs: dict[str, dict[str, float]] = {}
    for codec, level in [("gzip", 1), ("gzip", 6), ("zstd", 1), ("zstd", 3), ("zstd", 9), ("brotli", 5)]:
        compress = pa.Codec(codec, compression_level=level).compress
        size = len(compress(csv_text, asbytes=True))
        codecs[f"{codec} {level}"] = {
            "mb_per_million": round(size / n, 1),
            "us_per_nucleus": round(best_us_per_nucleus(lambda c=compress: c(csv_text), 2, n), 2),
        }
    defaults = ["nuclei.parquet", "maps.zarr", "stats.json"]
    before = ["previous nuclei.parquet", "nuclei.csv", "nuclei.geojson", "maps.zarr", "stats.json"]
    default_mb = sum(per_nucleus[k] for k in defaults)
    before_mb = sum(per_nucleus[k] for k in before)

    values, offsets = list_parts(table.column("polygon"))
    wkb: dict[str, float] = {"numpy": best_us_per_nucleus(lambda: polygon_wkb(values, offsets), args.repeats, n)}
    try:
        import shapely

        xy = values.reshape(-1, 2)
        rings = np.repeat(np.arange(n), np.diff(offsets) // 2)

        def shapely_wkb() -> Any:
            return shapely.to_wkb(shapely.polygons(shapely.linearrings(xy, indices=rings)))

        wkb["shapely"] = best_us_per_nucleus(shapely_wkb, args.repeats, n)
        same = polygon_wkb(values, offsets).to_pylist() == list(shapely_wkb())
    except ImportError:
        same = None

    data = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python benchmarks/output_footprint.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_name,
        "slide": {"side_px": args.side, **drawn},
        "n_nuclei": n,
        "mb_per_million_nuclei": {k: round(v, 1) for k, v in per_nucleus.items()},
        "defaults_mb_per_million": round(default_mb, 1),
        "before_mb_per_million": round(before_mb, 1),
        "ratio_before_over_defaults": round(before_mb / default_mb, 2),
        "csv_compressed": codecs,
        "wkb_us_per_nucleus": {k: round(v, 2) for k, v in wkb.items()},
        "wkb_numpy_equals_shapely": same,
    }
    lines = [
        f"date: {data['date']}  ",
        f"machine: {data['machine']}  ",
        f"command: `{data['command']}`  ",
        f"model: {model_name}; slide {args.side}² px, {n} nuclei  ",
        "",
        "| file | MB per million nuclei |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in per_nucleus.items()],
        "",
        f"defaults ({' + '.join(defaults)}): {default_mb:.1f} MB per million nuclei; "
        f"every table by default ({' + '.join(before)}): {before_mb:.1f}; that / defaults: "
        f"{before_mb / default_mb:.2f}×",
        "",
        "nuclei.csv compressed (pyarrow codecs, in memory): "
        + "; ".join(
            f"{k}: {v['mb_per_million']} MB per million, {v['us_per_nucleus']} µs per nucleus"
            for k, v in codecs.items()
        ),
        "",
        "WKB column, µs per nucleus: "
        + ", ".join(f"{k} {v:.2f}" for k, v in wkb.items())
        + (
            f" (shapely / numpy: {wkb['shapely'] / wkb['numpy']:.2f}×; identical bytes: {same})"
            if same is not None
            else ""
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "output_footprint.json").write_text(json.dumps(data, indent=2))
        (args.out / "output_footprint.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
