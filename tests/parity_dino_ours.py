"""Our side of the DINO parity check: deterministic inputs, the key map, and our training step run on them.

Shared by ``tools/parity/dino_step.py`` (which runs the official ``train_one_epoch`` next to ours) and
``tests/test_dino_parity_golden.py`` (which compares ours with numbers the official code produced once). Nothing
here imports the official code.

Only :func:`build_our_model`, :func:`our_config` and :func:`run_ours` touch the training-step API
(``patchmix.engine.train_step``, ``patchmix.pretrain.PretrainTask``, the ``DINO`` method); everything else
(settings, weights, crops, the key map, summaries) is independent of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from patchmix.engine import train_step
from patchmix.methods import get_method
from patchmix.methods.dino import DINO, DINOConfig, DINOSchedule
from patchmix.pretrain import PretrainTask

# A model small enough to run both implementations in a second or two: 32-px global and 16-px local crops (patch
# 4: an 8x8 grid, and 4x4 for the local crops, so DINO's position resampling runs), a 2-block 32-d ViT, a head
# with 64 prototypes. Drop path is 0 (its random masks cannot be matched); everything runs in float32.
# The schedules are the real ones of a 2-epoch run of one step per epoch: epoch 0 has the last layer frozen and
# the teacher at 0.04, epoch 1 trains the last layer with the teacher at 0.07; lr and weight decay follow their
# cosines (no warm-up: DINO's warm-up over one step would be lr 0); clip_grad is low enough that some tensors
# are clipped and others are not.
SETTINGS = {
    "img_size": 32, "local_size": 16, "patch_size": 4, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "mlp_ratio": 4, "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "head_layers": 3,
    "local_crops_number": 2, "batch_size": 4, "drop_path": 0.0,
    "epochs": 2, "steps_per_epoch": 1, "base_lr": 0.64, "min_lr": 1e-3, "warmup_epochs": 0,
    "weight_decay": 0.04, "weight_decay_end": 0.4, "momentum_teacher": 0.9, "warmup_teacher_temp": 0.04,
    "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 2, "student_temp": 0.1, "center_momentum": 0.9,
    "freeze_last_layer": 1, "clip_grad": 0.3,
}
SEEDS = {"weights": 2104, "crops": 14294}
# name -> head options of the compared cases
CASES = {
    "norm_last_layer": {"norm_last_layer": True, "use_bn": False},   # the default: weight_g frozen at 1
    "free_last_layer": {"norm_last_layer": False, "use_bn": False},  # the ViT-S recipe: weight_g trained
    "bn_head": {"norm_last_layer": True, "use_bn": True},            # --use-bn-in-head
}
# A longer schedule compared value by value with the official schedule arrays (warm-ups included).
SCHEDULE_SETTINGS = {"steps_per_epoch": 5, "epochs": 6, "peak_lr": 2e-3, "min_lr": 1e-5, "warmup_epochs": 2,
                     "weight_decay": 0.04, "weight_decay_end": 0.4, "momentum_teacher": 0.996,
                     "warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 3,
                     "freeze_last_layer": 2}


def peak_lr(settings: dict = SETTINGS) -> float:
    """The linear scaling rule of both codes: ``lr x batch / 256``."""
    return settings["base_lr"] * settings["batch_size"] / 256


# ----------------------------------------------------------------------------------------------- inputs

def deterministic_state_dict(template: dict[str, torch.Tensor], seed: int = SEEDS["weights"]
                             ) -> dict[str, torch.Tensor]:
    """Weights that depend on nothing but the key names and shapes: every floating entry of ``template`` is
    filled, in sorted key order, from ONE seeded generator (standard normal draws ``n``, scaled per kind).

    LayerNorm / BatchNorm weights and the last layer's ``weight_g`` ``1 + 0.1 n``; BatchNorm ``running_var``
    ``0.5 + |n|``; ``num_batches_tracked`` 0; every other tensor (matrices, biases, tokens, running means, the
    centre) ``0.1 n``. The teacher gets its own draws, so it differs from the student and the EMA is visible; the
    centre starts away from 0, so the centring is visible.
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
        elif (name.endswith(".weight") and like.dim() == 1) or name.endswith("weight_g"):
            value = 1.0 + 0.1 * draw
        else:
            value = 0.1 * draw
        out[name] = value.to(like.dtype)
    return out


