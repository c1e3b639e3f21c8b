"""Entry point: ``python -m xlnet_ref.demo`` runs :func:`xlnet_ref.training.demo.main`."""

import sys

from .training.demo import main

if __name__ == "__main__":
    sys.exit(main())
