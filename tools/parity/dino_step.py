"""Proof that our DINO training step computes what the official one computes.

What it proves: on identical weights (student, teacher, centre) and the same crops (2 global + 2 local, passed as
tensors: no augmentation randomness is involved), the OFFICIAL training step (``main_dino.train_one_epoch`` of
github.com/facebookresearch/dino, run on a one-batch loader for epochs 0 and 1) and OUR training step
(``patchmix.engine.train_step`` of a ``PretrainTask`` with the ``DINO`` method) give

* the same loss,
* the same gradient of every student parameter as the optimiser receives it (after DINO's per-tensor clipping,
  and without the last layer in epoch 0, whose gradients both codes cancel),
* the same student parameters (AdamW, the decayed / not-decayed groups, the frozen ``weight_g``) and the same
  teacher parameters (EMA after the optimiser step) after each of the two steps,
* the same centre of the teacher outputs after each step (and the same BatchNorm statistics with a BN head),
* the same schedules (lr with warm-up, weight decay, teacher momentum, teacher temperature) over a longer run,

for three heads: the default (weight-normalised last layer with its norm frozen), a trained norm (the ViT-S
recipe's ``norm_last_layer false``) and a BatchNorm MLP. It prints a table of the differences and exits with
status 1 when one exceeds its tolerance (``TOLERANCES``).

How to run (a CPU is enough, a few seconds)::

    git clone https://github.com/facebookresearch/dino /path/to/official-dino
    python tools/parity/dino_step.py --official /path/to/official-dino
    # and to refresh the CI fixture that tests/test_dino_parity_golden.py compares against:
    python tools/parity/dino_step.py --official /path/to/official-dino --write-golden tests/fixtures/dino_parity.json

How: the official modules (``main_dino``, ``utils``, ``vision_transformer``) are imported from the given checkout
and patched at run time only (the checkout is not modified) so that they run on the CPU without a process group:
``Tensor.cuda`` returns the tensor itself, ``torch.cuda.synchronize`` does nothing, ``torch.distributed`` answers
``all_reduce`` (the centre's) as the only process of one (the call is counted) and ``get_world_size`` as 1,
``torch.cuda.amp.autocast`` is a no-op, ``fp16_scaler`` is None (fp32, as ``--use_fp16 false``), and the student
gets the ``.module`` attribute of DistributedDataParallel that the official loop uses. The networks are built as
``train_dino`` builds them (``MultiCropWrapper`` of the official ``VisionTransformer`` with the ``vit_*`` options
at tiny sizes and a ``DINOHead``, ``DINOLoss``, AdamW over ``get_params_groups``, ``cosine_scheduler``), then both
sides load the same deterministic weights (``tests/parity_dino_ours.py``), keys mapped between the layouts.

Zero-gradient trap (see also tools/parity/patchmix_step.py): the key part of every ``qkv.bias`` (and, with a
BatchNorm head, the biases before a BatchNorm and the final ``norm.bias``) have an exact gradient of 0; what both
codes compute there is rounding noise, which Adam's normalised update ``g / (|g| + eps)`` turns into steps of up to
about +-lr. These entries are checked on their own (tiny against the largest gradient on both sides) and left out
of the relative gradient comparison. The same amplification hits the few entries whose true gradient is merely
below that noise (measured: with the BatchNorm head one entry of 4.6e-8, computed as 5.3e-8 by us, moved its
parameter by 1.8e-4 = 0.018 lr differently). So before our optimiser step the official values of the exact-zero
entries and of every entry whose official |g| is below ``NOISE_FACTOR`` x the noise measured on the exact zeros
are written into our gradients (the fixture stores them), and parameters are compared after steps on identical
gradients; every other entry our optimiser uses is our own (the printout counts the overridden ones).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from argparse import Namespace
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import parity_dino_ours as ours  # noqa: E402

# Normalised errors (see compare_case()). A real difference in the method (a temperature, a missing pair, the
# centre, the order of EMA and step, decay of a frozen tensor, global instead of per-tensor clipping) gives 1e-3 or
# more; float32 rounding stays below 1e-5. The tolerances sit between the two.
TOLERANCES = {"loss": 1e-5, "grad": 1e-4, "param": 1e-4, "zero_grad": 1e-5, "schedule": 1e-9}
# Entries whose official |gradient| is below NOISE_FACTOR x the rounding noise on the exact-zero entries get the
# official value in our optimiser step too (see gradient_overrides()).
NOISE_FACTOR = 10.0
OFFICIAL_MODULES = ("main_dino", "utils", "vision_transformer")


# ------------------------------------------------------------------------------------------- official code

def import_official(path: Path, names: tuple[str, ...] = OFFICIAL_MODULES,
                    repository: str = "facebookresearch/dino") -> dict:
    """Import ``main_dino``, ``utils`` and ``vision_transformer`` (or ``names``: the first is the training script)
    from ``path`` (generic names: our paths are taken off ``sys.path`` meanwhile, and the names are dropped from
    ``sys.modules`` afterwards; the modules keep their references to each other)."""
    path = path.resolve()
    if not all((path / f"{name}.py").is_file() for name in names):
        raise SystemExit(f"{path} does not look like a checkout of {repository} (no {names[0]}.py).")
    ours_dirs = {REPO_ROOT.resolve(), (REPO_ROOT / "tests").resolve(), Path(__file__).resolve().parent}
    saved_path = list(sys.path)
    saved = {k: sys.modules.pop(k) for k in names if k in sys.modules}
    sys.path[:] = [str(path)] + [p for p in saved_path if p and Path(p).resolve() not in ours_dirs]
    try:
        modules = {name: importlib.import_module(name) for name in names}
    finally:
        sys.path[:] = saved_path
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    for name, module in modules.items():
        assert Path(module.__file__).resolve().is_relative_to(path), f"{name} was not imported from {path}"
    return modules


@contextlib.contextmanager
def official_runtime(calls: dict):
    """Run-time patches that let the official step run on the CPU as the only process (the checkout is untouched)."""
    def all_reduce(tensor, op=None, group=None, async_op=False):
        calls["all_reduce"] = calls.get("all_reduce", 0) + 1  # one process: the sum is the tensor itself

    patches = [
        mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self),
        mock.patch.object(torch.cuda, "synchronize", lambda *args, **kwargs: None),
        mock.patch.object(torch.distributed, "all_reduce", all_reduce),
        mock.patch.object(torch.distributed, "get_world_size", lambda group=None: 1),
        mock.patch.object(torch.cuda.amp, "autocast", lambda *args, **kwargs: contextlib.nullcontext()),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


class DDPLike(nn.Module):
    """Gives the student the ``.module`` attribute of DistributedDataParallel (the official EMA reads
    ``student.module.parameters()``); its parameter names get the ``module.`` prefix, as under DDP."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def build_official(official: dict, case: str, settings: dict) -> dict:
    """The networks, loss, optimiser and schedules as ``train_dino`` builds them, at the tiny sizes."""
    vits, utils, main = official["vision_transformer"], official["utils"], official["main_dino"]
    head = ours.CASES[case]

    def vit(drop_path_rate: float) -> nn.Module:  # what vits.vit_tiny/small/base do, with the tiny sizes
        return vits.VisionTransformer(
            img_size=[settings["img_size"]], patch_size=settings["patch_size"], embed_dim=settings["embed_dim"],
            depth=settings["depth"], num_heads=settings["num_heads"], mlp_ratio=settings["mlp_ratio"],
            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate)

    def dino_head(norm_last_layer: bool) -> nn.Module:
        return vits.DINOHead(settings["embed_dim"], settings["out_dim"], use_bn=head["use_bn"],
                             norm_last_layer=norm_last_layer, nlayers=settings["head_layers"],
                             hidden_dim=settings["hidden_dim"], bottleneck_dim=settings["bottleneck_dim"])

    student_vit, teacher_vit = vit(settings["drop_path"]), vit(0.0)
    student = utils.MultiCropWrapper(student_vit, dino_head(head["norm_last_layer"]))
    teacher = utils.MultiCropWrapper(teacher_vit, dino_head(True))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    epochs, niter = settings["epochs"], settings["steps_per_epoch"]
    loss = main.DINOLoss(settings["out_dim"], settings["local_crops_number"] + 2, settings["warmup_teacher_temp"],
                         settings["teacher_temp"], settings["warmup_teacher_temp_epochs"], epochs,
                         student_temp=settings["student_temp"], center_momentum=settings["center_momentum"])
    wrapped = DDPLike(student)
    optimizer = torch.optim.AdamW(utils.get_params_groups(wrapped))
    schedules = {
        "lr": utils.cosine_scheduler(ours.peak_lr(settings), settings["min_lr"], epochs, niter,
                                     warmup_epochs=settings["warmup_epochs"]),
        "wd": utils.cosine_scheduler(settings["weight_decay"], settings["weight_decay_end"], epochs, niter),
        "momentum": utils.cosine_scheduler(settings["momentum_teacher"], 1, epochs, niter),
    }
    args = Namespace(epochs=epochs, clip_grad=settings["clip_grad"], freeze_last_layer=settings["freeze_last_layer"])
    return dict(student=student, wrapped=wrapped, teacher=teacher, loss=loss, optimizer=optimizer,
                schedules=schedules, args=args)


