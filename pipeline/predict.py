"""``python -m pipeline.predict``: the command line lives in :mod:`pipeline.cli.predict`."""

import sys

from pipeline.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
