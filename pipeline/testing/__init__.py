"""Every generated fixture of the tests and benchmarks, in one home: synthetic slides and
cohorts of them (``slides``), a contract-conformant classical model (``models``), and run
folders of stats.json files for the QC (``qc_cohorts``). Nothing here is used by a real run."""

from pipeline.testing.models import build_blob_model, build_constant_model
from pipeline.testing.slides import (
    SyntheticNucleus,
    glass_tiff,
    synthetic_label_region,
    synthetic_slide_cohort,
    synthetic_slide_image,
    tiny_cohort,
    write_hamamatsu_vms,
    write_pyramidal_tiff,
)

__all__ = [
    "SyntheticNucleus",
    "build_blob_model",
    "build_constant_model",
    "glass_tiff",
    "synthetic_label_region",
    "synthetic_slide_cohort",
    "synthetic_slide_image",
    "tiny_cohort",
    "write_hamamatsu_vms",
    "write_pyramidal_tiff",
]
