"""Everything a run writes (docs/outputs.md): nucleus tables (one module per format, registered in
``tables``), label maps (``maps``), statistics (``stats``: one schema for ok and failed slides)
and the atomic publication every writer goes through (``publish``)."""
