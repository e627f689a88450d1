"""Makes ``python -m patchmix.weights`` run the command line, :func:`patchmix.weights.layout.main`."""

import sys

from patchmix.weights.layout import main

if __name__ == "__main__":
    sys.exit(main())
