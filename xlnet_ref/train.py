"""Entry point: ``python -m xlnet_ref.train`` runs :func:`xlnet_ref.training.train.main`."""

import sys

from .training.train import main

if __name__ == "__main__":
    sys.exit(main())
