"""The columns of a nucleus table (``nuclei.parquet``; the other formats are written from it)."""

from __future__ import annotations

import pyarrow as pa

NUCLEI_SCHEMA = pa.schema(
    [
        ("id", pa.uint32()),
        ("centroid_x", pa.float64()),  # level-0 px
        ("centroid_y", pa.float64()),
        ("area_px", pa.float64()),  # level-0 px
        ("area_um2", pa.float64()),
        ("perimeter_px", pa.float64()),
        ("eccentricity", pa.float64()),
        ("mean_haematoxylin", pa.float64()),
        ("polygon", pa.list_(pa.float64())),  # x0, y0, x1, y1, ... in level-0 px
    ]
)
