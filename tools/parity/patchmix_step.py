"""Proof that our PatchMix training step computes what the official one computes.

What it proves: on identical weights, the same batch (two views) and the same random patch partitions, the
OFFICIAL training step (``main_pretrain.train_epoch`` of github.com/visresearch/patchmix, run on a one-batch
loader) and OUR training step (``patchmix.engine.train_step``) give

* the same mixed images (bit for bit) for the same permutation,
* the same loss terms (origin-to-origin, mix-to-origin, mix-to-mix, total),
* the same gradient of every trainable parameter,
* the same parameters (online encoder, momentum encoder, predictor) after each of two optimiser steps,

for ``m = 2`` and ``m = 3``, each with the momentum encoder and without it (the official ViT-T variant: keys from
the online network, no gradient). It prints a table of the differences and exits with status 1 when one exceeds
its tolerance (see ``TOLERANCES``).

How to run (needs ``einops`` for the official code, a CPU is enough, a few seconds)::

    git clone https://github.com/visresearch/patchmix /path/to/official-patchmix
    python tools/parity/patchmix_step.py --official /path/to/official-patchmix
    # and to refresh the CI fixture that tests/test_parity_golden.py compares against:
    python tools/parity/patchmix_step.py --official /path/to/official-patchmix \\
        --write-golden tests/fixtures/patchmix_parity.json

How: the official modules are imported from the given checkout and patched at run time only (the checkout is
not modified) so that they run on the CPU without a process group: ``Tensor.cuda`` returns the tensor itself,
``torch.distributed`` answers as rank 0 of 1 (``all_gather`` copies), ``PatchMixer._one_hot`` builds on the CPU,
``torch.cuda.amp.autocast`` is a no-op (fp32), the grad scaler passes the loss through, and the model gets the
``.module`` attribute the official loop uses. The official arguments are its ViT-T config with the tiny sizes,
one constant learning rate, weight decay, temperature and EMA momentum for both steps (``moco_m_cos`` off: the
same momentum at both steps on both sides). Both models are tiny (``tests/parity_ours.py: SETTINGS``), drop
path is 0 (its random masks cannot be matched) and both get the same deterministic weights.

Random partitions: the official shuffler draws its permutation with ``np.random.shuffle`` (one draw per mixed
view, view 1 first). The permutation of each view is recorded and our mixer is handed the equivalent per-patch
offsets of the SAME view (our step mixes view 2 first), through ``parity_ours.offsets_from_permutation``. That
equivalence is asserted twice: our real ``mix_offsets`` maps the same permutation (drawn by ``torch.randperm``)
to the same offsets, and our mixed images equal the official ones exactly.

Zero-gradient trap: the final ``norm.bias`` and the key part of every ``qkv.bias`` have an exact gradient of 0
(a BatchNorm removes shifts, a softmax ignores them); what both codes compute there is rounding noise (here
below 1e-6, about 2e-7 of the largest gradient entry), different in each, and Adam's normalised update turns
that noise into steps of up to about +-lr (without the measure below these entries differ by 3.8e-3 = 1.9 lr
after step 1). So these entries are checked on their own (on
both sides they must be tiny against the largest gradient entry) and left out of the relative gradient
comparison; and before our optimiser step the official values of exactly these entries are written into our
gradients, so that the parameters are compared after steps on identical gradients. Every other gradient entry
our optimiser uses is our own.

Known difference, reported and not gated: without a momentum encoder, the projector's BatchNorm running
statistics (buffers used by no training step and no evaluation) differ by about 1e-2, because its four batches
of a step arrive in another order (official: view 1, view 2, mixed view 1, mixed view 2; ours: view 1, mixed
view 2, view 2, mixed view 1).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import parity_ours as ours  # noqa: E402

import patchmix.mix  # noqa: E402

# Normalised errors (see compare_case()). Measured fp32 rounding: up to 8e-7 on losses, 1.5e-5 on gradients
# (step 2, computed at parameters that already differ by rounding), 4e-6 on parameters, 3e-7 on the exactly-zero
# gradient entries. A real difference in the method (a target, a loss weight, a missing term, a wrong EMA or
# weight decay) gives 1e-3 or more. The tolerances sit between the two.
TOLERANCES = {"loss": 1e-5, "grad": 1e-4, "param": 1e-4, "zero_grad": 1e-5}


# ------------------------------------------------------------------------------------------- official code

def import_official(path: Path) -> dict:
    """Import the official modules from ``path``. Our repository has a ``config`` package that would shadow the
    official ``config/`` directory, so the import runs with our paths off ``sys.path`` and the official ``config``
    modules are dropped from ``sys.modules`` afterwards (the imported modules keep their references)."""
    path = path.resolve()
    if not (path / "main_pretrain.py").is_file() or not (path / "module" / "mix.py").is_file():
        raise SystemExit(f"{path} does not look like a checkout of visresearch/patchmix (no main_pretrain.py).")
    ours_dirs = {REPO_ROOT.resolve(), (REPO_ROOT / "tests").resolve(), Path(__file__).resolve().parent}
    saved_path = list(sys.path)
    saved_config = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "config" or k.startswith("config.")}
    sys.path[:] = [str(path)] + [p for p in saved_path if p and Path(p).resolve() not in ours_dirs]
    try:
        modules = {name: importlib.import_module(name) for name in (
            "main_pretrain", "module.mix", "module.loss", "module.vits", "module.frame.contrast_momentum",
            "module.frame.contrast_no_momentum", "utils.misc", "config.pretrain.vit_tiny_pretrain")}
    finally:
        sys.path[:] = saved_path
        for key in [k for k in sys.modules if k == "config" or k.startswith("config.")]:
            del sys.modules[key]
        sys.modules.update(saved_config)
    for name, module in modules.items():
        assert Path(module.__file__).resolve().is_relative_to(path), f"{name} was not imported from {path}"
    return modules


@contextlib.contextmanager
def official_runtime(official: dict):
    """Run-time patches that let the official step run on the CPU as rank 0 of 1 (the checkout is untouched)."""
    mixer_cls = official["module.mix"].PatchMixer
    one_hot = mixer_cls._one_hot

    def cpu_one_hot(self, *args, **kwargs):
        kwargs["device"] = "cpu"
        return one_hot(self, *args, **kwargs)

    def all_gather(tensor_list, tensor, group=None, async_op=False):
        assert len(tensor_list) == 1
        tensor_list[0].copy_(tensor)

    patches = [
        mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self),
        mock.patch.object(torch.distributed, "get_rank", lambda group=None: 0),
        mock.patch.object(torch.distributed, "get_world_size", lambda group=None: 1),
        mock.patch.object(torch.distributed, "all_gather", all_gather),
        mock.patch.object(torch.cuda.amp, "autocast", lambda *args, **kwargs: contextlib.nullcontext()),
        mock.patch.object(mixer_cls, "_one_hot", cpu_one_hot),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


class PassThroughScaler:
    """Stands in for ``torch.cuda.amp.GradScaler`` in fp32: no scaling; records the total loss it is given."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def scale(self, loss):
        self.losses.append(loss.item())
        return loss

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass


