"""Proof that our APS training step computes what the official one computes.

What it proves: on identical weights, the same loaded batch (two views) and the same sampled cells, the OFFICIAL
training (``main_pretrain.train_epoch`` of github.com/visresearch/aps, run on a one-batch loader: its loop makes
``nsampling`` optimiser steps on that batch, one per sampling) and OUR training (``PretrainTask.substeps`` then
``patchmix.engine.train_step`` per sampling, the engine's loop) give

* the same tokens: for every sampling and view, our ``encode_selected`` equals the official encoder's CLS output
  (after its final LayerNorm) on the same image and cells;
* at each of the ``nsampling`` steps: the same loss, the same two InfoNCE directions (``l(p1, sg z2)`` and
  ``l(p2, sg z1)``), the same positive similarity, the same learning rate and weight decay, the same gradient of
  every parameter, the same parameters after the step (AdamW, weight decay on every parameter) and the same
  BatchNorm running statistics.

It also checks that the official state-dict layout, mapped to our names, is our model's layout (keys and shapes),
and that the explicit key map of ``tests/parity_aps_ours.py`` agrees with the one ``patchmix.weights`` applies to
official APS files. It prints a table of the differences and exits with status 1 when one exceeds its tolerance
(see ``TOLERANCES``).

How to run (needs ``einops`` for the official code, a CPU is enough, a few seconds)::

    git clone https://github.com/visresearch/aps /path/to/official-aps
    python tools/parity/aps_step.py --official /path/to/official-aps
    # and to refresh the CI fixture that tests/test_aps_parity_golden.py compares against:
    python tools/parity/aps_step.py --official /path/to/official-aps --write-golden tests/fixtures/aps_parity.json

How: the official modules are imported from the given checkout and patched at run time only (the checkout is not
modified) so that they run on the CPU without a process group: ``Tensor.cuda`` returns the tensor itself, the
``autocast`` that ``main_pretrain`` imported is a no-op (fp32), the grad scaler passes the loss through, and
``torch.distributed`` answers as rank 0 of 1 (``args.distributed`` is on, so the official label offset and key
all-gather run: ``all_gather`` copies); the end-of-epoch meter all-reduce, an identity on one process, is skipped
(it builds a CUDA tensor). The official model is pinned to timm 0.6.11, whose ``Block`` builds
``torch.nn.LayerNorm`` (eps 1e-5) and has no qkv bias: ``Block`` inside the official ``module.model`` is bound to
timm 1.0's ``Block`` with ``norm_layer=torch.nn.LayerNorm`` while the model is built (every LayerNorm is checked
to have eps 1e-5, every qkv to have no bias). The official arguments are its ViT-T config with the tiny sizes
(``tests/parity_aps_ours.py: SETTINGS``); the model is ``ViTEncoderPredHead`` with those sizes, the optimiser the
AdamW ``main_worker`` builds (``lr = lr_base * batch / 256``, constant weight decay, every parameter). Both sides
get the same deterministic weights, generated in the official key layout and mapped to ours.

Learning rate: the official lr is set per epoch (LambdaLR, stepped after ``train_epoch``), so all steps of a loaded
batch use the lr of its epoch; ours comes from ``APSSchedule`` per step. With ``warmup_epochs = 0`` the official
epoch-0 factor ``min((e + 1) / (warmup + 1e-8), cosine)`` is exactly 1, so the official AdamW runs at
``lr_base * batch / 256`` (no scheduler needed); ours runs its real schedule, whose steps 0..nsampling-1 are epoch
0 with the same factor. Both lrs (and weight decays) are recorded at every step and must be equal.

Cells: the official loader computes them per image (``TwoCropsTransformBox`` calls
``get_random_patch_sequence_index_pair``, numpy's global RNG); here that official function is called for every
image on seeded crop boxes, and the loader yields the official batch format made by PyTorch's ``default_collate``
(``[[image1, idxs1], [image2, idxs2]], labels`` with ``idxs`` of shape (B, nsampling, k)). Our step draws its cells
in ``APS.substeps`` through ``aps_sampling`` (its own RNG, see ``tools/parity/aps_sampling.py`` for the
distributions); for this proof that call is answered with the same official cells.

Zero-gradient trap: ``layer_norm.bias`` (our ``norm.bias``) has an exact gradient of 0 (the CLS feature goes
through a bias-free Linear and a train-mode BatchNorm, which removes any shift common to the batch); what both
codes compute there is rounding noise, different in each, which Adam's normalised update would turn into steps of
about +-lr. These entries are checked on their own (both sides tiny against the largest gradient entry) and left
out of the relative gradient comparison; before our optimiser step their official values are written into our
gradients, so that parameters are compared after steps on identical gradients. There is no qkv bias here. Position
rows of cells no view sampled have a gradient of exactly 0.0 on both sides (not noise).

Not a training difference, reported: the official epoch loss and similarity average only the LAST sampling of
each loaded batch (the meters are updated once, after the sampling loop); our engine averages all of them.
Not compared here (fp32 on both sides): mixed precision. The official loss runs inside fp16 autocast (its logits
einsum in half precision); ours computes the InfoNCE in float32 under autocast (``patchmix.loss.info_nce``), on
purpose.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import parity_aps_ours as ours  # noqa: E402

# Normalised errors (see compare()). Measured (torch 2.14, timm 1.0, CPU): no difference at all, every row 0.0
# but one similarity at 4e-8 (both codes run the same timm blocks and torch kernels in the same order), and the
# noise on the zero-true-gradient entries is 2e-7 of the largest gradient entry on both sides. Another BLAS, thread
# count or torch version may reorder float32 sums: rounding then gives up to ~1e-6 (losses, tokens) and ~1e-5
# (gradients, parameters after 4 steps), as in the PatchMix proof. A real difference in the method gives 1e-3 or
# more: a temperature changed by 0.1% moves the losses by 6e-4 and the parameters by 1e-2 (of their scale); a
# missing stop-gradient changes the step-1 gradients. The tolerances sit between the two.
TOLERANCES = {"tokens": 1e-5, "loss": 1e-5, "grad": 1e-4, "param": 1e-4, "zero_grad": 1e-5, "bn": 1e-4}
OFFICIAL_MODULES = ("main_pretrain", "module.model", "module.loss", "utils.misc", "asym_patch_sampling",
                    "config.pretrain.vit_tiny_pretrain")


# ------------------------------------------------------------------------------------------- official code

def import_official(path: Path) -> dict:
    """Import the official modules from ``path``. Our repository has a ``config`` package and a
    ``main_pretrain`` module that would shadow the official ones, so the import runs with our paths off
    ``sys.path`` and those names are put back in ``sys.modules`` afterwards (the imported modules keep their
    references)."""
    path = path.resolve()
    if not (path / "main_pretrain.py").is_file() or not (path / "asym_patch_sampling.py").is_file():
        raise SystemExit(f"{path} does not look like a checkout of visresearch/aps (no asym_patch_sampling.py).")
    ours_dirs = {REPO_ROOT.resolve(), (REPO_ROOT / "tests").resolve(), Path(__file__).resolve().parent}

    def shadowed(key: str) -> bool:
        return key in ("config", "main_pretrain", "module", "utils") or key.startswith(("config.", "module.",
                                                                                         "utils."))
    saved_path = list(sys.path)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if shadowed(k)}
    sys.path[:] = [str(path)] + [p for p in saved_path if p and Path(p).resolve() not in ours_dirs]
    try:
        modules = {name: importlib.import_module(name) for name in OFFICIAL_MODULES}
    finally:
        sys.path[:] = saved_path
        for key in [k for k in sys.modules if shadowed(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
    for name, module in modules.items():
        assert Path(module.__file__).resolve().is_relative_to(path), f"{name} was not imported from {path}"
    return modules


def official_commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


@contextlib.contextmanager
def official_runtime(official: dict):
    """Run-time patches that let the official step run on the CPU as rank 0 of 1 (the checkout is untouched)."""
    from timm.models.vision_transformer import Block

    def all_gather(tensor_list, tensor, group=None, async_op=False):
        assert len(tensor_list) == 1
        tensor_list[0].copy_(tensor)

    patches = [
        mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self),
        mock.patch.object(official["main_pretrain"], "autocast", lambda *args, **kwargs: contextlib.nullcontext()),
        mock.patch.object(torch.distributed, "get_rank", lambda group=None: 0),
        mock.patch.object(torch.distributed, "get_world_size", lambda group=None: 1),
        mock.patch.object(torch.distributed, "all_gather", all_gather),
        # the meters' end-of-epoch all-reduce: an identity on one process (and it builds a CUDA tensor)
        mock.patch.object(official["utils.misc"].AverageMeter, "synchronize_between_processes", lambda self: None),
        # timm 0.6.11's Block: torch.nn.LayerNorm (eps 1e-5), no qkv bias (timm 1.0's default too)
        mock.patch.object(official["module.model"], "Block", functools.partial(Block, norm_layer=nn.LayerNorm)),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


class PassThroughScaler:
    """Stands in for ``torch.cuda.amp.GradScaler`` in fp32: no scaling. Records the loss of every step, the
    gradients just before every optimiser step and the state dict and lr just after it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.losses: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.states: list[dict[str, torch.Tensor]] = []
        self.lrs: list[tuple[float, float]] = []

    def scale(self, loss):
        self.losses.append(loss.item())
        return loss

    def step(self, optimizer):
        self.grads.append({self.names[id(p)]: p.grad.detach().clone()
                           for g in optimizer.param_groups for p in g["params"] if p.grad is not None})
        self.lrs.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]))
        assert all(g["lr"] == self.lrs[-1][0] and g["weight_decay"] == self.lrs[-1][1]
                   for g in optimizer.param_groups)
        optimizer.step()
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def update(self):
        pass


