"""Makes ``python -m patchmix.weights`` run the command line, :func:`patchmix.weights.cli.main`."""

import sys

from patchmix.weights.cli import main

if __name__ == "__main__":
    sys.exit(main())
