"""Our side of the SelfPatch parity check: settings, the key map, the zero-gradient entries, our step on given inputs.

Shared by ``tools/parity/selfpatch_step.py`` (which runs the official ``train_one_epoch`` of alinlab/SelfPatch next
to ours) and ``tests/test_selfpatch_parity_golden.py`` (which compares ours with numbers the official code produced
once). Nothing here imports the official code. The deterministic weights, crops, summaries and the loop of our real
training step are DINO's (``tests/parity_dino_ours.py``), reused by import.
"""

from __future__ import annotations

import parity_dino_ours as dino
import torch

from patchmix.methods.dino import DINOSchedule
from patchmix.methods.selfpatch import SelfPatch, SelfPatchConfig

# The official SelfPatch head only accepts 196 or 36 patch tokens (its 3x3 neighbourhoods are precomputed for the
# 14x14 grid of a 224-px crop and the 6x6 grid of a 96-px crop), so the tiny model keeps those grids: 4-px patches
# on 56-px global and 24-px local crops. A 2-block 32-d ViT, heads with 64 image and 48 patch prototypes, 4 images,
# 2 local crops. Drop path is 0 (its random masks cannot be matched); everything runs in float32. The schedules are
# the real ones of a 2-epoch run of one step per epoch: epoch 0 has both last layers frozen and the teacher at 0.04,
# epoch 1 trains them with the teacher at 0.07 (a warm-up, to see that both losses use the epoch's temperature).
SETTINGS = {
    **dino.SETTINGS, "img_size": 56, "local_size": 24, "out_dim": 64, "out_dim_selfpatch": 48, "k_num": 4,
    "loss_weight": 0.1,
}
SEEDS = {"weights": 2206, "crops": 7990}
# name -> head options of the compared cases (SelfPatch's heads have no BatchNorm: the official heads run on token
# tensors, where BatchNorm1d cannot)
CASES = {
    "norm_last_layer": {"norm_last_layer": True, "use_bn": False},   # the default: weight_g frozen at 1
    "free_last_layer": {"norm_last_layer": False, "use_bn": False},  # weight_g trained, in both DINO heads
}
SCHEDULE_SETTINGS = dino.SCHEDULE_SETTINGS

deterministic_state_dict = dino.deterministic_state_dict
summary = dino.summary
is_buffer = dino.is_buffer
check_summaries = dino.check_summaries


def make_crops(seed: int = SEEDS["crops"], settings: dict = SETTINGS) -> list[torch.Tensor]:
    return dino.make_crops(seed, settings)


# ----------------------------------------------------------------------------------------------- key map

_INNER_HEAD = ".backbone.ca_head."


def state_key(param_name: str) -> str:
    """Our parameter name -> its state-dict key: the SelfPatch head sits inside our backbone
    (``student.backbone.ca_head.X``) but is listed beside it (``student.ca_head.X``), as in the official wrapper."""
    return param_name.replace(_INNER_HEAD, ".ca_head.", 1)


def official_key(ours: str) -> tuple[str, str]:
    """Our state-dict key -> (entry of the official checkpoint, key in it), for a run whose student is DDP-wrapped
    (``module.``) and whose teacher is not (SelfPatch's heads have no BatchNorm)::

        student.{backbone, ca_head, c_head, p_head}.X -> ("student", "module.{...}.X")
        teacher.{backbone, ca_head, c_head, p_head}.X -> ("teacher", "{...}.X")
        dino_loss.center        -> ("dino_loss", "center")          (official shape (1, 1, K), ours (1, K))
        dino_loss.patch_center  -> ("dino_loss", "patch_center")
    """
    part, rest = ours.split(".", 1)
    if part == "student":
        return "student", "module." + rest
    if part in ("teacher", "dino_loss"):
        return part, rest
    raise KeyError(f"{ours} has no place in an official SelfPatch checkpoint")


