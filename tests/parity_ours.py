"""Our side of the PatchMix parity check: deterministic inputs, and our training step run on them.

Shared by ``tools/parity/patchmix_step.py`` (which runs the official code next to ours) and
``tests/test_parity_golden.py`` (which compares ours with numbers the official code produced once). Nothing here
imports the official code.

Only :func:`run_ours` (and :func:`build_our_model`) touch the training-step API (``patchmix.engine.train_step``,
``patchmix.pretrain.PretrainTask``, the ``PatchMix`` method); when that API changes, update those alone.
Everything else (settings, weights, batch, the permutation -> offsets map, summaries) is independent of it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from unittest import mock

import torch

import patchmix.methods.patchmix as patchmix_method
import patchmix.mix as mix
from patchmix.engine import train_step
from patchmix.loss import LossWeights, PatchMixLoss
from patchmix.methods import PatchMix, PatchMixConfig
from patchmix.pretrain import PretrainTask
from patchmix.schedules import MomentumStepValues

# A model small enough to run both implementations in seconds. Drop path is 0 because its random masks cannot be
# matched between the two code bases; everything runs in fp32.
SETTINGS = {
    "img_size": 16, "patch_size": 4, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4,
    "proj_layers": 3, "pred_layers": 2, "hidden_dim": 64, "out_dim": 32, "batch_size": 8, "drop_path": 0.0,
    # the same values at both steps, on both sides
    "lr": 2e-3, "weight_decay": 0.04, "momentum": 0.9, "temperature": 0.2,
    "o2o_smoothing": 0.1, "mix_smoothing": 0.0, "steps": 2,
}
SEEDS = {"weights": 20230621, "batch": 2306, "numpy": 12243}
# (num_mix, use_momentum) of the four compared cases
CASES = [(2, True), (2, False), (3, True), (3, False)]
VIEWS = ("view1", "view2")


def case_name(num_mix: int, use_momentum: bool) -> str:
    return f"m{num_mix}_{'momentum' if use_momentum else 'no_momentum'}"


# ----------------------------------------------------------------------------------------------- inputs

def deterministic_state_dict(template: dict[str, torch.Tensor], seed: int = SEEDS["weights"]
                             ) -> dict[str, torch.Tensor]:
    """Weights that depend on nothing but the key names and shapes: every entry of ``template`` is filled, in
    sorted key order, from ONE seeded generator (standard normal draws, scaled per kind of tensor).

    Norm weights ``1 + 0.1 n``; BatchNorm ``running_var`` ``0.5 + |n|`` (positive); ``num_batches_tracked`` 0;
    every other tensor (matrices, biases, tokens, running means) ``0.1 n``. The momentum encoder gets its own
    draws, so it differs from the online encoder and the first EMA update already matters.
    """
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(template):
        like = template[name]
        if not like.is_floating_point():
            out[name] = torch.zeros_like(like)
            continue
        draw = torch.randn(like.shape, generator=generator, dtype=torch.float32)
        if name.endswith("running_var"):
            value = 0.5 + draw.abs()
        elif name.endswith(".weight") and like.dim() == 1:
            value = 1.0 + 0.1 * draw
        else:
            value = 0.1 * draw
        out[name] = value.to(like.dtype)
    return out


def make_views(seed: int = SEEDS["batch"], settings: dict = SETTINGS) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented views of the batch: seeded standard-normal images."""
    generator = torch.Generator().manual_seed(seed)
    shape = (settings["batch_size"], settings["in_chans"], settings["img_size"], settings["img_size"])
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def offsets_from_permutation(permutation, num_mix: int) -> torch.Tensor:
    """Our per-patch batch offsets for the official forward permutation ``pi`` of the (row-major) patches.

    The official shuffler puts patch ``pi[s]`` into slot ``s``; slot ``s < m*S`` (``S = T // m``) is group
    ``s // S`` and mixed image ``g`` takes group ``j`` from image ``(g + j) mod B``; the leftover slots keep their
    own image; unshuffling puts every patch back at its place. So patch ``t = pi[s]`` gets offset ``s // S`` (0
    for leftover slots), i.e. ``offsets[pi] = slot_group``.
    """
    perm = torch.as_tensor(list(permutation), dtype=torch.long)
    num_patches = perm.numel()
    group_size = num_patches // num_mix
    slots = torch.arange(num_patches)
    slot_group = torch.where(slots < group_size * num_mix, slots // group_size, torch.zeros_like(slots))
    offsets = torch.empty_like(perm)
    offsets[perm] = slot_group
    return offsets


def zero_gradient_entries(named_shapes: dict[str, tuple[int, ...]], embed_dim: int) -> dict[str, torch.Tensor]:
    """Flat indices of the parameter entries whose exact gradient is zero by construction.

    * ``base_encoder.norm.bias``: the CLS feature goes through a bias-free Linear and a train-mode BatchNorm,
      which removes any shift common to the batch;
    * the key part of every ``attn.qkv.bias``: a shift of all keys of a head adds the same number to every logit
      of a softmax row.

    Their computed gradients are rounding noise (different in any two implementations), which Adam's normalised
    update turns into steps of a sizeable fraction of the learning rate.
    """
    entries = {}
    for name, shape in named_shapes.items():
        if name == "base_encoder.norm.bias":
            entries[name] = torch.arange(shape[0])
        elif name.startswith("base_encoder.blocks.") and name.endswith(".attn.qkv.bias"):
            entries[name] = torch.arange(embed_dim, 2 * embed_dim)
    return entries


def summary(tensor: torch.Tensor) -> list[float]:
    """``[sum, L2 norm, first, middle, last entry]`` of a tensor (float64 arithmetic)."""
    flat = tensor.detach().double().flatten()
    return [flat.sum().item(), flat.norm().item(), flat[0].item(), flat[flat.numel() // 2].item(), flat[-1].item()]


def image_sums(images: torch.Tensor) -> list[float]:
    """The sum of every image of a batch (float64): a fingerprint of a mix (the batch total is mix-invariant)."""
    return images.detach().double().flatten(1).sum(1).tolist()


# ----------------------------------------------------------------------------------------------- our step

@dataclass
class OursResult:
    losses: list[dict[str, float]] = field(default_factory=list)      # per step: o2o, m2o, m2m, loss
    grads: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per step, as computed (before overrides)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)  # state dict after every step
    mixed: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per step: view -> mixed images


def build_our_model(use_momentum: bool, settings: dict = SETTINGS, num_mix: int = 2) -> PatchMix:
    backbone = {"arch": "vit_tiny", "img_size": settings["img_size"], "patch_size": settings["patch_size"],
                "embed_dim": settings["embed_dim"], "depth": settings["depth"], "num_heads": settings["num_heads"]}
    criterion = PatchMixLoss(LossWeights(), o2o_smoothing=settings["o2o_smoothing"],
                             mix_smoothing=settings["mix_smoothing"])
    return PatchMix(backbone, drop_path_rate=settings["drop_path"], proj_layers=settings["proj_layers"],
                    pred_layers=settings["pred_layers"], hidden_dim=settings["hidden_dim"],
                    out_dim=settings["out_dim"], use_momentum=use_momentum, num_mix=num_mix, criterion=criterion)


class _Constant:
    """A schedule that gives the same values at every step (both sides use the same constant values)."""

    def __init__(self, settings: dict) -> None:
        self.values = MomentumStepValues(settings["lr"], settings["weight_decay"], settings["momentum"],
                                         settings["temperature"])

    def at(self, step: int) -> MomentumStepValues:
        return self.values


def run_ours(state_dict: dict[str, torch.Tensor], views: tuple[torch.Tensor, torch.Tensor],
             permutations: list[dict[str, list[int]]], num_mix: int, use_momentum: bool,
             grad_overrides: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None,
             settings: dict = SETTINGS) -> OursResult:
    """Run OUR real training step ``len(permutations)`` times on the given weights and batch.

    Args:
        state_dict: initial weights (official key layout).
        views: the two views; the same batch is used at every step.
        permutations: per step, ``{"view1": pi, "view2": pi}``: the official forward permutation of the patches
            drawn for that view. Our mixer is made to use the partition of the same VIEW (our step mixes view 2
            before view 1, the official one view 1 before view 2), by swapping ``patchmix.mix.mix_offsets`` for
            the offsets of :func:`offsets_from_permutation` while each view is mixed.
        grad_overrides: per step, ``{param name: (flat indices, values)}`` written into our gradients just before
            the optimiser step (after recording them), e.g. the official values of the zero-true-gradient
            entries, so that parameters can be compared after steps taken on identical gradients.

    Returns the loss terms, the gradients as our step computed them, the state dict after every step and the
    mixed images.
    """
    model = build_our_model(use_momentum, settings, num_mix)
    missing, unexpected = model.load_state_dict(state_dict, strict=True)
    assert not missing and not unexpected
    cfg = PatchMixConfig(weight_decay=settings["weight_decay"], num_mix=num_mix)
    task = PretrainTask(model, model, cfg, steps_per_epoch=1)
    task.schedules = _Constant(settings)
    optimizer = task.optimizer
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    names = {id(p): n for n, p in model.named_parameters()}
    result = OursResult()
    state = {"step": 0, "view": None}

    def on_optimizer_step(opt, args, kwargs):
        result.grads.append({names[id(p)]: p.grad.detach().clone()
                             for g in opt.param_groups for p in g["params"] if p.grad is not None})
        overrides = (grad_overrides or [{}] * len(permutations))[state["step"]]
        for group in opt.param_groups:
            for p in group["params"]:
                if names[id(p)] in overrides:
                    index, values = overrides[names[id(p)]]
                    p.grad.view(-1)[index] = values.to(p.grad.dtype)

    real_patch_mix = patchmix_method.patch_mix

    def patch_mix_of_view(images, n_mix, patch_size, generator=None):
        matches = [v for v, x in zip(VIEWS, views) if x.shape == images.shape and torch.equal(x, images)]
        assert len(matches) == 1, "could not tell which view is being mixed"
        state["view"] = matches[0]
        try:
            out = real_patch_mix(images, n_mix, patch_size, generator)
        finally:
            state["view"] = None
        assert matches[0] not in result.mixed[-1], f"{matches[0]} mixed twice in one step"
        result.mixed[-1][matches[0]] = out[0]
        return out

    def recorded_offsets(num_patches, n_mix, generator=None, device=None):
        perm = permutations[state["step"]][state["view"]]
        assert len(perm) == num_patches
        return offsets_from_permutation(perm, n_mix).to(device or "cpu")

    hook = optimizer.register_step_pre_hook(on_optimizer_step)
    patches = [mock.patch.object(patchmix_method, "patch_mix", patch_mix_of_view),
               mock.patch.object(mix, "mix_offsets", recorded_offsets)]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        model.train()
        for step in range(len(permutations)):
            state["step"] = step
            result.mixed.append({})
            _, values = train_step(task, scaler, (list(views), None), step, torch.device("cpu"))
            result.losses.append({k: float(values[k]) for k in ("o2o", "m2o", "m2m", "loss")})
            result.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    hook.remove()
    assert math.isfinite(result.losses[-1]["loss"])
    return result