class RecordingLogger:
    """The TensorBoard logger ``train_epoch`` writes to on rank 0: keeps the scalars."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), int(step)))


def official_args(official: dict, settings: dict):
    """The official ViT-T/CIFAR pretraining config with the tiny sizes (main_worker's lr rule)."""
    args = official["config.pretrain.vit_tiny_pretrain"].vit_tiny_pretrain()
    args.batch_size, args.nsampling = settings["batch_size"], settings["nsampling"]
    args.sampling_ratio, args.power, args.temp = settings["sampling_ratio"], settings["power"], settings["temperature"]
    args.out_dim, args.hidden_dim = settings["out_dim"], settings["hidden_dim"]
    args.lr_base, args.weight_decay = settings["base_lr"], settings["weight_decay"]
    args.warmup_epoch, args.nepoch = settings["warmup_epochs"], settings["epochs"]
    args.rank, args.world_size, args.distributed = 0, 1, True  # rank 0 of 1: the offset and gather paths run
    args.print_freq = 10 ** 9
    args.lr = args.lr_base * args.batch_size / 256  # as main_worker sets it
    return args


def build_official_model(official: dict, args, settings: dict) -> nn.Module:
    model = official["module.model"].ViTEncoderPredHead(
        T=args.temp, dim=args.out_dim, mlp_dim=args.hidden_dim, image_size=settings["img_size"],
        patch_size=settings["patch_size"], emb_dim=settings["embed_dim"], num_layer=settings["depth"],
        num_head=settings["num_heads"])
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms), "official LayerNorms must have eps 1e-5 (timm 0.6.11)"
    qkv = [m for n, m in model.named_modules() if n.endswith("attn.qkv")]
    assert len(qkv) == settings["depth"] and all(m.bias is None for m in qkv), "official qkv has no bias"
    assert all(m.in_features * settings["mlp_ratio"] == m.out_features
               for n, m in model.named_modules() if n.endswith("mlp.fc1"))
    return model


