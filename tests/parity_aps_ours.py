"""Our side of the APS training-step parity check: settings, inputs, index injection, and our real step.

Shared by ``tools/parity/aps_step.py`` (which runs the official APS code next to ours) and
``tests/test_aps_parity_golden.py`` (which compares ours with numbers the official code produced once). Nothing
here imports the official code.

Only :func:`build_our_model`, :func:`our_cls_tokens` and :func:`run_ours` touch the training-step API (the
``APS`` method, ``patchmix.pretrain.PretrainTask``, ``patchmix.engine.train_step``); when that API changes,
update those alone. The rest (settings, weights, batch, crop boxes, the key map, summaries) does not depend on it.
Generic helpers (deterministic weights, seeded views, summaries, the zero-gradient entries) are those of
``tests/parity_ours.py`` (the PatchMix proof).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from unittest import mock

import torch
from parity_ours import deterministic_state_dict, make_views, summary, zero_gradient_entries

import patchmix.methods.aps as aps_module
from patchmix.engine import train_step
from patchmix.methods import APS, APSConfig
from patchmix.methods.aps import encode_selected
from patchmix.pretrain import PretrainTask
from patchmix.sampling import APSSample, CropBox

__all__ = ["SETTINGS", "SEEDS", "config", "make_views", "make_boxes", "official_to_ours", "deterministic_state_dict",
           "summary", "zero_gradient_entries", "build_our_model", "given_sample", "our_cls_tokens", "run_ours",
           "OursResult"]

# A model small enough to run both implementations in seconds (16-px images, 2-px patches: an 8 x 8 grid, 16
# cells per sampling, the official 4 samplings that cover the grid). Everything runs in fp32, drop path 0.
#
# Learning rate: the official lr is constant within an epoch (its LambdaLR steps once per epoch, after
# train_epoch), ``args.lr_base * batch / 256`` times min((e + 1) / warmup, cosine). With ``warmup_epochs`` 0 the
# factor of epoch 0 is exactly 1 on both sides, so the official AdamW gets ``lr_base * batch / 256`` and ours takes
# the same value from its real ``APSSchedule`` (steps 0..nsampling-1 are epoch 0); 0.064 * 8 / 256 = 0.002 exactly.
SETTINGS = {
    "img_size": 16, "patch_size": 2, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4,
    "hidden_dim": 64, "out_dim": 32, "batch_size": 8, "drop_path": 0.0,
    "nsampling": 4, "sampling_ratio": 0.25, "power": 3.0, "source_image_size": 32,
    "base_lr": 0.064, "warmup_epochs": 0.0, "epochs": 100, "weight_decay": 0.05, "temperature": 0.1,
}
SEEDS = {"weights": 20230612, "batch": 2306, "boxes": 2854, "numpy": 3202}


def grid_size(settings: dict = SETTINGS) -> int:
    return settings["img_size"] // settings["patch_size"]


def cells_per_sampling(settings: dict = SETTINGS) -> int:
    return int(grid_size(settings) ** 2 * settings["sampling_ratio"])


def config(settings: dict = SETTINGS) -> APSConfig:
    """Our APS config for the tiny parity model (official switches: flips ignored, as the official sampler)."""
    return APSConfig(arch="vit_tiny", img_size=settings["img_size"], patch_size=settings["patch_size"],
                     embed_dim=settings["embed_dim"], depth=settings["depth"], num_heads=settings["num_heads"],
                     hidden_dim=settings["hidden_dim"], out_dim=settings["out_dim"], drop_path=settings["drop_path"],
                     batch_size=settings["batch_size"], base_lr=settings["base_lr"],
                     warmup_epochs=settings["warmup_epochs"], epochs=settings["epochs"], min_lr=0.0,
                     weight_decay=settings["weight_decay"], weight_decay_end=settings["weight_decay"],
                     temperature=settings["temperature"], nsampling=settings["nsampling"],
                     sampling_ratio=settings["sampling_ratio"], power=settings["power"], respect_flips=False,
                     seed=0)


# ----------------------------------------------------------------------------------------------- inputs

def make_boxes(seed: int = SEEDS["boxes"], settings: dict = SETTINGS) -> list[tuple[CropBox, CropBox]]:
    """Per image, the crop boxes ``(top, left, height, width)`` of its two views in a square source image of
    ``source_image_size`` pixels (sides from half the image to all of it; no flips, which the official sampler
    ignores anyway). They decide which view-2 cells the official selective sampling may pick."""
    generator = torch.Generator().manual_seed(seed)
    size = settings["source_image_size"]

    def box() -> CropBox:
        height, width = (int(v) for v in torch.randint(size // 2, size + 1, (2,), generator=generator))
        top = int(torch.randint(0, size - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - width + 1, (1,), generator=generator))
        return CropBox(top, left, height, width, False, size, size)

    return [(box(), box()) for _ in range(settings["batch_size"])]


def metas(boxes: list[tuple[CropBox, CropBox]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(B, 7)`` meta tensors our loader would collate for these boxes (views 1 and 2)."""
    return (torch.stack([b1.as_meta() for b1, _ in boxes]), torch.stack([b2.as_meta() for _, b2 in boxes]))


