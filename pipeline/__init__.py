"""Nuclei at cohort scale: segment every nucleus in H&E whole-slide images, with QC."""

__version__ = "0.1.0"
