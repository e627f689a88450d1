"""The three evaluation protocols of pretrained weights: weighted kNN, linear probe, fine-tuning.

``common`` holds what all three share (weights -> model, exact test accuracy); ``classifier`` what the two
trained protocols share (a task for the engine, best-epoch bookkeeping, results); ``knn``, ``linear`` and
``finetune`` one protocol each, with its config.
"""
