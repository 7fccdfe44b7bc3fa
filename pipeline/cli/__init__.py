"""Thin command-line entry points (``python -m pipeline.run`` / ``predict`` / ``qc`` /
``evaluate`` / ``train``): parse arguments, call the library, turn outcomes into exit codes."""
