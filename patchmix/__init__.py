"""patchmix: PatchMix and the patch-level self-supervised methods around it, for timm ViTs.

The layers, from the bottom: ``config`` (typed configs and recipes), ``distributed``, ``data``, ``models``
(ViT backbone, MLP heads), the methods' own pieces (``mix``, ``loss``), ``schedules``, ``checkpoint``,
``engine`` (the one training loop), ``methods/`` (one module per pretraining method), ``pretrain``,
``evaluation/`` (kNN, linear probe, fine-tuning), ``weights/`` (every checkpoint format, released weights,
export) and ``cli`` (what the entry scripts share).
"""

__version__ = "0.2.0"
