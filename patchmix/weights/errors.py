"""The exceptions of the weights package, at the bottom of its imports so that every module can raise them.

Every failure to find, fetch, read or fit weights is a :class:`WeightsError` whose message names the file and
the fix: the command line and the evaluation scripts print it instead of a traceback.
"""


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched or read; the message names the file and the fix."""


class WeightsMismatchError(WeightsError):
    """The tensors of a file do not fit the requested ViT; the message lists them and what the file holds."""