def official_cells(official: dict, boxes, settings: dict, numpy_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The official sampling of every image (as ``TwoCropsTransformBox`` does it, image after image, numpy's
    global RNG): ``(B, nsampling, k)`` index arrays of views 1 and 2."""
    sample = official["asym_patch_sampling"].get_random_patch_sequence_index_pair
    np.random.seed(numpy_seed)
    idxs1, idxs2 = [], []
    for box1, box2 in boxes:
        i1, i2 = sample(list(box1[:4]), list(box2[:4]), ngrid=ours.grid_size(settings),
                        sampling_ratio=settings["sampling_ratio"], time=settings["nsampling"],
                        power=settings["power"])
        idxs1.append(np.array(i1))
        idxs2.append(np.array(i2))
    return np.stack(idxs1), np.stack(idxs2)


def official_loader(views, idxs1: np.ndarray, idxs2: np.ndarray) -> list:
    """One batch in the official loader's format: what ``default_collate`` makes of the dataset items
    ``(((image1, idxs1), (image2, idxs2)), label)`` (``TwoCropsTransformBox`` returns numpy index arrays)."""
    items = [(((views[0][b], idxs1[b]), (views[1][b], idxs2[b])), 0) for b in range(idxs1.shape[0])]
    return [torch.utils.data.default_collate(items)]


@torch.no_grad()
def official_cls_tokens(model: nn.Module, views, idxs1: np.ndarray, idxs2: np.ndarray) -> list:
    """Per sampling: the official encoder's CLS token after ``layer_norm`` for both views (eval mode, a copy)."""
    model = copy.deepcopy(model).eval()
    encoder = model.base_encoder
    captured = {}
    handle = encoder.layer_norm.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    # the official loop's index layout: (B, nsampling, k) -> (nsampling, k, B)
    cells1 = torch.as_tensor(idxs1, dtype=torch.long).permute(1, 2, 0)
    cells2 = torch.as_tensor(idxs2, dtype=torch.long).permute(1, 2, 0)
    tokens = []
    for j in range(cells1.shape[0]):
        encoder(views[0], cells1[j])
        first = captured["out"][:, 0].clone()
        encoder(views[1], cells2[j])
        tokens.append((first, captured["out"][:, 0].clone()))
    handle.remove()
    return tokens


def run_official(official: dict, views, boxes, settings: dict, numpy_seed: int) -> dict:
    """The official ``train_epoch`` on a one-batch loader (nsampling optimiser steps); returns what it computed."""
    main = official["main_pretrain"]
    args = official_args(official, settings)
    idxs1, idxs2 = official_cells(official, boxes, settings, numpy_seed)
    record: dict = {"idxs1": idxs1, "idxs2": idxs2, "directions": []}
    real_loss = main.contrastive_loss

    def recording_loss(*args_, **kwargs):
        loss, similarity = real_loss(*args_, **kwargs)
        record["directions"].append((loss.item(), similarity.item()))
        return loss, similarity

    with official_runtime(official), mock.patch.object(main, "contrastive_loss", recording_loss):
        model = build_official_model(official, args, settings)
        template = model.state_dict()
        weights = ours.deterministic_state_dict(template)
        model.load_state_dict(weights, strict=True)
        record["tokens"] = official_cls_tokens(model, views, idxs1, idxs2)
        # as main_worker builds it (with warmup 0 its LambdaLR keeps this lr for epoch 0: see the docstring)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                                      weight_decay=args.weight_decay)
        scaler = PassThroughScaler(model)
        logger = RecordingLogger()
        loader = official_loader(views, idxs1, idxs2)
        epoch_loss, epoch_similarity = main.train_epoch(model, optimizer, loader, 0, (logger, None), args, None,
                                                        scaler)
    steps = settings["nsampling"]
    assert len(scaler.grads) == len(scaler.states) == len(record["directions"]) // 2 == steps, \
        "the official loop did not make nsampling optimiser steps"
    record["steps"] = []
    for j in range(steps):
        (loss1, sim1), (loss2, sim2) = record["directions"][2 * j: 2 * j + 2]
        record["steps"].append({"loss": scaler.losses[j], "loss1": loss1, "loss2": loss2,
                                "similarity": 0.5 * (sim1 + sim2), "lr": scaler.lrs[j][0],
                                "weight_decay": scaler.lrs[j][1]})
    record.update(grads=scaler.grads, states=scaler.states, weights=weights, template=template,
                  trainable=[n for n, p in model.named_parameters() if p.requires_grad],
                  epoch_log={"loss": epoch_loss, "similarity": epoch_similarity}, logged=logger.scalars)
    return record


# ------------------------------------------------------------------------------------------- comparison

def normalised_error(ours_value: torch.Tensor, official_value: torch.Tensor) -> float:
    """``max |ours - official| / max |official|``: relative to the tensor's own scale."""
    diff = (ours_value.double() - official_value.double()).abs().max().item()
    scale = official_value.double().abs().max().item()
    return diff / scale if scale > 0 else diff


def part_of(name: str) -> str:
    if name.startswith("base_encoder.head."):
        return "projector"
    return "encoder" if name.startswith("base_encoder.") else name.split(".")[0]


def is_buffer(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def check_layout(off: dict) -> list[str]:
    """Key and shape differences between the official layout (mapped to our names) and ours; the explicit key
    map against the one ``patchmix.weights`` applies to official APS files (both must be empty)."""
    model = ours.build_our_model()
    template = model.state_dict()
    mapped = ours.official_state_to_ours(off["template"])
    problems = [f"only official: {k}" for k in sorted(set(mapped) - set(template))]
    problems += [f"only ours: {k}" for k in sorted(set(template) - set(mapped))]
    problems += [f"shape {k}: official {tuple(mapped[k].shape)} ours {tuple(template[k].shape)}"
                 for k in sorted(set(mapped) & set(template)) if mapped[k].shape != template[k].shape]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if trainable != {ours.official_to_ours(n) for n in off["trainable"]}:
        problems.append("trainable parameters differ")
    from patchmix.weights import method_layouts
    aps_to_timm = getattr(method_layouts, "aps_to_timm", None)
    if aps_to_timm is None:
        problems.append("patchmix.weights.method_layouts.aps_to_timm is gone: update the key-map agreement check")
    else:
        library = aps_to_timm(off["template"])
        if set(library) != set(mapped) or any(not torch.equal(library[k], mapped[k]) for k in mapped):
            problems.append("the explicit key map disagrees with patchmix.weights' mapping of official APS files")
    return problems


def zero_entries(settings: dict) -> dict[str, torch.Tensor]:
    shapes = {n: tuple(p.shape) for n, p in ours.build_our_model(settings).named_parameters()}
    entries = ours.zero_gradient_entries(shapes, settings["embed_dim"])
    assert set(entries) == {"base_encoder.norm.bias"}, sorted(entries)  # APS has no qkv bias
    return entries


def zero_entry_overrides(off_grads: list[dict], settings: dict) -> list[dict]:
    entries = zero_entries(settings)
    return [{n: (index, grads[n].reshape(-1)[index].clone()) for n, index in entries.items()}
            for grads in off_grads]


def _worst(errs: dict[str, float]) -> tuple[str, float]:
    """The tensor with the largest error and that error (no name when every error is 0)."""
    worst = max(errs, key=errs.get)
    return (worst, errs[worst]) if errs[worst] > 0 else ("", 0.0)


def _without(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    flat = tensor.reshape(-1)
    if index is None:
        return flat
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[index] = False
    return flat[keep]


def compare(off: dict, off_grads: list[dict], off_states: list[dict], mine: ours.OursResult, mine_tokens: list,
            settings: dict) -> list[dict]:
    """Rows of (quantity, step, part, max abs diff, normalised error, tolerance, worst tensor). ``off_grads`` and
    ``off_states``: the official tensors under our names."""
    rows = []
    for j, ((to1, to2), (tm1, tm2)) in enumerate(zip(off["tokens"], mine_tokens)):
        diff = max((tm1 - to1).abs().max().item(), (tm2 - to2).abs().max().item())
        rows.append(dict(what="CLS tokens", step=j + 1, part="sampling j, both views", abs=diff, err=diff,
                         tol=TOLERANCES["tokens"], worst="(absolute; entries ~1)"))
    for step, (lo, lm) in enumerate(zip(off["steps"], mine.losses)):
        for term in ("loss", "loss1", "loss2", "similarity"):
            diff = abs(lm[term] - lo[term])
            rows.append(dict(what=term, step=step + 1, part="", abs=diff, err=diff / abs(lo[term]),
                             tol=TOLERANCES["loss"], worst=""))
        for term in ("lr", "weight_decay"):
            rows.append(dict(what=term, step=step + 1, part=f"{lo[term]:g}", abs=abs(lm[term] - lo[term]),
                             err=abs(lm[term] - lo[term]), tol=0.0, worst=""))
    zero = zero_entries(settings)
    for step, (go, gm) in enumerate(zip(off_grads, mine.grads)):
        assert set(go) == set(gm), f"gradients of different parameters: {sorted(set(go) ^ set(gm))}"
        keep = {n: _without(g, zero.get(n)) for n, g in go.items()}
        mine_keep = {n: _without(g, zero.get(n)) for n, g in gm.items()}
        for part in ("encoder", "projector", "predictor"):
            names = [n for n in go if part_of(n) == part and keep[n].numel()]
            errs = {n: normalised_error(mine_keep[n], keep[n]) for n in names}
            worst, err = _worst(errs)
            rows.append(dict(what="grad", step=step + 1, part=part,
                             abs=max((mine_keep[n] - keep[n]).abs().max().item() for n in names), err=err,
                             tol=TOLERANCES["grad"], worst=worst))
        scale = max(g.abs().max().item() for g in go.values())
        noise = {n: max(go[n].reshape(-1)[i].abs().max().item(), gm[n].reshape(-1)[i].abs().max().item())
                 for n, i in zero.items()}
        worst = max(noise, key=noise.get)
        rows.append(dict(what="grad (exact 0)", step=step + 1, part="both sides: |g| / max |g|",
                         abs=max((gm[n].reshape(-1)[i] - go[n].reshape(-1)[i]).abs().max().item()
                                 for n, i in zero.items()),
                         err=noise[worst] / scale, tol=TOLERANCES["zero_grad"], worst=worst))
    before = ours.official_state_to_ours(off["weights"])
    for step, (so, sm) in enumerate(zip(off_states, mine.states)):
        assert set(so) == set(sm)
        params = [n for n in so if not is_buffer(n)]
        # how far the official step moved the parameters: what a difference in the step would show against
        moved = {n: (so[n].double() - before[n].double()).abs().max().item() for n in params}
        largest = max(moved, key=moved.get)
        rows.append(dict(what="official update", step=step + 1, part="max |p_after - p_before|", abs=moved[largest],
                         err=normalised_error(so[largest], before[largest]), tol=None, worst=largest))
        before = so
        for part in ("encoder", "projector", "predictor"):
            names = [n for n in params if part_of(n) == part]
            errs = {n: normalised_error(sm[n], so[n]) for n in names}
            worst, err = _worst(errs)
            rows.append(dict(what="param", step=step + 1, part=part,
                             abs=max((sm[n] - so[n]).abs().max().item() for n in names), err=err,
                             tol=TOLERANCES["param"], worst=worst))
        buffers = [n for n in so if is_buffer(n) and so[n].is_floating_point()]
        errs = {n: normalised_error(sm[n], so[n]) for n in buffers}
        worst, err = _worst(errs)
        rows.append(dict(what="BN running stats", step=step + 1, part="same order: z1, z2, p1, p2",
                         abs=max((sm[n] - so[n]).abs().max().item() for n in buffers), err=err,
                         tol=TOLERANCES["bn"], worst=worst))
        counts = [n for n in so if n.endswith("num_batches_tracked")]
        bad = [n for n in counts if not torch.equal(sm[n], so[n])]
        rows.append(dict(what="BN batch counts", step=step + 1, part=f"{len(counts)} counters",
                         abs=float(len(bad)), err=float(len(bad)), tol=0.0, worst=", ".join(bad)))
    return rows


# ------------------------------------------------------------------------------------------- golden fixture

def _round(value: float) -> float:
    return float(f"{value:.9g}")  # float32 needs 9 significant digits


def _summaries(tensors: dict) -> dict:
    return {n: [_round(v) for v in ours.summary(t)] for n, t in sorted(tensors.items())}


def golden(off: dict, overrides: list[dict], views, boxes, commit: str, settings: dict) -> dict:
    """The official numbers (official key names) for tests/test_aps_parity_golden.py."""
    zero_official = {"base_encoder.layer_norm.bias": "base_encoder.norm.bias"}
    return {
        "about": "Numbers of the OFFICIAL APS training (github.com/visresearch/aps main_pretrain.train_epoch on a "
                 "one-batch loader: nsampling optimiser steps) written by tools/parity/aps_step.py; checked by "
                 "tests/test_aps_parity_golden.py. Tensor names are the official ones. Summaries are [sum, L2 "
                 "norm, first, middle, last entry]; cls_tokens: per sampling, the summaries of the official "
                 "encoder's CLS outputs of views 1 and 2 on the initial weights.",
        "official": {"repository": "github.com/visresearch/aps", "commit": commit},
        "settings": settings, "seeds": ours.SEEDS,
        "views": [[_round(x) for x in ours.summary(v)[:2]] for v in views],
        "boxes": [[list(b1[:4]), list(b2[:4])] for b1, b2 in boxes],
        "idxs1": off["idxs1"].tolist(), "idxs2": off["idxs2"].tolist(),
        "state_dict_shapes": {k: list(v.shape) for k, v in sorted(off["template"].items())},
        "initial_weights": [_round(x) for x in ours.summary(torch.cat(
            [w.flatten().double() for _, w in sorted(off["weights"].items()) if w.is_floating_point()]))[:2]],
        "cls_tokens": [[[_round(x) for x in ours.summary(t)] for t in pair] for pair in off["tokens"]],
        "steps": [{
            "values": {k: _round(v) for k, v in off["steps"][j].items()},
            "grads": _summaries(off["grads"][j]),
            "zero_gradient_entries": {name: [_round(x) for x in overrides[j][ours_name][1].tolist()]
                                      for name, ours_name in zero_official.items()},
            "params": _summaries({n: t for n, t in off["states"][j].items() if not is_buffer(n)}),
            "bn_running_stats": _summaries({n: t for n, t in off["states"][j].items()
                                            if is_buffer(n) and t.is_floating_point()}),
        } for j in range(settings["nsampling"])],
        "epoch_log": {k: _round(v) for k, v in off["epoch_log"].items()},
    }


def _dump(obj, indent: int = 0) -> str:
    """JSON with one line per leaf (a summary, an index list, ...): small, and readable in a diff."""
    if isinstance(obj, dict) and obj and any(isinstance(v, (dict, list)) for v in obj.values()):
        pad = " " * (indent + 1)
        items = [f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and all(isinstance(v, (dict, list)) for v in obj) and any(
            isinstance(v, dict) or (v and isinstance(v[0], list)) for v in obj):
        pad = " " * (indent + 1)
        return "[\n" + ",\n".join(pad + _dump(v, indent + 1) for v in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj, separators=(",", ":"))


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of github.com/visresearch/aps")
    parser.add_argument("--official-commit", default="", help="its commit (read with git when it is a checkout)")
    parser.add_argument("--write-golden", type=Path, default=None, metavar="PATH",
                        help="write the official numbers as a JSON fixture (e.g. tests/fixtures/aps_parity.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    import timm
    official = import_official(args.official)
    commit = args.official_commit or official_commit(args.official)
    print(f"official APS code: {args.official} at commit {commit}; timm {timm.__version__}, torch {torch.__version__}")
    settings = ours.SETTINGS
    views = ours.make_views(ours.SEEDS["batch"], settings)
    boxes = ours.make_boxes(ours.SEEDS["boxes"], settings)
    failures: list[str] = []

    off = run_official(official, views, boxes, settings, ours.SEEDS["numpy"])
    layout = check_layout(off)
    if layout:
        print("state-dict layout differs:\n  " + "\n  ".join(layout))
        return 1
    print(f"state-dict keys and shapes identical after the key map ({len(off['template'])} entries); the key map "
          f"agrees with patchmix.weights")
    off_grads = [ours.official_state_to_ours(g) for g in off["grads"]]
    off_states = [ours.official_state_to_ours(s) for s in off["states"]]
    overrides = zero_entry_overrides(off_grads, settings)
    mine_tokens = ours.our_cls_tokens(off["weights"], views, off["idxs1"], off["idxs2"], settings)
    mine = ours.run_ours(off["weights"], views, boxes, off["idxs1"], off["idxs2"], grad_overrides=overrides,
                         settings=settings)
    sample = ours.given_sample(off["idxs1"], off["idxs2"])
    for j, (cells1, cells2) in enumerate(mine.cells):  # our forward got the official cells of the same sampling
        assert torch.equal(cells1, sample.view1[j]) and torch.equal(cells2, sample.view2[j])

    table = compare(off, off_grads, off_states, mine, mine_tokens, settings)
    for row in table:
        if row["tol"] is not None and not row["err"] <= row["tol"]:
            failures.append(f"step {row['step']} {row['what']} {row['part']} {row['worst']}: "
                            f"normalised error {row['err']:.3g} > {row['tol']:g}")
    noise = max(v.abs().max().item() for step in overrides for _, v in step.values())
    print(f"our forward got the official cells at every step; official gradient on the zero-true-gradient entries "
          f"(layer_norm.bias): max |g| = {noise:.2g}")
    print(f"\n{'quantity':<17} {'step':>4} {'part':<27} {'max abs diff':>12} {'norm. err':>10} {'tol':>7}  "
          f"worst tensor")
    for row in table:
        tol = f"{row['tol']:.0e}" if row["tol"] is not None else "-"
        print(f"{row['what']:<17} {row['step']:>4} {row['part']:<27} {row['abs']:>12.3e} {row['err']:>10.2e} "
              f"{tol:>7}  {row['worst']}")
    print("\nnorm. err: losses, similarity |ours - official| / |official|; lr, weight decay, CLS tokens: absolute; "
          "gradients, parameters and buffers: max |ours - official| over a tensor / max |official| of that tensor "
          "(the worst tensor of the part is shown); grad (exact 0): the largest |gradient| of either side on the "
          "zero-true-gradient entries / the largest official gradient entry; official update (not gated): how far one "
          "official step moves the parameters, for scale. 'step' of the CLS tokens: sampling.")
    steps = settings["nsampling"]
    print(f"\nlogged (not a training difference): the official epoch loss {off['epoch_log']['loss']:.6f} and "
          f"similarity {off['epoch_log']['similarity']:.6f} are those of the last of the {steps} samplings; ours "
          f"average the {steps}: loss {sum(s['loss'] for s in mine.losses) / steps:.6f}, similarity "
          f"{sum(s['similarity'] for s in mine.losses) / steps:.6f}")
    if args.write_golden is not None:
        if failures:
            print("not writing the golden fixture: the comparison failed")
        else:
            content = golden(off, overrides, views, boxes, commit, settings)
            args.write_golden.parent.mkdir(parents=True, exist_ok=True)
            args.write_golden.write_text(_dump(content) + "\n")
            print(f"wrote {args.write_golden} ({args.write_golden.stat().st_size / 1024:.1f} KiB)")
    if failures:
        print("\nMISMATCH:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nPASS: our {steps} APS steps on the loaded batch match the official ones.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