class ModuleWrapper(torch.nn.Module):
    """Gives the model the ``.module`` attribute of DistributedDataParallel (the official loop calls
    ``model.module.update_momentum_encoder``)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def official_args(official: dict, num_mix: int, use_momentum: bool, settings: dict):
    """The official ViT-T/CIFAR pretraining config with the tiny sizes and fixed schedule values."""
    args = official["config.pretrain.vit_tiny_pretrain"].vit_tiny_pretrain()
    args.input_size, args.patch_size, args.mix_size = settings["img_size"], settings["patch_size"], settings["patch_size"]
    args.batch_size, args.world_size, args.rank, args.distributed = settings["batch_size"], 1, 0, False
    args.drop_path, args.multi_crop_num = settings["drop_path"], 0
    args.out_dim, args.hidden_dim = settings["out_dim"], settings["hidden_dim"]
    args.proj_layer, args.pred_layer = settings["proj_layers"], settings["pred_layers"]
    args.mix_num, args.mix_p, args.smoothing = num_mix, 1.0, settings["mix_smoothing"]
    args.use_moco, args.moco_m, args.moco_m_cos = use_momentum, settings["momentum"], False  # constant momentum
    args.use_wd_cos = True
    return args


def build_official_model(official: dict, args, settings: dict) -> torch.nn.Module:
    vit = official["module.vits"].ViT
    sizes = dict(patch_size=args.patch_size, img_size=args.input_size, num_classes=args.out_dim,
                 embed_dim=settings["embed_dim"], depth=settings["depth"], num_heads=settings["num_heads"],
                 mlp_ratio=settings["mlp_ratio"])
    base = vit(drop_path_rate=args.drop_path, **sizes)
    if args.use_moco:
        return official["module.frame.contrast_momentum"].ContrastMomentum_ViT(
            base, vit(**sizes), args.proj_layer, args.pred_layer, args.out_dim, args.hidden_dim)
    return official["module.frame.contrast_no_momentum"].ContrastNoMomentum_ViT(
        base, args.proj_layer, args.pred_layer, args.out_dim, args.hidden_dim)


def run_official(official: dict, num_mix: int, use_momentum: bool, views, settings: dict, numpy_seed: int) -> dict:
    """Two steps of the official ``train_epoch``, each on a one-batch loader; returns what it computed."""
    main = official["main_pretrain"]
    mixer_cls = official["module.mix"].PatchMixer
    args = official_args(official, num_mix, use_momentum, settings)
    model = build_official_model(official, args, settings)
    template = model.state_dict()
    weights = ours.deterministic_state_dict(template)
    model.load_state_dict(weights, strict=True)
    names = {id(p): n for n, p in model.named_parameters()}
    # as main_worker builds them
    optimizer = torch.optim.AdamW(official["utils.misc"].get_params_groups(model.named_parameters()))
    mixer = mixer_cls(num_classes=int(args.batch_size * args.world_size), mix_s=args.mix_size, mix_n=args.mix_num,
                      mix_p=args.mix_p, smoothing=args.smoothing)
    steps = settings["steps"]
    lr_schedule = np.full(steps, settings["lr"])
    wd_schedule = np.full(steps, settings["weight_decay"])
    temp_schedule = np.full(steps, settings["temperature"])

    terms: list[float] = []
    loss_fn = official["module.loss"].MultiTempContrastiveLoss()

    def criterion(*args_, **kwargs):
        value = loss_fn(*args_, **kwargs)
        terms.append(value.item())
        return value

    record = {"permutations": [], "mixed": [], "losses": [], "grads": [], "states": []}
    current = {"view": None, "drew": False}
    real_random_indexes = official["module.mix"].random_indexes
    real_call = mixer_cls.__call__

    def which_view(x):
        matches = [v for v, view in zip(ours.VIEWS, views) if view.shape == x.shape and torch.equal(view, x)]
        return matches[0] if len(matches) == 1 else None

    def recording_call(self, X, target):
        current["view"], current["drew"] = which_view(X), False
        out = real_call(self, X, target)
        if current["drew"]:
            assert current["view"] is not None, "the official mixer mixed an input that is neither view"
            record["mixed"][-1][current["view"]] = out[0].clone()
        current["view"] = None
        return out

    def recording_random_indexes(size):
        forward, backward = real_random_indexes(size)
        assert current["view"] not in record["permutations"][-1], "one view drew two permutations in one step"
        record["permutations"][-1][current["view"]] = [int(i) for i in forward]
        current["drew"] = True
        return forward, backward

    scaler = PassThroughScaler()
    wrapped = ModuleWrapper(model)
    np.random.seed(numpy_seed)
    with official_runtime(official), \
            mock.patch.object(official["module.mix"], "random_indexes", recording_random_indexes), \
            mock.patch.object(mixer_cls, "__call__", recording_call):
        for step in range(steps):
            record["permutations"].append({})
            record["mixed"].append({})
            terms.clear()
            loader = [([views[0].clone(), views[1].clone()], torch.zeros(settings["batch_size"], dtype=torch.long))]
            main.train_epoch(loader, wrapped, criterion, optimizer, lr_schedule, wd_schedule, temp_schedule, mixer,
                             scaler, (None, None), step, args)
            assert len(terms) == 3, f"expected the o2o, m2o and m2m criterion calls, got {len(terms)}"
            # the official loop divides the two mix terms by 2 after the criterion; these are the raw terms
            record["losses"].append({"o2o": terms[0], "m2o": terms[1], "m2m": terms[2], "loss": scaler.losses[-1]})
            record["grads"].append({names[id(p)]: p.grad.detach().clone()
                                    for p in model.parameters() if p.grad is not None})
            record["states"].append({k: v.detach().clone() for k, v in model.state_dict().items()})
            assert set(record["permutations"][-1]) == set(ours.VIEWS)
    record["weights"], record["template"] = weights, template
    record["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
    return record


# ------------------------------------------------------------------------------------------- comparison

def normalised_error(ours_value: torch.Tensor, official_value: torch.Tensor, floor: float = 0.0) -> float:
    """``max |ours - official| / max(max |official|, floor)``: relative to the tensor's own scale."""
    diff = (ours_value.double() - official_value.double()).abs().max().item()
    scale = max(official_value.double().abs().max().item(), floor)
    return diff / scale if scale > 0 else diff


