"""The evaluation protocols of pretrained weights: weighted kNN, linear probe, fine-tuning (image
classification from the CLS token) and DAVIS-2017 video object segmentation (label propagation through the
patch tokens).

``common`` holds what they share (weights -> model, exact test accuracy); ``classifier`` what the two trained
protocols share (a task for the engine, best-epoch bookkeeping, results); ``knn``, ``linear``, ``finetune`` and
``video_segmentation`` one protocol each, with its config; ``davis`` the DAVIS-2017 folder, mask files and the
J and F scores.
"""
