"""The columns of a nucleus table (``nuclei.parquet``; the other formats are written from it).

``polygon`` is the outline as the tables are built and the text formats are written from it;
``nuclei.parquet`` stores it once, as its WKB ``geometry`` (tables written before hold it as
``polygon`` as well, and are read either way).

Outline and centroid coordinates are stored to ``OUTLINE_STEP_PX``, and outlines without the
vertices that change neither the pixels they cover nor their course by more than
``OUTLINE_TOLERANCE_PX`` (``pipeline.kernels.outlines``): the fractional level-0 coordinates
of a slide that is resampled to the model's resolution do not compress, a 1/8 px grid does, and a
20x slide's outline, traced on the model's 0.25 µm grid, carries steps of half a level-0 pixel
that no pixel of the slide resolves (benchmarks/RESULTS-outputs.md).
"""

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
# The grid of stored coordinates, level-0 px: a power of two, so stored values are exact binary
# fractions; an eighth of a pixel is far below the annotation noise (a pixel or two) and the
# CSV's and GeoJSON's 0.1 px.
OUTLINE_STEP_PX = 1 / 8
# How far a stored outline's course may leave the traced one, level-0 px, besides keeping the
# same pixels: half a pixel.
OUTLINE_TOLERANCE_PX = 0.5