def part_of(name: str) -> str:
    return name.split(".")[0]


def compare_case(off: dict, mine: ours.OursResult, use_momentum: bool, settings: dict) -> list[dict]:
    """Rows of (quantity, step, part, max abs diff, normalised error, tolerance, worst tensor)."""
    rows = []
    for step, (lo, lm) in enumerate(zip(off["losses"], mine.losses)):
        for term in ("o2o", "m2o", "m2m", "loss"):
            diff = abs(lm[term] - lo[term])
            rows.append(dict(what=f"loss {term}", step=step + 1, abs=diff, err=diff / abs(lo[term]),
                             tol=TOLERANCES["loss"], worst=""))
    shapes = {n: tuple(g.shape) for n, g in off["grads"][0].items()}
    zero = ours.zero_gradient_entries(shapes, settings["embed_dim"])
    for step, (go, gm) in enumerate(zip(off["grads"], mine.grads)):
        assert set(go) == set(gm), f"gradients of different parameters: {sorted(set(go) ^ set(gm))}"
        # entries with an exactly-zero true gradient are left out here and checked below: both sides must be
        # rounding noise, small against the largest gradient entry of the model
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
                 for n, i in zero.items()}
        worst = max(noise, key=noise.get)
        rows.append(dict(what="grad (exact 0)", step=step + 1, part="both sides: |g| / max |g|",
                         abs=max((gm[n].reshape(-1)[i] - go[n].reshape(-1)[i]).abs().max().item()
                                 for n, i in zero.items()),
                         err=noise[worst] / scale, tol=TOLERANCES["zero_grad"], worst=worst))
    for step, (so, sm) in enumerate(zip(off["states"], mine.states)):
        assert set(so) == set(sm)
        params = [n for n in so if not _is_buffer(n)]
        for part in sorted({part_of(n) for n in params}):
            names = [n for n in params if part_of(n) == part]
            errs = {n: normalised_error(sm[n], so[n]) for n in names}
            worst = max(errs, key=errs.get)
            rows.append(dict(what="param", step=step + 1, part=part,
                             abs=max((sm[n] - so[n]).abs().max().item() for n in names), err=errs[worst],
                             tol=TOLERANCES["param"], worst=worst))
        buffers = [n for n in so if _is_buffer(n) and so[n].is_floating_point()]
        errs = {n: normalised_error(sm[n], so[n]) for n in buffers}
        worst = max(errs, key=errs.get)
        # Without a momentum encoder the projector's BatchNorm sees its four batches of a step in another order
        # (official: view 1, view 2, mixed view 1, mixed view 2; ours: view 1, mixed view 2, view 2, mixed
        # view 1), so its running statistics differ. They are used by no training step and no evaluation (the
        # features are the backbone's CLS token): reported, not gated.
        rows.append(dict(what="BN running stats", step=step + 1,
                         part="" if use_momentum else "update order differs",
                         abs=max((sm[n] - so[n]).abs().max().item() for n in buffers), err=errs[worst],
                         tol=TOLERANCES["param"] if use_momentum else None, worst=worst))
    return rows


