"""``python -m pipeline.train``: train the nucleus U-net (see :mod:`pipeline.training.train`)."""

from __future__ import annotations

from pipeline.training.train import main

if __name__ == "__main__":
    main()