def official_state(parts: dict) -> dict[str, torch.Tensor]:
    """The official networks' state under OUR keys (student.*, teacher.*, dino_loss.center)."""
    out = {f"student.{k}": v for k, v in parts["student"].state_dict().items()}
    out.update({f"teacher.{k}": v for k, v in parts["teacher"].state_dict().items()})
    out.update({f"dino_loss.{k}": v for k, v in parts["loss"].state_dict().items()})
    return out


def load_official(parts: dict, weights: dict[str, torch.Tensor]) -> None:
    for prefix, module in (("student.", parts["student"]), ("teacher.", parts["teacher"]),
                           ("dino_loss.", parts["loss"])):
        module.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True)


def run_official(official: dict, case: str, crops: list[torch.Tensor], settings: dict) -> dict:
    """``train_one_epoch`` for epochs 0 and 1, each on a one-batch loader; returns what it computed."""
    main = official["main_dino"]
    parts = build_official(official, case, settings)
    template = official_state(parts)
    weights = ours.deterministic_state_dict(template)
    load_official(parts, weights)
    names = {id(p): "student." + n for n, p in parts["student"].named_parameters()}
    record = {"losses": [], "grads": [], "states": [], "clip_norms": [], "calls": {}}

    def grads_before_step(opt, args, kwargs):
        record["grads"].append({names[id(p)]: p.grad.detach().clone()
                                for g in opt.param_groups for p in g["params"] if p.grad is not None})

    real_loss_forward = type(parts["loss"]).forward
    real_clip = official["utils"].clip_gradients

    def loss_forward(self, *args, **kwargs):
        value = real_loss_forward(self, *args, **kwargs)
        record["losses"].append(value.item())
        return value

    def clip(model, value):
        norms = real_clip(model, value)
        record["clip_norms"].append(norms)
        return norms

    hook = parts["optimizer"].register_step_pre_hook(grads_before_step)
    s = parts["schedules"]
    with official_runtime(record["calls"]), mock.patch.object(type(parts["loss"]), "forward", loss_forward), \
            mock.patch.object(official["utils"], "clip_gradients", clip), contextlib.redirect_stdout(io.StringIO()):
        for epoch in range(settings["epochs"]):
            loader = [([c.clone() for c in crops], torch.zeros(settings["batch_size"], dtype=torch.long))]
            main.train_one_epoch(parts["wrapped"], parts["teacher"], parts["teacher"], parts["loss"], loader,
                                 parts["optimizer"], s["lr"], s["wd"], s["momentum"], epoch, None, parts["args"])
            record["states"].append({k: v.detach().clone() for k, v in official_state(parts).items()})
    hook.remove()
    assert len(record["losses"]) == settings["epochs"] and record["calls"].get("all_reduce") == settings["epochs"]
    record["weights"], record["template"] = weights, template
    record["trainable"] = sorted(names[id(p)] for p in parts["student"].parameters() if p.requires_grad)
    record["groups"] = [sorted(names[id(p)] for p in g["params"]) for g in parts["optimizer"].param_groups]
    return record