def zero_gradient_entries(named_shapes: dict[str, tuple[int, ...]], embed_dim: int) -> dict[str, torch.Tensor]:
    """Flat indices of the student's parameter entries whose exact gradient is zero by construction (state-dict
    keys): the key part of every ``attn.qkv.bias`` of the ViT, and every ``attn.k.bias`` of the SelfPatch head's
    class-attention blocks. A shift of all keys of a head adds the same number to every logit of a softmax row.
    Their computed gradients are rounding noise, different in any two implementations, which Adam's normalised
    update turns into steps of a sizeable fraction of the learning rate."""
    entries = {}
    for name, shape in named_shapes.items():
        if not name.startswith("student."):
            continue
        if name.startswith("student.backbone.blocks.") and name.endswith(".attn.qkv.bias"):
            entries[name] = torch.arange(embed_dim, 2 * embed_dim)
        elif name.startswith("student.ca_head.cls_blocks.") and name.endswith(".attn.k.bias"):
            entries[name] = torch.arange(shape[0])
    return entries


# ----------------------------------------------------------------------------------------------- our step

def our_config(case: str, settings: dict = SETTINGS) -> SelfPatchConfig:
    s, head = settings, CASES[case]
    return SelfPatchConfig(
        arch="vit_tiny", img_size=s["img_size"], patch_size=s["patch_size"], embed_dim=s["embed_dim"],
        depth=s["depth"], num_heads=s["num_heads"], drop_path=s["drop_path"], batch_size=s["batch_size"],
        local_crops_number=s["local_crops_number"], local_crop_size=s["local_size"], out_dim=s["out_dim"],
        out_dim_selfpatch=s["out_dim_selfpatch"], k_num=s["k_num"], loss_weight=s["loss_weight"],
        hidden_dim=s["hidden_dim"], bottleneck_dim=s["bottleneck_dim"], head_layers=s["head_layers"],
        use_bn_in_head=head["use_bn"], norm_last_layer=head["norm_last_layer"], epochs=s["epochs"],
        warmup_epochs=s["warmup_epochs"], base_lr=s["base_lr"], min_lr=s["min_lr"],
        weight_decay=s["weight_decay"], weight_decay_end=s["weight_decay_end"],
        momentum_teacher=s["momentum_teacher"], warmup_teacher_temp=s["warmup_teacher_temp"],
        teacher_temp=s["teacher_temp"], warmup_teacher_temp_epochs=s["warmup_teacher_temp_epochs"],
        student_temp=s["student_temp"], center_momentum=s["center_momentum"],
        freeze_last_layer=s["freeze_last_layer"], clip_grad=s["clip_grad"], amp="none")


def build_our_model(case: str, settings: dict = SETTINGS) -> SelfPatch:
    return SelfPatch.from_config(our_config(case, settings))


def our_schedule(settings: dict = SCHEDULE_SETTINGS) -> DINOSchedule:
    return DINOSchedule(**settings)


def our_outputs(weights: dict[str, torch.Tensor], crops: list[torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    """Our networks' outputs on the crops before any step, named as the official ones in the fixture: the image
    logits of all crops, and per crop the patch logits (teacher: of the aggregated top-k neighbours)."""
    model = build_our_model(case)
    model.load_state_dict(weights, strict=True)
    out = {}
    with torch.no_grad():
        for who, k_num in (("teacher", model.k_num), ("student", 0)):
            image, patches = getattr(model, who)(crops, k_num=k_num)
            out[f"{who} image logits"] = image
            for i, p in enumerate(patches):
                out[f"{who} patch logits crop {i}"] = p
    return out


def run_ours(state_dict: dict[str, torch.Tensor], crops: list[torch.Tensor], case: str,
             grad_overrides: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None,
             settings: dict = SETTINGS) -> dino.OursResult:
    """OUR real training step (``train_step`` of a ``PretrainTask`` with the SelfPatch method), ``epochs x
    steps_per_epoch`` times on the given weights and crops; gradients and overrides keyed by state-dict keys."""
    return dino.run_ours(state_dict, crops, case, grad_overrides, settings, cfg=our_config(case, settings),
                         rename=state_key)