def _without(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    flat = tensor.reshape(-1)
    if index is None:
        return flat
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[index] = False
    return flat[keep]


def _is_buffer(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def check_offsets_and_mixing(off: dict, mine: ours.OursResult, num_mix: int, settings: dict) -> None:
    """The permutation -> offsets equivalence, proved twice: through our real mix_offsets, and on the images."""
    num_patches = (settings["img_size"] // settings["patch_size"]) ** 2
    for step, perms in enumerate(off["permutations"]):
        for view in ours.VIEWS:
            perm = perms[view]
            expected = ours.offsets_from_permutation(perm, num_mix)
            with mock.patch.object(torch, "randperm", lambda n, **kwargs: torch.tensor(perm, dtype=torch.long)):
                drawn = patchmix.mix.mix_offsets(num_patches, num_mix)
            assert torch.equal(drawn, expected), f"mix_offsets disagrees with the official partition ({view})"
            assert torch.equal(mine.mixed[step][view], off["mixed"][step][view]), \
                f"our mixed {view} differs from the official one at step {step + 1}"


def check_layout(off: dict, use_momentum: bool) -> list[str]:
    """Key and shape differences between the official and our state dicts (both must be empty)."""
    template = ours.build_our_model(use_momentum).state_dict()
    official = off["template"]
    problems = [f"only official: {k}" for k in sorted(set(official) - set(template))]
    problems += [f"only ours: {k}" for k in sorted(set(template) - set(official))]
    problems += [f"shape {k}: official {tuple(official[k].shape)} ours {tuple(template[k].shape)}"
                 for k in sorted(set(official) & set(template)) if official[k].shape != template[k].shape]
    trainable = {n for n, p in ours.build_our_model(use_momentum).named_parameters() if p.requires_grad}
    if trainable != set(off["trainable"]):
        problems.append(f"trainable parameters differ: {sorted(trainable ^ set(off['trainable']))}")
    return problems


def zero_entry_overrides(off: dict, settings: dict) -> list[dict]:
    shapes = {n: tuple(g.shape) for n, g in off["grads"][0].items()}
    entries = ours.zero_gradient_entries(shapes, settings["embed_dim"])
    return [{n: (index, grads[n].reshape(-1)[index].clone()) for n, index in entries.items()}
            for grads in off["grads"]]


# ------------------------------------------------------------------------------------------- golden fixture

def _round(value: float) -> float:
    return float(f"{value:.9g}")  # float32 needs 9 significant digits


def golden_case(off: dict, overrides: list[dict]) -> dict:
    def summaries(tensors: dict) -> dict:
        return {n: [_round(v) for v in ours.summary(t)] for n, t in sorted(tensors.items())}
    final = off["states"][-1]
    return {
        "permutations": off["permutations"],
        "mixed_image_sums": [{v: [_round(x) for x in ours.image_sums(m[v])] for v in ours.VIEWS} for m in off["mixed"]],
        "losses": [{k: _round(v) for k, v in losses.items()} for losses in off["losses"]],
        "grads": [summaries(grads) for grads in off["grads"]],
        "zero_gradient_entries": [{n: [_round(x) for x in values.tolist()] for n, (_, values) in step.items()}
                                  for step in overrides],
        "params_after_steps": summaries({n: t for n, t in final.items() if not _is_buffer(n)}),
        "bn_running_stats_after_steps": summaries({n: t for n, t in final.items()
                                                   if _is_buffer(n) and t.is_floating_point()}),
        "initial_weights": [_round(x) for x in
                            ours.summary(torch.cat([w.flatten().double() for _, w in sorted(off["weights"].items())
                                                    if w.is_floating_point()]))[:2]],
    }


def _dump(obj, indent: int = 0) -> str:
    """JSON with one line per leaf (a summary, a permutation, ...): small, and readable in a diff."""
    if isinstance(obj, dict) and obj and any(isinstance(v, (dict, list)) for v in obj.values()):
        pad = " " * (indent + 1)
        items = [f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        pad = " " * (indent + 1)
        return "[\n" + ",\n".join(pad + _dump(v, indent + 1) for v in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj, separators=(",", ":"))


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of github.com/visresearch/patchmix")
    parser.add_argument("--write-golden", type=Path, default=None, metavar="PATH",
                        help="write the official numbers as a JSON fixture (e.g. tests/fixtures/patchmix_parity.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    official = import_official(args.official)
    settings = ours.SETTINGS
    views = ours.make_views()
    failures: list[str] = []
    golden = {"about": "Numbers of the OFFICIAL PatchMix training step (visresearch/patchmix main_pretrain.train_epoch"
                       ") written by tools/parity/patchmix_step.py; checked by tests/test_parity_golden.py. Summaries "
                       "are [sum, L2 norm, first, middle, last entry]; mixed_image_sums: the sum of every mixed image.",
              "settings": settings, "seeds": ours.SEEDS,
              "views": [[_round(x) for x in ours.summary(v)[:2]] for v in views], "cases": {}}
    table = []
    for num_mix, use_momentum in ours.CASES:
        name = ours.case_name(num_mix, use_momentum)
        off = run_official(official, num_mix, use_momentum, views, settings, ours.SEEDS["numpy"])
        layout = check_layout(off, use_momentum)
        if layout:
            failures += [f"{name}: {p}" for p in layout]
            print(f"{name}: state-dict layout differs:\n  " + "\n  ".join(layout))
            continue
        overrides = zero_entry_overrides(off, settings)
        permutations = off["permutations"]
        mine = ours.run_ours(off["weights"], views, permutations, num_mix, use_momentum, grad_overrides=overrides)
        check_offsets_and_mixing(off, mine, num_mix, settings)
        rows = compare_case(off, mine, use_momentum, settings)
        for row in rows:
            row["case"] = name
            if row["tol"] is not None and not row["err"] <= row["tol"]:
                failures.append(f"{name} step {row['step']} {row['what']} {row.get('part', '')} {row['worst']}: "
                                f"normalised error {row['err']:.3g} > {row['tol']:g}")
        table += rows
        noise = max(v.abs().max().item() for step in overrides for _, v in step.values())
        print(f"{name}: state-dict keys and shapes identical ({len(off['template'])} entries); mixed images equal "
              f"bit for bit at both steps; official gradient on the zero-true-gradient entries: max |g| = "
              f"{noise:.2g}")
        golden["cases"][name] = dict(num_mix=num_mix, use_momentum=use_momentum, **golden_case(off, overrides))
        golden.setdefault("state_dict_shapes", {})[("momentum" if use_momentum else "no_momentum")] = {
            k: list(v.shape) for k, v in sorted(off["template"].items())}

    print(f"\n{'case':<15} {'quantity':<17} {'step':>4} {'part':<24} {'max abs diff':>12} {'norm. err':>10} "
          f"{'tol':>7}  worst tensor")
    for row in table:
        tol = f"{row['tol']:.0e}" if row["tol"] is not None else "-"
        print(f"{row['case']:<15} {row['what']:<17} {row['step']:>4} {row.get('part', ''):<24} {row['abs']:>12.3e} "
              f"{row['err']:>10.2e} {tol:>7}  {row['worst']}")
    print("\nnorm. err: losses |ours - official| / |official|; gradients, parameters and buffers: max |ours - "
          "official| over a tensor / max |official| of that tensor (the worst tensor of the part is shown); "
          "grad (exact 0): the largest |gradient| of either side on the zero-true-gradient entries / the largest "
          "official gradient entry.")
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
    print("\nPASS: our training step matches the official one in all cases.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
