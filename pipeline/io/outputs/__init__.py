"""Everything a run writes (DESIGN §5): nucleus tables (one module per format, registered in
``tables``), label maps (``maps``), statistics (``stats``: one schema for ok and failed slides)
and the atomic publication every writer goes through (``publish``)."""
