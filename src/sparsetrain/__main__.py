"""``python -m sparsetrain``: the same command line as the ``sparsetrain`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
