"""Nuclei at cohort scale: segment every nucleus in H&E whole-slide images, with QC.

The Python API (:mod:`pipeline.api`, for notebooks)::

    from pipeline import segment_slides, read_nuclei, read_labels, read_qc

Its names are loaded on first use, so that importing one part of the package (a kernel, a
reader, on a Dask worker) does not load the run and the cluster machinery.
"""

from __future__ import annotations

from typing import Any

from pipeline._version import __version__

API = ("segment_slides", "read_nuclei", "read_labels", "read_qc", "SegmentationResults", "QCTables", "RunFolderError")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        import pipeline.api

        return getattr(pipeline.api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
