"""``python -m pipeline.qc``: the command line lives in :mod:`pipeline.cli.qc`."""

import sys

from pipeline.cli.qc import main

if __name__ == "__main__":
    sys.exit(main())
