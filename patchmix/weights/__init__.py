"""The weights loader, moving from one file to a package split by job; for now all of it is in layout.py."""

from patchmix.weights.layout import *  # noqa: F401,F403
from patchmix.weights.layout import __all__  # noqa: F401
