"""Scoring segmentations against ground truth: the paper's metrics (``metrics``, pure array
functions) and the per-image / per-patch scoring behind ``python -m pipeline.evaluate``
(``scoring``). Beside the runtime, never on its import path."""

# Public modules: the metrics, the per-image scoring, the error classes.
__all__ = ["errors", "metrics", "scoring"]
