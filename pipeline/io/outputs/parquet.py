"""``nuclei.parquet``: the nucleus table as it is (every column of :data:`NUCLEI_SCHEMA`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.outputs.schema import NUCLEI_SCHEMA


class ParquetWriter:
    def __init__(self, folder: Path) -> None:
        self._writer = pq.ParquetWriter(folder / "nuclei.parquet", NUCLEI_SCHEMA, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