def make_crops(seed: int = SEEDS["crops"], settings: dict = SETTINGS) -> list[torch.Tensor]:
    """The batch: 2 global crops, then the local crops (seeded standard-normal images)."""
    generator = torch.Generator().manual_seed(seed)
    b, c = settings["batch_size"], settings["in_chans"]
    sizes = [settings["img_size"]] * 2 + [settings["local_size"]] * settings["local_crops_number"]
    return [torch.randn((b, c, s, s), generator=generator) for s in sizes]


# ----------------------------------------------------------------------------------------------- key map

def official_key(ours: str) -> tuple[str, str]:
    """Our state-dict key -> (entry of the official checkpoint, key in it), for a checkpoint of a run whose
    student is DDP-wrapped (``module.``) and whose teacher is not (no BatchNorm in the head)::

        student.backbone.X -> ("student", "module.backbone.X")     student.head.X -> ("student", "module.head.X")
        teacher.backbone.X -> ("teacher", "backbone.X")            teacher.head.X -> ("teacher", "head.X")
        dino_loss.center   -> ("dino_loss", "center")
    """
    part, rest = ours.split(".", 1)
    if part == "student":
        return "student", "module." + rest
    if part in ("teacher", "dino_loss"):
        return part, rest
    raise KeyError(f"{ours} has no place in an official DINO checkpoint")


def zero_gradient_entries(named_shapes: dict[str, tuple[int, ...]], embed_dim: int, use_bn: bool
                          ) -> dict[str, torch.Tensor]:
    """Flat indices of the student's parameter entries whose exact gradient is zero by construction:

    * the key part of every ``attn.qkv.bias``: a shift of all keys of a head adds the same number to every logit
      of a softmax row;
    * with a BatchNorm head: the bias of every Linear followed by a BatchNorm (``head.mlp.0``, ``head.mlp.3``)
      and the final ``backbone.norm.bias`` (a shift common to the batch, which the BatchNorm removes).

    Their computed gradients are rounding noise, different in any two implementations, which Adam's normalised
    update turns into steps of a sizeable fraction of the learning rate.
    """
    entries = {}
    for name, shape in named_shapes.items():
        if not name.startswith("student."):
            continue
        if name.startswith("student.backbone.blocks.") and name.endswith(".attn.qkv.bias"):
            entries[name] = torch.arange(embed_dim, 2 * embed_dim)
        elif use_bn and name in ("student.backbone.norm.bias", "student.head.mlp.0.bias", "student.head.mlp.3.bias"):
            entries[name] = torch.arange(shape[0])
    return entries


