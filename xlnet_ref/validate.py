"""Entry point: ``python -m xlnet_ref.validate`` runs :func:`xlnet_ref.validation.validate.main`."""

import sys

from .validation.validate import main

if __name__ == "__main__":
    sys.exit(main())