def official_to_ours(name: str) -> str:
    """The name in our APS model of a tensor of the official ``ViTEncoderPredHead`` (``module/model.py``).

    ``base_encoder.{patchify, pos_embedding, transformer.N, layer_norm, fc}`` are timm's ``patch_embed.proj``,
    ``pos_embed``, ``blocks.N``, ``norm`` and ``head``; ``cls_token`` and ``predictor.*`` keep their names. The
    position table also changes shape, (T, 1, D) -> (1, T, D): :func:`official_state_to_ours`.
    """
    prefix = "base_encoder."
    if not name.startswith(prefix):
        return name
    rest = name[len(prefix):]
    if rest == "pos_embedding":
        return prefix + "pos_embed"
    for old, new in (("patchify.", "patch_embed.proj."), ("transformer.", "blocks."), ("layer_norm.", "norm."),
                     ("fc.", "head.")):
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    return name


def official_state_to_ours(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tensors (state dict, gradients) under our names and shapes (see :func:`official_to_ours`)."""
    out = {}
    for name, value in tensors.items():
        ours = official_to_ours(name)
        out[ours] = value.transpose(0, 1) if ours == "base_encoder.pos_embed" else value
    return out


def given_sample(indices1, indices2) -> APSSample:
    """An :class:`APSSample` from the official per-image index arrays: ``indices1[b][j]`` are the ``k`` view-1
    cells of image ``b`` in sampling ``j`` (official ``(B, nsampling, k)``, ours ``(nsampling, B, k)``)."""
    view1 = torch.as_tensor(indices1, dtype=torch.long).permute(1, 0, 2).contiguous()
    view2 = torch.as_tensor(indices2, dtype=torch.long).permute(1, 0, 2).contiguous()
    assert view1.shape == view2.shape and view1.dim() == 3
    uncovered = torch.full(view1.shape[:2] + (0,), float("nan"), dtype=torch.float64)  # not computed here
    return APSSample(view1=view1, view2=view2, uncovered=uncovered)


# ----------------------------------------------------------------------------------------------- our step

@dataclass
class OursResult:
    losses: list[dict[str, float]] = field(default_factory=list)   # per step: loss, loss1, loss2, similarity, lr
    grads: list[dict[str, torch.Tensor]] = field(default_factory=list)   # per step, as computed (before overrides)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)  # state dict after every step
    cells: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per step: what forward got


def build_our_model(settings: dict = SETTINGS) -> APS:
    cfg = config(settings)
    APS.check_config(cfg, settings["batch_size"])
    return APS.from_config(cfg)


def load_official_weights(model: APS, official_weights: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(official_state_to_ours(official_weights), strict=True)
    assert not missing and not unexpected, (missing, unexpected)


@torch.no_grad()
def our_cls_tokens(official_weights: dict[str, torch.Tensor], views: tuple[torch.Tensor, torch.Tensor],
                   indices1, indices2, settings: dict = SETTINGS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sampling ``j``: our encoder's CLS token (after the final LayerNorm) of view 1 and view 2 seeing only
    the given cells (``encode_selected``), on the given initial weights."""
    model = build_our_model(settings)
    load_official_weights(model, official_weights)
    model.eval()
    sample = given_sample(indices1, indices2)
    return [(encode_selected(model.base_encoder, views[0], sample.view1[j]),
             encode_selected(model.base_encoder, views[1], sample.view2[j])) for j in range(sample.view1.shape[0])]


def run_ours(official_weights: dict[str, torch.Tensor], views: tuple[torch.Tensor, torch.Tensor],
             boxes: list[tuple[CropBox, CropBox]], indices1, indices2,
             grad_overrides: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None,
             settings: dict = SETTINGS) -> OursResult:
    """OUR real training on one loaded batch: ``PretrainTask.substeps`` then ``train_step`` per sampling, as the
    engine's loop does, from the given weights.

    Args:
        official_weights: initial weights in the OFFICIAL key layout (mapped with :func:`official_state_to_ours`).
        views: the two views of the batch.
        boxes: their crop boxes (the batch carries them as meta tensors, as our loader does).
        indices1, indices2: the official per-image index arrays, ``(B, nsampling, k)``. Our step draws its cells
            in ``APS.substeps`` through ``aps_sampling``; that call is answered with exactly these cells (after
            checking that it was asked about this batch's boxes with the configured sampling settings).
        grad_overrides: per step, ``{our param name: (flat indices, values)}`` written into our gradients just
            before the optimiser step (after recording them): the official values of the zero-true-gradient
            entries, so that parameters are compared after steps taken on identical gradients.

    Returns the loss, its two directions (``loss1 = l(p1, sg z2)``, ``loss2 = l(p2, sg z1)``), the positive
    similarity and the lr of every step, the gradients as our step computed them, and the state dict after every
    step.
    """
    cfg = config(settings)
    model = build_our_model(settings)
    load_official_weights(model, official_weights)
    steps_per_epoch = settings["nsampling"]  # one loaded batch per epoch: every compared step is in epoch 0
    task = PretrainTask(model, model, cfg, steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    names = {id(p): n for n, p in model.named_parameters()}
    meta1, meta2 = metas(boxes)
    sample = given_sample(indices1, indices2)
    result = OursResult()
    directions: list[float] = []

    def sampling_of_this_batch(m1, m2, grid, **kwargs):
        assert torch.equal(m1, meta1) and torch.equal(m2, meta2), "aps_sampling was asked about another batch"
        assert grid == grid_size(settings)
        assert (kwargs["nsampling"], kwargs["sampling_ratio"], kwargs["power"], kwargs["respect_flips"]) == (
            settings["nsampling"], settings["sampling_ratio"], settings["power"], False), kwargs
        assert sample.view1.shape == (settings["nsampling"], settings["batch_size"], cells_per_sampling(settings))
        return sample

    real_info_nce = aps_module.info_nce

    def recording_info_nce(query, keys, temperature):
        loss, similarity = real_info_nce(query, keys, temperature)
        directions.append(loss.item())
        return loss, similarity

    def on_optimizer_step(opt, args, kwargs):
        result.grads.append({names[id(p)]: p.grad.detach().clone()
                             for g in opt.param_groups for p in g["params"] if p.grad is not None})
        overrides = grad_overrides[len(result.grads) - 1] if grad_overrides else {}
        for group in opt.param_groups:
            for p in group["params"]:
                if names[id(p)] in overrides:
                    index, values = overrides[names[id(p)]]
                    p.grad.view(-1)[index] = values.to(p.grad.dtype)

    hook = task.optimizer.register_step_pre_hook(on_optimizer_step)
    batch = ([views[0].clone(), views[1].clone(), meta1, meta2], torch.zeros(settings["batch_size"],
                                                                            dtype=torch.long))
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(aps_module, "aps_sampling", sampling_of_this_batch))
        stack.enter_context(mock.patch.object(aps_module, "info_nce", recording_info_nce))
        task.train_mode()
        parts = task.substeps(batch)  # the engine: one loaded batch -> nsampling optimiser steps
        assert len(parts) == settings["nsampling"] == APS.steps_per_batch(cfg)
        for step, part in enumerate(parts):
            directions.clear()
            result.cells.append((part[0][2], part[0][3]))
            values, scalars = train_step(task, scaler, part, step, torch.device("cpu"))
            assert len(directions) == 2, "expected the two InfoNCE directions"
            result.losses.append({"loss": scalars["loss"], "loss1": directions[0], "loss2": directions[1],
                                  "similarity": scalars["similarity"], "lr": values.lr,
                                  "weight_decay": task.optimizer.param_groups[0]["weight_decay"]})
            result.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    hook.remove()
    assert math.isfinite(result.losses[-1]["loss"])
    return result
