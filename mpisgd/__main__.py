"""``python -m mpisgd``: see mpisgd.cli."""

import sys

from mpisgd.cli import main

if __name__ == "__main__":
    sys.exit(main())