def summary(tensor: torch.Tensor) -> list[float]:
    """``[sum, L2 norm, first, middle, last entry]`` of a tensor (float64 arithmetic)."""
    flat = tensor.detach().double().flatten()
    return [flat.sum().item(), flat.norm().item(), flat[0].item(), flat[flat.numel() // 2].item(), flat[-1].item()]


def check_summaries(ours_tensors: dict[str, torch.Tensor], official: dict[str, list[float]], tol: float,
                    what: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Our tensors against the official ``summary()`` of each: sums within ``tol * sqrt(numel) * L2``, the L2
    norm and the first, middle and last entries within ``tol * L2``; returns the differences found."""
    problems = []
    if set(ours_tensors) != set(official):
        return [f"{what}: different tensors: {sorted(set(ours_tensors) ^ set(official))}"]
    for name, expected in official.items():
        if name in skip:
            continue
        got = summary(ours_tensors[name])
        scale = max(expected[1], 1e-12)
        bounds = [tol * scale * math.sqrt(ours_tensors[name].numel())] + [tol * scale] * 4
        for label, g, e, bound in zip(("sum", "L2", "first", "middle", "last"), got, expected, bounds):
            if not abs(g - e) <= bound:
                problems.append(f"{what} {name} {label}: ours {g:.9g} official {e:.9g} (|diff| {abs(g - e):.3g} > "
                                f"{bound:.3g})")
    return problems


def is_buffer(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked", "center"))


# ----------------------------------------------------------------------------------------------- our step

@dataclass
class OursResult:
    losses: list[float] = field(default_factory=list)                    # per step
    entropies: list[float] = field(default_factory=list)                 # per step: the logged teacher entropy
    terms: list[dict[str, float]] = field(default_factory=list)          # per step: every logged scalar
    grads: list[dict[str, torch.Tensor]] = field(default_factory=list)   # per step, as the optimiser gets them
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)  # state dict after every step
    values: list = field(default_factory=list)                           # the scheduled values of every step


def our_config(case: str, settings: dict = SETTINGS) -> DINOConfig:
    s, head = settings, CASES[case]
    return DINOConfig(
        arch="vit_tiny", img_size=s["img_size"], patch_size=s["patch_size"], embed_dim=s["embed_dim"],
        depth=s["depth"], num_heads=s["num_heads"], drop_path=s["drop_path"], batch_size=s["batch_size"],
        local_crops_number=s["local_crops_number"], local_crop_size=s["local_size"], out_dim=s["out_dim"],
        hidden_dim=s["hidden_dim"], bottleneck_dim=s["bottleneck_dim"], head_layers=s["head_layers"],
        use_bn_in_head=head["use_bn"], norm_last_layer=head["norm_last_layer"], epochs=s["epochs"],
        warmup_epochs=s["warmup_epochs"], base_lr=s["base_lr"], min_lr=s["min_lr"],
        weight_decay=s["weight_decay"], weight_decay_end=s["weight_decay_end"],
        momentum_teacher=s["momentum_teacher"], warmup_teacher_temp=s["warmup_teacher_temp"],
        teacher_temp=s["teacher_temp"], warmup_teacher_temp_epochs=s["warmup_teacher_temp_epochs"],
        student_temp=s["student_temp"], center_momentum=s["center_momentum"],
        freeze_last_layer=s["freeze_last_layer"], clip_grad=s["clip_grad"], amp="none")


def build_our_model(case: str, settings: dict = SETTINGS) -> DINO:
    return DINO.from_config(our_config(case, settings))


def our_schedule(settings: dict = SCHEDULE_SETTINGS) -> DINOSchedule:
    return DINOSchedule(**settings)


def run_ours(state_dict: dict[str, torch.Tensor], crops: list[torch.Tensor], case: str,
             grad_overrides: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None,
             settings: dict = SETTINGS, cfg: DINOConfig | None = None,
             rename: Callable[[str], str] = lambda name: name) -> OursResult:
    """Run OUR real training step (``train_step`` of a ``PretrainTask`` with the DINO method, its optimiser
    groups, schedules, hooks and clipping) ``epochs x steps_per_epoch`` times on the given weights and crops.

    ``grad_overrides``: per step, ``{param name: (flat indices, values)}`` written into our gradients just before
    the optimiser step (after recording them), e.g. the official values of the zero-true-gradient entries, so
    that parameters can be compared after steps taken on identical gradients.

    ``cfg``: another method's config (``cfg.method`` picks the method; SelfPatch's parity uses this); ``rename``:
    parameter name -> the name used in the recorded gradients and in ``grad_overrides`` (e.g. its state-dict key).
    """
    cfg = cfg if cfg is not None else our_config(case, settings)
    model = get_method(cfg.method).from_config(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=True)
    assert not missing and not unexpected
    task = PretrainTask(model, model, cfg, steps_per_epoch=settings["steps_per_epoch"])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    names = {id(p): rename(n) for n, p in model.named_parameters()}
    result = OursResult()
    state = {"step": 0}

    def on_optimizer_step(opt, args, kwargs):
        result.grads.append({names[id(p)]: p.grad.detach().clone()
                             for g in opt.param_groups for p in g["params"] if p.grad is not None})
        overrides = (grad_overrides or [])[state["step"]] if grad_overrides else {}
        for group in opt.param_groups:
            for p in group["params"]:
                if names[id(p)] in overrides and p.grad is not None:
                    index, values = overrides[names[id(p)]]
                    p.grad.view(-1)[index] = values.to(p.grad.dtype)

    hook = task.optimizer.register_step_pre_hook(on_optimizer_step)
    model.train()
    try:
        for step in range(settings["epochs"] * settings["steps_per_epoch"]):
            state["step"] = step
            values, scalars = train_step(task, scaler, ([c.clone() for c in crops], None), step,
                                         torch.device("cpu"), clip_grad=cfg.clip_grad)
            result.values.append(values)
            result.losses.append(float(scalars["loss"]))
            result.entropies.append(float(scalars["teacher_entropy"]))
            result.terms.append(dict(scalars))
            result.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    finally:
        hook.remove()
    assert math.isfinite(result.losses[-1])
    return result
