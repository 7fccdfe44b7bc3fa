"""The package's version, in one place (``pipeline.__version__``, run.json's ``versions``)."""

__version__ = "0.1.0"