def official_schedules(official: dict, settings: dict = ours.SCHEDULE_SETTINGS) -> dict[str, list[float]]:
    """The official schedule arrays of a longer run (per step; the teacher temperature and the frozen flag per
    epoch, repeated over the steps of each epoch)."""
    utils, main = official["utils"], official["main_dino"]
    s = settings
    epochs, niter = s["epochs"], s["steps_per_epoch"]
    loss = main.DINOLoss(8, 10, s["warmup_teacher_temp"], s["teacher_temp"], s["warmup_teacher_temp_epochs"], epochs)
    epoch_of = [step // niter for step in range(epochs * niter)]
    frozen = []
    for epoch in epoch_of:  # cancel_gradients_last_layer on a one-parameter model named like the last layer
        model = nn.Module()
        model.last_layer = nn.Linear(1, 1, bias=False)
        model.last_layer.weight.grad = torch.ones(1, 1)
        official["utils"].cancel_gradients_last_layer(epoch, model, s["freeze_last_layer"])
        frozen.append(model.last_layer.weight.grad is None)
    return {
        "lr": utils.cosine_scheduler(s["peak_lr"], s["min_lr"], epochs, niter,
                                     warmup_epochs=s["warmup_epochs"]).tolist(),
        "weight_decay": utils.cosine_scheduler(s["weight_decay"], s["weight_decay_end"], epochs, niter).tolist(),
        "momentum": utils.cosine_scheduler(s["momentum_teacher"], 1, epochs, niter).tolist(),
        "teacher_temp": [float(loss.teacher_temp_schedule[e]) for e in epoch_of],
        "last_layer_frozen": frozen,
    }


# ------------------------------------------------------------------------------------------- comparison

def normalised_error(ours_value: torch.Tensor, official_value: torch.Tensor) -> float:
    """``max |ours - official| / max |official|``: relative to the tensor's own scale."""
    diff = (ours_value.double() - official_value.double()).abs().max().item()
    scale = official_value.double().abs().max().item()
    return diff / scale if scale > 0 else diff


def part_of(name: str) -> str:
    return ".".join(name.split(".")[:2])  # student.backbone, student.head, teacher.backbone, ...


def _without(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    flat = tensor.reshape(-1)
    if index is None:
        return flat
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[index] = False
    return flat[keep]


def gradient_rows(official: list[dict], mine: list[dict], zero: dict[str, torch.Tensor]) -> list[dict]:
    """Comparison rows of the gradients of each step, per part, with the exact-zero entries (``zero``: their
    flat indices per tensor) compared on their own: tiny against the largest gradient, on both sides."""
    rows = []
    for step, (go, gm) in enumerate(zip(official, mine)):
        if set(go) != set(gm):
            rows.append(dict(what="grad set", step=step + 1, part="", abs=float("inf"), err=float("inf"), tol=0.0,
                             worst=", ".join(sorted(set(go) ^ set(gm)))))
            continue
        keep = {n: _without(g, zero.get(n)) for n, g in go.items()}
        mine_keep = {n: _without(g, zero.get(n)) for n, g in gm.items()}
        for part in sorted({part_of(n) for n in go}):
            names = [n for n in go if part_of(n) == part and keep[n].numel()]
            errs = {n: normalised_error(mine_keep[n], keep[n]) for n in names}
            worst = max(errs, key=errs.get)
            rows.append(dict(what="grad", step=step + 1, part=part,
                             abs=max((mine_keep[n] - keep[n]).abs().max().item() for n in names), err=errs[worst],
                             tol=TOLERANCES["grad"], worst=worst))
        scale = max(g.abs().max().item() for g in go.values())
        noise = {n: max(go[n].reshape(-1)[i].abs().max().item(), gm[n].reshape(-1)[i].abs().max().item())
                 for n, i in zero.items() if n in go}
        worst = max(noise, key=noise.get)
        rows.append(dict(what="grad (exact 0)", step=step + 1, part="both sides: |g| / max |g|",
                         abs=max((gm[n].reshape(-1)[i] - go[n].reshape(-1)[i]).abs().max().item()
                                 for n, i in zero.items() if n in go),
                         err=noise[worst] / scale, tol=TOLERANCES["zero_grad"], worst=worst))
    return rows


def compare_case(off: dict, mine: ours.OursResult, case: str, settings: dict) -> list[dict]:
    """Rows of (quantity, step, part, max abs diff, normalised error, tolerance, worst tensor)."""
    rows = []
    for step, (lo, lm) in enumerate(zip(off["losses"], mine.losses)):
        rows.append(dict(what="loss", step=step + 1, abs=abs(lm - lo), err=abs(lm - lo) / abs(lo),
                         tol=TOLERANCES["loss"], worst=""))
    shapes = {n: tuple(t.shape) for n, t in off["template"].items()}
    zero = ours.zero_gradient_entries(shapes, settings["embed_dim"], ours.CASES[case]["use_bn"])
    rows += gradient_rows(off["grads"], mine.grads, zero)
    for step, (so, sm) in enumerate(zip(off["states"], mine.states)):
        assert set(so) == set(sm)
        for part in sorted({part_of(n) for n in so}):
            names = [n for n in so if part_of(n) == part and so[n].is_floating_point()]
            if not names:
                continue
            errs = {n: normalised_error(sm[n], so[n]) for n in names}
            worst = max(errs, key=errs.get)
            what = "centre" if part == "dino_loss.center" else (
                "param/buffer" if any(ours.is_buffer(n) for n in names) else "param")
            rows.append(dict(what=what, step=step + 1, part=part,
                             abs=max((sm[n] - so[n]).abs().max().item() for n in names), err=errs[worst],
                             tol=TOLERANCES["param"], worst=worst))
    return rows


def compare_schedules(official: dict[str, list]) -> list[dict]:
    schedule = ours.our_schedule()
    values = [schedule.at(step) for step in range(len(official["lr"]))]
    rows = []
    for key, attr in (("lr", "lr"), ("weight_decay", "weight_decay"), ("momentum", "momentum"),
                      ("teacher_temp", "teacher_temp")):
        diffs = [abs(getattr(v, attr) - o) / max(abs(o), 1e-12) for v, o in zip(values, official[key])]
        worst = int(np.argmax(diffs))
        rows.append(dict(case="schedule", what=key, step=worst, part=f"{len(diffs)} steps", abs=diffs[worst],
                         err=diffs[worst], tol=TOLERANCES["schedule"], worst=""))
    mismatches = sum(v.last_layer_frozen != o for v, o in zip(values, official["last_layer_frozen"]))
    rows.append(dict(case="schedule", what="last layer frozen", step=0, part=f"{len(values)} steps",
                     abs=float(mismatches), err=float(mismatches), tol=0.0, worst=""))
    return rows


def check_layout(off: dict, case: str) -> list[str]:
    """Key and shape differences between the official state (mapped to our keys) and ours, and differences in
    what is trained and how it is grouped (all must be empty)."""
    model = ours.build_our_model(case)
    template = model.state_dict()
    official = off["template"]
    problems = [f"only official: {k}" for k in sorted(set(official) - set(template))]
    problems += [f"only ours: {k}" for k in sorted(set(template) - set(official))]
    problems += [f"shape {k}: official {tuple(official[k].shape)} ours {tuple(template[k].shape)}"
                 for k in sorted(set(official) & set(template)) if official[k].shape != template[k].shape]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    if trainable != off["trainable"]:
        problems.append(f"trainable parameters differ: {sorted(set(trainable) ^ set(off['trainable']))}")
    names = {id(p): n for n, p in model.named_parameters()}
    groups = sorted(sorted(names[id(p)] for p in g["params"]) for g in model.param_groups(0.04))
    if groups != sorted(off["groups"]):
        problems.append("the weight-decay groups differ from the official get_params_groups")
    return problems


def gradient_overrides(off: dict, case: str, settings: dict) -> list[dict]:
    """Per step, the entries whose official gradient our optimiser is given (indices and official values): the
    exact-zero entries, and every entry whose official |g| is below ``NOISE_FACTOR`` times the rounding noise
    measured on the exact-zero entries of that step (its sign is not determined by float32 arithmetic, and Adam's
    first steps, ``g / (|g| + eps)``, turn it into up to +-lr)."""
    shapes = {n: tuple(t.shape) for n, t in off["template"].items()}
    zero = ours.zero_gradient_entries(shapes, settings["embed_dim"], ours.CASES[case]["use_bn"])
    steps = []
    for grads in off["grads"]:
        noise = max(grads[n].reshape(-1)[i].abs().max().item() for n, i in zero.items() if n in grads)
        chosen = {}
        for name, grad in grads.items():
            flat = grad.reshape(-1)
            mask = flat.abs() < NOISE_FACTOR * noise
            if name in zero:
                mask[zero[name]] = True
            index = mask.nonzero().flatten()
            if index.numel():
                chosen[name] = (index, flat[index].clone())
        steps.append(chosen)
    return steps


# ------------------------------------------------------------------------------------------- golden fixture

def _round(value: float) -> float:
    return float(f"{value:.9g}")  # float32 needs 9 significant digits


def golden_case(off: dict, overrides: list[dict]) -> dict:
    def summaries(tensors: dict) -> dict:
        return {n: [_round(v) for v in ours.summary(t)] for n, t in sorted(tensors.items()) if t.is_floating_point()}
    return {
        "losses": [_round(v) for v in off["losses"]],
        "grads": [summaries(grads) for grads in off["grads"]],
        "gradient_overrides": [{n: [index.tolist(), [_round(x) for x in values.tolist()]]
                                for n, (index, values) in step.items()} for step in overrides],
        "states": [summaries(state) for state in off["states"]],
        "trainable": off["trainable"],
        "groups": sorted(off["groups"]),
        "initial_weights": [_round(x) for x in ours.summary(torch.cat(
            [w.flatten().double() for _, w in sorted(off["weights"].items()) if w.is_floating_point()]))[:2]],
        "state_dict_shapes": {k: list(v.shape) for k, v in sorted(off["template"].items())},
    }


def _dump(obj, indent: int = 0) -> str:
    """JSON with one line per leaf (a summary, a list of values): small, and readable in a diff."""
    if isinstance(obj, dict) and obj and any(isinstance(v, (dict, list)) for v in obj.values()):
        pad = " " * (indent + 1)
        items = [f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        pad = " " * (indent + 1)
        return "[\n" + ",\n".join(pad + _dump(v, indent + 1) for v in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj, separators=(",", ":"))


def official_commit(path: Path) -> str:
    head = path / ".git" / "HEAD"
    if not head.is_file():
        return "unknown (not a git checkout)"
    ref = head.read_text().strip()
    if ref.startswith("ref: "):
        target = path / ".git" / ref[5:]
        if target.is_file():
            return target.read_text().strip()
        packed = path / ".git" / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(ref[5:]):
                    return line.split()[0]
        return "unknown"
    return ref


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of github.com/facebookresearch/dino")
    parser.add_argument("--commit", default="", help="the official commit, recorded in the fixture (default: read "
                        "from the checkout's .git, if any)")
    parser.add_argument("--write-golden", type=Path, default=None, metavar="PATH",
                        help="write the official numbers as a JSON fixture (e.g. tests/fixtures/dino_parity.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    official = import_official(args.official)
    settings = ours.SETTINGS
    crops = ours.make_crops()
    failures: list[str] = []
    commit = args.commit or official_commit(args.official)
    golden = {"about": "Numbers of the OFFICIAL DINO training step (facebookresearch/dino main_dino.train_one_epoch, "
                       "epochs 0 and 1 on one batch) written by tools/parity/dino_step.py; checked by "
                       "tests/test_dino_parity_golden.py. Summaries are [sum, L2 norm, first, middle, last entry]; "
                       "keys are ours (student.*, teacher.*, dino_loss.center: see parity_dino_ours.official_key).",
              "official_commit": commit, "settings": settings, "seeds": ours.SEEDS,
              "crops": [[_round(x) for x in ours.summary(c)[:2]] for c in crops], "cases": {}}
    table = []
    for case in ours.CASES:
        off = run_official(official, case, crops, settings)
        layout = check_layout(off, case)
        if layout:
            failures += [f"{case}: {p}" for p in layout]
            print(f"{case}: layout differs:\n  " + "\n  ".join(layout))
            continue
        overrides = gradient_overrides(off, case, settings)
        mine = ours.run_ours(off["weights"], crops, case, grad_overrides=overrides)
        rows = compare_case(off, mine, case, settings)
        for row in rows:
            row["case"] = case
            if not row["err"] <= row["tol"]:
                failures.append(f"{case} step {row['step']} {row['what']} {row.get('part', '')} {row['worst']}: "
                                f"normalised error {row['err']:.3g} > {row['tol']:g}")
        table += rows
        clipped = [sum(n > settings["clip_grad"] for n in norms) for norms in off["clip_norms"]]
        zero = ours.zero_gradient_entries({n: tuple(t.shape) for n, t in off["template"].items()},
                                          settings["embed_dim"], ours.CASES[case]["use_bn"])
        noise = max(g[n].reshape(-1)[i].abs().max().item() for g in off["grads"] for n, i in zero.items() if n in g)
        near = [sum(i.numel() for i, _ in step.values()) - sum(zero[n].numel() for n in step if n in zero)
                for step in overrides]
        print(f"{case}: state-dict keys and shapes identical ({len(off['template'])} entries), same trainable "
              f"tensors and weight-decay groups; official clipping touched {clipped} of "
              f"{[len(n) for n in off['clip_norms']]} gradient tensors; official |g| on the zero-true-gradient "
              f"entries <= {noise:.2g}; {near} other entries below {NOISE_FACTOR:g}x that noise take the official "
              f"value in our optimiser step; centre all-reduced {off['calls']['all_reduce']} times")
        golden["cases"][case] = golden_case(off, overrides)
    schedules = official_schedules(official)
    table += compare_schedules(schedules)
    failures += [f"schedule {r['what']}: {r['err']:.3g} > {r['tol']:g}" for r in table
                 if r["case"] == "schedule" and not r["err"] <= r["tol"]]
    golden["schedule_settings"] = ours.SCHEDULE_SETTINGS
    golden["schedules"] = {k: [_round(x) if isinstance(x, float) else x for x in v] for k, v in schedules.items()}

    print(f"\n{'case':<16} {'quantity':<15} {'step':>4} {'part':<26} {'max abs diff':>12} {'norm. err':>10} "
          f"{'tol':>7}  worst tensor")
    for row in table:
        print(f"{row['case']:<16} {row['what']:<15} {row['step']:>4} {row.get('part', ''):<26} {row['abs']:>12.3e} "
              f"{row['err']:>10.2e} {row['tol']:>7.0e}  {row['worst']}")
    print("\nnorm. err: losses |ours - official| / |official|; gradients, parameters and buffers: max |ours - "
          "official| over a tensor / max |official| of that tensor (the worst tensor of the part is shown); "
          "grad (exact 0): the largest |gradient| of either side on the zero-true-gradient entries / the largest "
          "official gradient entry; schedules: relative difference at the worst step.")
    print(f"official commit: {commit}")
    if args.write_golden is not None:
        if failures:
            print("not writing the golden fixture: the comparison failed")
        else:
            args.write_golden.parent.mkdir(parents=True, exist_ok=True)
            args.write_golden.write_text(_dump(golden) + "\n")
            print(f"wrote {args.write_golden} ({args.write_golden.stat().st_size / 1024:.1f} KiB)")
    if failures:
        print("\nMISMATCH:\n  " + "\n  ".join(failures))
        return 1
    print("\nPASS: our DINO training step matches the official one in all cases.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
