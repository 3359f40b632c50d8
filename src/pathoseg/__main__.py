"""``python -m pathoseg``: what torchrun launches (``torchrun --nproc_per_node N -m pathoseg train ...``)."""

import sys

from pathoseg.cli import main

# Guarded: processes started with multiprocessing's spawn import this module again.
if __name__ == "__main__":
    sys.exit(main())
