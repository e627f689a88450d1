"""patchmix: PatchMix and the patch-level self-supervised methods around it, for timm ViTs.

The layers, from the bottom: ``config`` (typed configs and recipes), ``distributed``, ``data``, ``models``
(ViT backbone, MLP heads), the methods' own pieces (``mix``, ``loss``), ``schedules``, ``checkpoint``,
``engine`` (the one training loop), ``methods/`` (one module per pretraining method), ``pretrain``,
``evaluation/`` (kNN, linear probe, fine-tuning), ``weights/`` (every checkpoint format, released weights,
export) and ``cli`` (what the entry scripts share).
"""

import sys

__version__ = "0.2.0"


def _import_timm_without_wandb() -> None:
    """Import timm with W&B hidden, so that only ``--wandb`` imports W&B.

    ``import timm`` imports ``wandb`` whenever it is installed (``timm.utils.summary``, for a helper of timm's own
    training script that this package never calls). That import costs about a second and starts W&B's machinery
    in every run, asked for or not. A ``None`` entry in ``sys.modules`` makes timm's guarded ``import wandb``
    fail quietly; it is removed at once, so a later ``import wandb`` (``--wandb``, or the user's) works as usual.
    Nothing changes when timm or wandb was imported before this package.
    """
    if "timm" in sys.modules or "wandb" in sys.modules:
        return
    sys.modules["wandb"] = None  # type: ignore[assignment]
    try:
        import timm  # noqa: F401
    finally:
        if sys.modules.get("wandb", 0) is None:
            del sys.modules["wandb"]


_import_timm_without_wandb()
