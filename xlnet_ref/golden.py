"""Entry point: ``python -m xlnet_ref.golden`` runs :func:`xlnet_ref.validation.cli.golden_main`."""

import sys

from .validation.cli import golden_main as main

if __name__ == "__main__":
    sys.exit(main())
