"""``python -m pipeline.evaluate``: the command line lives in :mod:`pipeline.cli.evaluate`."""

import sys

from pipeline.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
