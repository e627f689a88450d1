"""Proof that our SelfPatch training step computes what the official one computes.

What it proves: on identical weights (student, teacher, both centres) and the same crops (2 global + 2 local,
passed as tensors: no augmentation randomness is involved), the OFFICIAL training step (``main_selfpatch.
train_one_epoch`` of github.com/alinlab/SelfPatch, run on a one-batch loader for epochs 0 and 1) and OUR training
step (``patchmix.engine.train_step`` of a ``PretrainTask`` with the ``SelfPatch`` method) give

* the same neighbourhoods (the official ``SelfPatchHead.get_local_index`` for its 14x14 and 6x6 grids against our
  ``neighbour_index``) and, before any step, the same teacher and student outputs on every crop (image logits,
  patch logits: for the teacher those of the aggregated top-k neighbours);
* the same total loss, image loss and patch loss at each of the two steps;
* the same gradient of every student parameter as the optimiser receives it (after the per-tensor clipping, and
  without both last layers in epoch 0, whose gradients both codes cancel);
* the same student and teacher parameters and the same two centres (image ``center``, ``patch_center``) after
  each step;
* the same schedules (lr with warm-up, weight decay, teacher momentum, teacher temperature, frozen epochs) over a
  longer run;

for two heads: the default (weight-normalised last layers with their norms frozen) and trained norms
(``--norm_last_layer false``). It prints a table of the differences and exits with status 1 when one exceeds its
tolerance (``TOLERANCES``).

How to run (a CPU is enough, a few seconds)::

    git clone https://github.com/alinlab/SelfPatch /path/to/official-selfpatch
    python tools/parity/selfpatch_step.py --official /path/to/official-selfpatch
    # and to refresh the CI fixture that tests/test_selfpatch_parity_golden.py compares against:
    python tools/parity/selfpatch_step.py --official /path/to/official-selfpatch \\
        --write-golden tests/fixtures/selfpatch_parity.json

How: the official modules (``main_selfpatch``, ``utils``, ``selfpatch_vision_transformer``) are imported from the
given checkout and patched at run time only (the checkout is not modified), as in ``tools/parity/dino_step.py``:
``Tensor.cuda`` returns the tensor itself, ``torch.cuda.synchronize`` does nothing, ``torch.distributed`` answers
``all_reduce`` (the two centres') as the only process of one and ``get_world_size`` as 1, ``torch.cuda.amp.
autocast`` is a no-op, ``fp16_scaler`` is None (fp32, as ``--use_fp16 false``), and the student gets the
``.module`` attribute of DistributedDataParallel that the official loop uses. The networks are built as
``train_dino`` of ``main_selfpatch.py`` builds them (its ``MultiCropWrapper`` of the official ViT without CLS
token, a ``SelfPatchHead`` and two ``DINOHead``s; its ``DINOLoss``; AdamW over ``get_params_groups``;
``cosine_scheduler``), at tiny sizes that keep the only grids the official head accepts (196 and 36 patches); both
sides then load the same deterministic weights (``tests/parity_selfpatch_ours.py``), keys mapped between the
layouts (the one shape difference: the official image centre is (1, 1, K), ours (1, K)).

Zero-gradient trap (see ``tools/parity/dino_step.py``): the key part of every ``qkv.bias`` of the ViT and every
``attn.k.bias`` of the SelfPatch head's class attention have an exact gradient of 0; what both codes compute there
is rounding noise, which Adam's first steps turn into updates of up to about +-lr. These entries are checked on
their own (tiny against the largest gradient on both sides) and left out of the relative gradient comparison;
before our optimiser step, the official values of these entries and of every entry whose official |g| is below
``NOISE_FACTOR`` x that noise are written into our gradients (the fixture stores them), so that parameters are
compared after steps on identical gradients; every other entry our optimiser uses is our own.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from argparse import Namespace
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT, REPO_ROOT / "tests", Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import dino_step  # noqa: E402  (the shared machinery of the DINO proof: import, run-time patches, tables)
import parity_selfpatch_ours as ours  # noqa: E402

from patchmix.selfpatch_head import neighbour_index  # noqa: E402

TOLERANCES = {"loss": 1e-5, "forward": 1e-5, "grad": 1e-4, "param": 1e-4, "zero_grad": 1e-5, "schedule": 1e-9,
              "index": 0.0}
NOISE_FACTOR = 10.0
OFFICIAL_MODULES = ("main_selfpatch", "utils", "selfpatch_vision_transformer")


# ------------------------------------------------------------------------------------------- official code

def import_official(path: Path) -> dict:
    return dino_step.import_official(path, OFFICIAL_MODULES, "alinlab/SelfPatch")


def build_official(official: dict, case: str, settings: dict) -> dict:
    """The networks, loss, optimiser and schedules as ``train_dino`` of ``main_selfpatch.py`` builds them."""
    vits, utils, main = official["selfpatch_vision_transformer"], official["utils"], official["main_selfpatch"]
    head = ours.CASES[case]
    dim = settings["embed_dim"]

    def vit(drop_path_rate: float) -> nn.Module:  # what vits.vit_tiny/small/base do, with the tiny sizes
        return vits.VisionTransformer(
            img_size=[settings["img_size"]], patch_size=settings["patch_size"], embed_dim=dim,
            depth=settings["depth"], num_heads=settings["num_heads"], mlp_ratio=settings["mlp_ratio"],
            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate)

    def dino_head(out_dim: int, norm_last_layer: bool) -> nn.Module:
        return vits.DINOHead(dim, out_dim, use_bn=head["use_bn"], norm_last_layer=norm_last_layer,
                             nlayers=settings["head_layers"], hidden_dim=settings["hidden_dim"],
                             bottleneck_dim=settings["bottleneck_dim"])

    student_vit, teacher_vit = vit(settings["drop_path"]), vit(0.0)
    student = main.MultiCropWrapper(student_vit, vits.SelfPatchHead(dim, settings["num_heads"], settings["k_num"]),
                                    dino_head(settings["out_dim"], head["norm_last_layer"]),
                                    dino_head(settings["out_dim_selfpatch"], head["norm_last_layer"]))
    teacher = main.MultiCropWrapper(teacher_vit, vits.SelfPatchHead(dim, settings["num_heads"], settings["k_num"]),
                                    dino_head(settings["out_dim"], True),
                                    dino_head(settings["out_dim_selfpatch"], True))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    epochs, niter = settings["epochs"], settings["steps_per_epoch"]
    loss = main.DINOLoss(settings["out_dim"], settings["out_dim_selfpatch"], settings["local_crops_number"] + 2,
                         settings["warmup_teacher_temp"], settings["teacher_temp"],
                         settings["warmup_teacher_temp_epochs"], epochs, student_temp=settings["student_temp"],
                         center_momentum=settings["center_momentum"])
    wrapped = dino_step.DDPLike(student)
    optimizer = torch.optim.AdamW(utils.get_params_groups(wrapped))
    schedules = {
        "lr": utils.cosine_scheduler(dino_step.ours.peak_lr(settings), settings["min_lr"], epochs, niter,
                                     warmup_epochs=settings["warmup_epochs"]),
        "wd": utils.cosine_scheduler(settings["weight_decay"], settings["weight_decay_end"], epochs, niter),
        "momentum": utils.cosine_scheduler(settings["momentum_teacher"], 1, epochs, niter),
    }
    args = Namespace(epochs=epochs, clip_grad=settings["clip_grad"], freeze_last_layer=settings["freeze_last_layer"])
    return dict(student=student, wrapped=wrapped, teacher=teacher, loss=loss, optimizer=optimizer,
                schedules=schedules, args=args)


def official_state(parts: dict) -> dict[str, torch.Tensor]:
    """The official networks' state under OUR keys and shapes (the image centre (1, 1, K) -> (1, K))."""
    out = {f"student.{k}": v for k, v in parts["student"].state_dict().items()}
    out.update({f"teacher.{k}": v for k, v in parts["teacher"].state_dict().items()})
    for key, value in parts["loss"].state_dict().items():
        out[f"dino_loss.{key}"] = value.reshape(1, -1)
    return out


