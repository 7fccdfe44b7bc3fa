"""``python -m pipeline.run``: the command line lives in :mod:`pipeline.cli.run`."""

import sys

from pipeline.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
