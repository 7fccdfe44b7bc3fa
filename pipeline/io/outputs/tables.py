"""A slide's nucleus tables: one row per nucleus, written in every registered format.

Each format is one module with a writer class (``open`` on a folder, ``write`` a table of
nuclei, ``close``) and one line in :data:`NUCLEUS_TABLE_FORMATS`; :func:`write_nucleus_tables`
streams the tiles' tables through all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from pipeline.io.outputs.csv import PaperCsvWriter
from pipeline.io.outputs.geojson import QuPathCentroidsWriter, QuPathGeoJsonWriter
from pipeline.io.outputs.parquet import ParquetWriter
from pipeline.io.outputs.schema import NUCLEI_SCHEMA


class NucleusTableWriter(Protocol):
    def __init__(self, folder: Path, slide_id: str) -> None: ...

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (rows in :data:`NUCLEI_SCHEMA`), column-wise: no Python per nucleus."""
        ...

    def close(self) -> None: ...


# Format name → writer. ``nuclei.parquet`` (GeoParquet) is the primary table, always written.
NUCLEUS_TABLE_FORMATS: dict[str, type[NucleusTableWriter]] = {
    "parquet": ParquetWriter,
    "csv": PaperCsvWriter,
    "geojson": QuPathGeoJsonWriter,
    "geojson-centroids": QuPathCentroidsWriter,
}
PRIMARY = "parquet"  # every run writes it; the others are written from it by python -m pipeline.export
# The formats a run also writes on request (the config flag that asks for each): the others stay
# out of a cohort's outputs unless someone asks.
ON_REQUEST = {"csv": "write_csv", "geojson": "write_geojson"}
# The file each format writes, in a slide's folder.
TABLE_FILES = {
    "parquet": "nuclei.parquet",
    "csv": "nuclei.csv",
    "geojson": QuPathGeoJsonWriter.FILE,
    "geojson-centroids": QuPathCentroidsWriter.FILE,
}


def run_formats(config: object) -> list[str]:
    """The formats a run writes: the primary table and each on-request format whose flag the
    run's ``config`` sets."""
    return [f for f in NUCLEUS_TABLE_FORMATS if f == PRIMARY or (f in ON_REQUEST and getattr(config, ON_REQUEST[f]))]


def write_nucleus_tables(
    tables: Iterator[pa.Table], folder: Path, slide_id: str, formats: Iterable[str] = tuple(NUCLEUS_TABLE_FORMATS)
) -> int:
    """Stream per-tile nucleus tables into ``folder`` in each of ``formats``. Returns the
    number of nuclei written.

    Parameters
    ----------
    tables : iterator of pa.Table
        The tiles' nucleus tables (cast to ``NUCLEI_SCHEMA``; empty ones are skipped).
    folder : Path
        The folder the tables are written to.
    slide_id : str
        The slide's id.
    formats : iterable of str, optional
        Names of the formats to write (keys of ``NUCLEUS_TABLE_FORMATS``); all by default.

    Returns
    -------
    int
        Number of nuclei written.
    """
    writers: list[NucleusTableWriter] = []
    n = 0
    try:
        for name in formats:
            writers.append(NUCLEUS_TABLE_FORMATS[name](folder, slide_id))
        for table in tables:
            if table.num_rows == 0:
                continue
            table = table.cast(NUCLEI_SCHEMA)
            for writer in writers:
                writer.write(table)
            n += table.num_rows
    finally:
        for writer in writers:
            writer.close()
    return n
