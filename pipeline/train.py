"""``python -m pipeline.train``: the command line lives in :mod:`pipeline.cli.train`."""

from pipeline.cli.train import main

if __name__ == "__main__":
    main()
