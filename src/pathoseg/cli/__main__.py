"""``python -m pathoseg.cli``: the ``pathoseg`` command (as ``python -m pathoseg``)."""

import sys

from pathoseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
