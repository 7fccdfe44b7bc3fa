"""``python -m pipeline.export``: the command line lives in :mod:`pipeline.cli.export`."""

import sys

from pipeline.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
