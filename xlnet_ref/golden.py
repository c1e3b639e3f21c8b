"""Entry point: ``python -m xlnet_ref.golden`` runs :func:`xlnet_ref.validation.golden.main`."""

import sys

from .validation.golden import main

if __name__ == "__main__":
    sys.exit(main())
