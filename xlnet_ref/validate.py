"""Entry point: ``python -m xlnet_ref.validate`` runs :func:`xlnet_ref.validation.cli.validate_main`."""

import sys

from .validation.cli import validate_main as main

if __name__ == "__main__":
    sys.exit(main())
