"""Everything a run writes (docs/outputs.md): nucleus tables (one module per format, registered in
``tables``), label maps (``maps``), statistics (``stats``: one schema for ok and failed slides),
the states a slide and a run are recorded in (``status``) and the atomic publication every writer
goes through (``publish``)."""

# Public modules: one per output kind, and the publication they all go through.
__all__ = [
    "contents",
    "csv",
    "geojson",
    "lock",
    "maps",
    "numbers",
    "parquet",
    "publish",
    "read",
    "schema",
    "spreadsheet",
    "stats",
    "status",
    "tables",
]
