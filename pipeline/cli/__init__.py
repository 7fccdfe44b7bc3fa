"""Thin command-line entry points (``python -m pipeline.run`` / ``predict`` / ``qc`` /
``evaluate`` / ``train``): parse arguments, call the library, turn outcomes into exit codes."""

# Public modules: one per command; each has main(argv) -> exit status.
__all__ = ["evaluate", "example", "export", "predict", "qc", "run", "train"]
