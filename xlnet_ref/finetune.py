"""Entry point: ``python -m xlnet_ref.finetune`` runs :func:`xlnet_ref.training.finetune.main`."""

import sys

from .training.finetune import main

if __name__ == "__main__":
    sys.exit(main())