def load_official(parts: dict, weights: dict[str, torch.Tensor]) -> None:
    for prefix, module in (("student.", parts["student"]), ("teacher.", parts["teacher"]),
                           ("dino_loss.", parts["loss"])):
        own = module.state_dict()
        module.load_state_dict({k[len(prefix):]: v.reshape(own[k[len(prefix):]].shape)
                                for k, v in weights.items() if k.startswith(prefix)}, strict=True)


def official_outputs(parts: dict, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official wrappers' outputs on the crops, called as the official step calls them (global crops
    together, local crops together): teacher with ``loc=True``, student with ``loc=False``; flattened per crop
    in our layout (image logits (crops x B, K); patch logits of each crop)."""
    out = {}
    with torch.no_grad():
        for who, loc in (("teacher", True), ("student", False)):
            image, patches = [], []
            for group in (crops[:2], crops[2:]):
                c, p = parts[who](torch.cat(group), head_only=True, loc=loc)
                image.append(c[:, 0])
                patches += list(p.chunk(len(group)))
            out[f"{who} image logits"] = torch.cat(image)
            for i, p in enumerate(patches):
                out[f"{who} patch logits crop {i}"] = p
    return out


def run_official(official: dict, case: str, crops: list[torch.Tensor], settings: dict) -> dict:
    """``train_one_epoch`` for epochs 0 and 1, each on a one-batch loader; returns what it computed."""
    main = official["main_selfpatch"]
    parts = build_official(official, case, settings)
    template = official_state(parts)
    weights = ours.deterministic_state_dict(template, ours.SEEDS["weights"])
    load_official(parts, weights)
    names = {id(p): "student." + n for n, p in parts["student"].named_parameters()}
    record = {"losses": [], "image_losses": [], "patch_losses": [], "grads": [], "states": [], "clip_norms": [],
              "calls": {}}
    with dino_step.official_runtime(record["calls"]):
        record["outputs"] = official_outputs(parts, crops)

    def grads_before_step(opt, args, kwargs):
        record["grads"].append({names[id(p)]: p.grad.detach().clone()
                                for g in opt.param_groups for p in g["params"] if p.grad is not None})

    real_loss_forward = type(parts["loss"]).forward
    real_clip = official["utils"].clip_gradients

    def loss_forward(self, *args, **kwargs):
        value, c_loss, p_loss = real_loss_forward(self, *args, **kwargs)
        record["losses"].append(value.item())
        record["image_losses"].append(c_loss)
        record["patch_losses"].append(p_loss)
        return value, c_loss, p_loss

    def clip(model, value):
        norms = real_clip(model, value)
        record["clip_norms"].append(norms)
        return norms

    hook = parts["optimizer"].register_step_pre_hook(grads_before_step)
    s = parts["schedules"]
    record["calls"].clear()
    with dino_step.official_runtime(record["calls"]), \
            mock.patch.object(type(parts["loss"]), "forward", loss_forward), \
            mock.patch.object(official["utils"], "clip_gradients", clip), contextlib.redirect_stdout(io.StringIO()):
        for epoch in range(settings["epochs"]):
            loader = [([c.clone() for c in crops], torch.zeros(settings["batch_size"], dtype=torch.long))]
            main.train_one_epoch(parts["wrapped"], parts["teacher"], parts["teacher"], parts["loss"], loader,
                                 parts["optimizer"], s["lr"], s["wd"], s["momentum"], epoch, None, parts["args"])
            record["states"].append({k: v.detach().clone() for k, v in official_state(parts).items()})
    hook.remove()
    assert len(record["losses"]) == settings["epochs"]
    assert record["calls"].get("all_reduce") == 2 * settings["epochs"]  # the two centres, once per step
    record["weights"], record["template"] = weights, template
    record["trainable"] = sorted(names[id(p)] for p in parts["student"].parameters() if p.requires_grad)
    record["groups"] = [sorted(names[id(p)] for p in g["params"]) for g in parts["optimizer"].param_groups]
    return record


def official_neighbourhoods(official: dict) -> dict[int, list[list[int]]]:
    """The official neighbour indices of the two grids its head supports (14x14, 6x6)."""
    head = official["selfpatch_vision_transformer"].SelfPatchHead
    return {grid: head.get_local_index(grid * grid, 3).tolist() for grid in (14, 6)}


def official_schedules(official: dict, settings: dict = ours.SCHEDULE_SETTINGS) -> dict[str, list]:
    """The official schedule arrays of a longer run (per step; the teacher temperature and the frozen flag per
    epoch, repeated over the steps of each epoch)."""
    utils, main = official["utils"], official["main_selfpatch"]
    s = settings
    epochs, niter = s["epochs"], s["steps_per_epoch"]
    loss = main.DINOLoss(8, 8, 10, s["warmup_teacher_temp"], s["teacher_temp"], s["warmup_teacher_temp_epochs"],
                         epochs)
    epoch_of = [step // niter for step in range(epochs * niter)]
    frozen = []
    for epoch in epoch_of:  # cancel_gradients_last_layer on a model with SelfPatch's two last layers
        model = nn.Module()
        model.c_head, model.p_head = nn.Module(), nn.Module()
        model.c_head.last_layer = nn.Linear(1, 1, bias=False)
        model.p_head.last_layer = nn.Linear(1, 1, bias=False)
        for layer in (model.c_head.last_layer, model.p_head.last_layer):
            layer.weight.grad = torch.ones(1, 1)
        utils.cancel_gradients_last_layer(epoch, model, s["freeze_last_layer"])
        cancelled = [layer.weight.grad is None for layer in (model.c_head.last_layer, model.p_head.last_layer)]
        assert cancelled[0] == cancelled[1]
        frozen.append(cancelled[0])
    return {
        "lr": utils.cosine_scheduler(s["peak_lr"], s["min_lr"], epochs, niter,
                                     warmup_epochs=s["warmup_epochs"]).tolist(),
        "weight_decay": utils.cosine_scheduler(s["weight_decay"], s["weight_decay_end"], epochs, niter).tolist(),
        "momentum": utils.cosine_scheduler(s["momentum_teacher"], 1, epochs, niter).tolist(),
        "teacher_temp": [float(loss.teacher_temp_schedule[e]) for e in epoch_of],
        "last_layer_frozen": frozen,
    }


# ------------------------------------------------------------------------------------------- comparison

def zero_entries(off: dict, settings: dict) -> dict[str, torch.Tensor]:
    return ours.zero_gradient_entries({n: tuple(t.shape) for n, t in off["template"].items()}, settings["embed_dim"])


def compare_case(off: dict, mine, settings: dict) -> list[dict]:
    """Rows of (quantity, step, part, max abs diff, normalised error, tolerance, worst tensor)."""
    rows = []
    mine_outputs = ours.our_outputs(off["weights"], ours.make_crops(), off["case"])
    for name, value in off["outputs"].items():
        rows.append(dict(what="forward", step=0, part=name, abs=(mine_outputs[name] - value).abs().max().item(),
                         err=dino_step.normalised_error(mine_outputs[name], value), tol=TOLERANCES["forward"],
                         worst=""))
    for key, label in (("losses", "loss"), ("image_losses", "image loss"), ("patch_losses", "patch loss")):
        term = {"losses": "loss", "image_losses": "image_loss", "patch_losses": "patch_loss"}[key]
        for step, (lo, terms) in enumerate(zip(off[key], mine.terms)):
            lm = terms[term]
            rows.append(dict(what=label, step=step + 1, part="", abs=abs(lm - lo), err=abs(lm - lo) / abs(lo),
                             tol=TOLERANCES["loss"], worst=""))
    zero = zero_entries(off, settings)
    rows += dino_step.gradient_rows(off["grads"], mine.grads, zero)
    for step, (so, sm) in enumerate(zip(off["states"], mine.states)):
        assert set(so) == set(sm)
        for part in sorted({dino_step.part_of(n) for n in so}):
            names = [n for n in so if dino_step.part_of(n) == part and so[n].is_floating_point()]
            errs = {n: dino_step.normalised_error(sm[n], so[n]) for n in names}
            worst = max(errs, key=errs.get)
            what = "centre" if part.startswith("dino_loss.") else "param"
            rows.append(dict(what=what, step=step + 1, part=part,
                             abs=max((sm[n] - so[n]).abs().max().item() for n in names), err=errs[worst],
                             tol=TOLERANCES["param"], worst=worst))
    return rows


def compare_neighbourhoods(official: dict[int, list[list[int]]]) -> list[dict]:
    rows = []
    for grid, index in official.items():
        wrong = int((neighbour_index(grid) != torch.tensor(index)).sum().item())
        rows.append(dict(case="index", what="neighbours", step=0, part=f"{grid}x{grid} grid, {len(index)} patches",
                         abs=float(wrong), err=float(wrong), tol=TOLERANCES["index"], worst=""))
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
    trainable = sorted(ours.state_key(n) for n, p in model.named_parameters() if p.requires_grad)
    if trainable != off["trainable"]:
        problems.append(f"trainable parameters differ: {sorted(set(trainable) ^ set(off['trainable']))}")
    names = {id(p): ours.state_key(n) for n, p in model.named_parameters()}
    groups = sorted(sorted(names[id(p)] for p in g["params"]) for g in model.param_groups(0.04))
    if groups != sorted(off["groups"]):
        problems.append("the weight-decay groups differ from the official get_params_groups")
    return problems


def gradient_overrides(off: dict, settings: dict) -> list[dict]:
    """Per step, the entries whose official gradient our optimiser is given (indices and official values): the
    exact-zero entries, and every entry whose official |g| is below ``NOISE_FACTOR`` times the rounding noise
    measured on the exact-zero entries of that step."""
    zero = zero_entries(off, settings)
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

def golden_case(off: dict, overrides: list[dict]) -> dict:
    r = dino_step._round

    def summaries(tensors: dict) -> dict:
        return {n: [r(v) for v in ours.summary(t)] for n, t in sorted(tensors.items()) if t.is_floating_point()}
    return {
        "losses": [r(v) for v in off["losses"]],
        "image_losses": [r(v) for v in off["image_losses"]],
        "patch_losses": [r(v) for v in off["patch_losses"]],
        "outputs": summaries(off["outputs"]),
        "grads": [summaries(grads) for grads in off["grads"]],
        "gradient_overrides": [{n: [index.tolist(), [r(x) for x in values.tolist()]]
                                for n, (index, values) in step.items()} for step in overrides],
        "states": [summaries(state) for state in off["states"]],
        "trainable": off["trainable"],
        "groups": sorted(off["groups"]),
        "initial_weights": [r(x) for x in ours.summary(torch.cat(
            [w.flatten().double() for _, w in sorted(off["weights"].items()) if w.is_floating_point()]))[:2]],
        "state_dict_shapes": {k: list(v.shape) for k, v in sorted(off["template"].items())},
    }


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of github.com/alinlab/SelfPatch")
    parser.add_argument("--commit", default="", help="the official commit, recorded in the fixture (default: read "
                        "from the checkout's .git, if any)")
    parser.add_argument("--write-golden", type=Path, default=None, metavar="PATH",
                        help="write the official numbers as a JSON fixture (e.g. tests/fixtures/selfpatch_parity.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    official = import_official(args.official)
    settings = ours.SETTINGS
    crops = ours.make_crops()
    failures: list[str] = []
    commit = args.commit or dino_step.official_commit(args.official)
    r = dino_step._round
    neighbourhoods = official_neighbourhoods(official)
    golden = {"about": "Numbers of the OFFICIAL SelfPatch training step (alinlab/SelfPatch main_selfpatch."
                       "train_one_epoch, epochs 0 and 1 on one batch) written by tools/parity/selfpatch_step.py; "
                       "checked by tests/test_selfpatch_parity_golden.py. Summaries are [sum, L2 norm, first, "
                       "middle, last entry]; keys are ours (student.*, teacher.*, dino_loss.center, "
                       "dino_loss.patch_center: see parity_selfpatch_ours.official_key).",
              "official_commit": commit, "settings": settings, "seeds": ours.SEEDS,
              "crops": [[r(x) for x in ours.summary(c)[:2]] for c in crops],
              "neighbourhoods": {str(grid): index for grid, index in neighbourhoods.items()}, "cases": {}}
    table = compare_neighbourhoods(neighbourhoods)
    for case in ours.CASES:
        off = run_official(official, case, crops, settings)
        off["case"] = case
        layout = check_layout(off, case)
        if layout:
            failures += [f"{case}: {p}" for p in layout]
            print(f"{case}: layout differs:\n  " + "\n  ".join(layout))
            continue
        overrides = gradient_overrides(off, settings)
        mine = ours.run_ours(off["weights"], crops, case, grad_overrides=overrides)
        rows = compare_case(off, mine, settings)
        for row in rows:
            row["case"] = case
        table += rows
        clipped = [sum(n > settings["clip_grad"] for n in norms) for norms in off["clip_norms"]]
        zero = zero_entries(off, settings)
        noise = max(g[n].reshape(-1)[i].abs().max().item() for g in off["grads"] for n, i in zero.items() if n in g)
        near = [sum(i.numel() for i, _ in step.values()) - sum(zero[n].numel() for n in step if n in zero)
                for step in overrides]
        print(f"{case}: state-dict keys and shapes identical ({len(off['template'])} entries; official image centre "
              f"(1, 1, K) read as (1, K)), same trainable tensors and weight-decay groups; official clipping touched "
              f"{clipped} of {[len(n) for n in off['clip_norms']]} gradient tensors; official |g| on the "
              f"zero-true-gradient entries <= {noise:.2g}; {near} other entries below {NOISE_FACTOR:g}x that noise "
              f"take the official value in our optimiser step; centres all-reduced {off['calls']['all_reduce']} "
              f"times")
        golden["cases"][case] = golden_case(off, overrides)
    schedules = official_schedules(official)
    table += dino_step.compare_schedules(schedules)
    failures += [f"{row['case']} step {row['step']} {row['what']} {row.get('part', '')} {row['worst']}: "
                 f"normalised error {row['err']:.3g} > {row['tol']:g}" for row in table if not row["err"] <= row["tol"]]
    golden["schedule_settings"] = ours.SCHEDULE_SETTINGS
    golden["schedules"] = {k: [r(x) if isinstance(x, float) else x for x in v] for k, v in schedules.items()}

    print(f"\n{'case':<16} {'quantity':<15} {'step':>4} {'part':<30} {'max abs diff':>12} {'norm. err':>10} "
          f"{'tol':>7}  worst tensor")
    for row in table:
        print(f"{row['case']:<16} {row['what']:<15} {row['step']:>4} {row.get('part', ''):<30} {row['abs']:>12.3e} "
              f"{row['err']:>10.2e} {row['tol']:>7.0e}  {row['worst']}")
    print("\nnorm. err: losses |ours - official| / |official|; outputs, gradients, parameters and centres: max |ours "
          "- official| over a tensor / max |official| of that tensor (the worst tensor of the part is shown); grad "
          "(exact 0): the largest |gradient| of either side on the zero-true-gradient entries / the largest official "
          "gradient entry; neighbours: entries that differ; schedules: relative difference at the worst step.")
    print(f"official commit: {commit}")
    if args.write_golden is not None:
        if failures:
            print("not writing the golden fixture: the comparison failed")
        else:
            args.write_golden.parent.mkdir(parents=True, exist_ok=True)
            args.write_golden.write_text(dino_step._dump(golden) + "\n")
            print(f"wrote {args.write_golden} ({args.write_golden.stat().st_size / 1024:.1f} KiB)")
    if failures:
        print("\nMISMATCH:\n  " + "\n  ".join(failures))
        return 1
    print("\nPASS: our SelfPatch training step matches the official one in all cases.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
