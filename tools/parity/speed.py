"""Training-step speed of this project against each official implementation: one interleaved run on the CPU.

  python tools/parity/speed.py --official-patchmix PATH --official-aps PATH --official-dino PATH \\
      --official-selfpatch PATH [--rounds 5 --steps 4] [--out speed.json]

Each method whose official checkout is given is built twice at the same shapes (``SHAPES``: a 6-block 192-d ViT
with 4-px patches on 32-px crops, batch 32; DINO and SelfPatch on ImageNet's token grids, 14x14 and 6x6 patches of
56- and 24-px crops, batch 16, because the official SelfPatch head knows only those grids; the heads of each
method's recipes, DINO's and SelfPatch's last layers cut to 4096 prototypes): the official networks, loss,
optimiser and training loop, imported from the checkout and patched at run time only as far as the step parity
scripts do it (CPU tensors, one process, no autocast; nothing of the
official code is copied here), and our method through our engine's ``train_step``. Drop path is 0, everything
runs in float32 and neither side loads data: the batches are prepared tensors (APS: the official loop gets the
official sampler's cell indices with the batch, as its loader would; our step draws its cells itself, as in
training: its vectorised sampler is inside the timed step).

Before timing, equal work is checked: in the same number of optimiser steps on the same batches, both sides must
push the same number of token rows through the ViT blocks (forward pre-hooks on every ``Block``); their first
losses are printed side by side (close, not equal: each side starts from its own random weights; the step parity
scripts prove the steps equal on the same weights). Then the two sides alternate for ``--rounds``
rounds (the order flips every round), each timing ``--steps`` consecutive steps after one warm-up round; the
report gives the median and range of ms/step per side and the ratio official / ours (above 1: ours is faster),
with the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "tests", HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import aps_step  # noqa: E402
import dino_step  # noqa: E402
import parity_aps_ours  # noqa: E402
import parity_dino_ours  # noqa: E402
import parity_ours  # noqa: E402
import parity_selfpatch_ours  # noqa: E402
import patchmix_step  # noqa: E402
import selfpatch_step  # noqa: E402

from patchmix.engine import train_step  # noqa: E402
from patchmix.methods import get_method  # noqa: E402
from patchmix.methods.patchmix import PatchMixConfig  # noqa: E402
from patchmix.pretrain import PretrainTask  # noqa: E402

SHAPES = {"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 192, "depth": 6, "num_heads": 3,
          "mlp_ratio": 4, "batch_size": 32, "drop_path": 0.0}
CPU = torch.device("cpu")


class LeanScaler:
    """``GradScaler`` in fp32 for the official loops: no scaling, nothing recorded."""

    def scale(self, loss):
        return loss

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass


class Side:
    """One implementation of one method: ``run(n)`` makes ``n`` optimiser steps on prepared batches and returns
    the loss of the first; ``model`` is every network it trains or reads (for the token count)."""

    def __init__(self, run: Callable[[int], float], model: nn.Module, runtime=contextlib.nullcontext) -> None:
        self.run, self.model, self.runtime = run, model, runtime


def block_rows(side: Side, steps: int) -> tuple[int, float]:
    """Token rows that enter a ViT ``Block`` during ``steps`` steps (forward only), and the first loss."""
    count = [0]

    def hook(module, args):
        count[0] += args[0].shape[0] * args[0].shape[1]

    handles = [m.register_forward_pre_hook(hook) for m in side.model.modules() if type(m).__name__ == "Block"]
    assert handles, "no ViT Block found"
    try:
        with side.runtime():
            loss = side.run(steps)
    finally:
        for h in handles:
            h.remove()
    return count[0], loss


# ------------------------------------------------------------------------------------------- PatchMix

def patchmix_sides(path: Path) -> tuple[Side, Side]:
    official = patchmix_step.import_official(path)
    s = {**parity_ours.SETTINGS, **SHAPES, "proj_layers": 3, "pred_layers": 2, "hidden_dim": 1024, "out_dim": 256}
    num_mix = 2  # the official code's default (--mix_num 2)
    views = parity_ours.make_views(settings=s)
    labels = torch.zeros(s["batch_size"], dtype=torch.long)

    args = patchmix_step.official_args(official, num_mix, True, s)
    model = patchmix_step.build_official_model(official, args, s)
    wrapped = patchmix_step.ModuleWrapper(model)
    optimizer = torch.optim.AdamW(official["utils.misc"].get_params_groups(model.named_parameters()))
    mixer = official["module.mix"].PatchMixer(num_classes=s["batch_size"], mix_s=args.mix_size, mix_n=args.mix_num,
                                              mix_p=args.mix_p, smoothing=args.smoothing)
    criterion = official["module.loss"].MultiTempContrastiveLoss()
    losses: list[float] = []

    def official_run(n: int) -> float:
        constant = {k: np.full(n, s[v]) for k, v in (("lr", "lr"), ("wd", "weight_decay"), ("t", "temperature"))}
        loader = [([views[0], views[1]], labels)] * n
        losses.clear()

        def recording_criterion(*a, **kw):
            value = criterion(*a, **kw)
            losses.append(value.item())
            return value

        with contextlib.redirect_stdout(io.StringIO()):
            official["main_pretrain"].train_epoch(loader, wrapped, recording_criterion, optimizer, constant["lr"],
                                                  constant["wd"], constant["t"], mixer, LeanScaler(), (None, None),
                                                  0, args)
        return losses[0] + 0.5 * (losses[1] + losses[2])

    ours = parity_ours.build_our_model(True, s, num_mix)  # fuse_backbone left at its default (off on the CPU)
    task = PretrainTask(ours, ours, PatchMixConfig(weight_decay=s["weight_decay"], num_mix=num_mix),
                        steps_per_epoch=1)
    task.schedules = parity_ours._Constant(s)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def our_run(n: int) -> float:
        first = None
        for step in range(n):
            _, scalars = train_step(task, scaler, ([views[0], views[1]], None), step, CPU)
            first = scalars["loss"] if first is None else first
        return first

    return (Side(official_run, model, lambda: patchmix_step.official_runtime(official)),
            Side(our_run, ours))


# ------------------------------------------------------------------------------------------- APS

def aps_sides(path: Path) -> tuple[Side, Side]:
    official = aps_step.import_official(path)
    s = {**parity_aps_ours.SETTINGS, **SHAPES, "hidden_dim": 1024, "out_dim": 256, "source_image_size": 64}
    generator = torch.Generator().manual_seed(parity_aps_ours.SEEDS["batch"])
    shape = (s["batch_size"], s["in_chans"], s["img_size"], s["img_size"])
    views = (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    boxes = parity_aps_ours.make_boxes(settings=s)
    idxs1, idxs2 = aps_step.official_cells(official, boxes, s, parity_aps_ours.SEEDS["numpy"])
    args = aps_step.official_args(official, s)
    with aps_step.official_runtime(official):
        model = aps_step.build_official_model(official, args, s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    batch = aps_step.official_loader(views, idxs1, idxs2)[0]
    logger = aps_step.RecordingLogger()
    losses: list[float] = []

    class FirstLoss(LeanScaler):
        def scale(self, loss):
            losses.append(loss.item())
            return loss

    def official_run(n: int) -> float:  # n optimiser steps = n / nsampling loaded batches
        losses.clear()
        official["main_pretrain"].train_epoch(model, optimizer, [batch] * (n // s["nsampling"]), 0, (logger, None),
                                              args, None, FirstLoss())
        return losses[0]

    ours = parity_aps_ours.build_our_model(s)
    cfg = parity_aps_ours.config(s)
    task = PretrainTask(ours, ours, cfg, steps_per_epoch=s["nsampling"] * 100)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    meta1, meta2 = parity_aps_ours.metas(boxes)
    labels = torch.zeros(s["batch_size"], dtype=torch.long)

    def our_run(n: int) -> float:
        first, step = None, 0
        for _ in range(n // s["nsampling"]):
            for part in task.substeps(([views[0], views[1], meta1, meta2], labels)):
                _, scalars = train_step(task, scaler, part, step, CPU)
                first, step = scalars["loss"] if first is None else first, step + 1
        return first

    return (Side(official_run, model, lambda: _quiet(aps_step.official_runtime(official))), Side(our_run, ours))


@contextlib.contextmanager
def _quiet(context):
    with context, contextlib.redirect_stdout(io.StringIO()):
        yield


# ------------------------------------------------------------------------------------------- DINO, SelfPatch

def _dino_like_sides(official: dict, build_official, main: str, ours_module, settings: dict) -> tuple[Side, Side]:
    parts = build_official(official, "norm_last_layer", settings)
    crops = ours_module.make_crops(settings=settings)
    labels = torch.zeros(settings["batch_size"], dtype=torch.long)
    losses: list[float] = []
    loss_cls = type(parts["loss"])
    real_forward = loss_cls.forward

    def official_run(n: int) -> float:
        losses.clear()

        def recording_forward(self, *a, **kw):
            value = real_forward(self, *a, **kw)
            losses.append((value[0] if isinstance(value, tuple) else value).item())
            return value

        s = parts["schedules"]
        with contextlib.redirect_stdout(io.StringIO()), mock.patch.object(loss_cls, "forward", recording_forward):
            official[main].train_one_epoch(parts["wrapped"], parts["teacher"], parts["teacher"], parts["loss"],
                                           [(crops, labels)] * n, parts["optimizer"], s["lr"], s["wd"],
                                           s["momentum"], 0, None, parts["args"])
        return losses[0]

    cfg = ours_module.our_config("norm_last_layer", settings)
    ours = get_method(cfg.method).from_config(cfg)
    task = PretrainTask(ours, ours, cfg, steps_per_epoch=settings["steps_per_epoch"])
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def our_run(n: int) -> float:
        first = None
        for step in range(n):
            _, scalars = train_step(task, scaler, (crops, None), step, CPU, clip_grad=cfg.clip_grad)
            first = scalars["loss"] if first is None else first
        return first

    model = nn.ModuleList([parts["student"], parts["teacher"]])
    return Side(official_run, model, lambda: dino_step.official_runtime({})), Side(our_run, ours)


def _dino_settings(base: dict) -> dict:
    # ImageNet's token grids (the official SelfPatch head only knows them): 14x14 patches of global crops, 6x6 of
    # local crops (56 and 24 px with 4-px patches), batch 16; the official ViT-S/16 recipe's head (hidden 2048,
    # bottleneck 256) with 4096 prototypes instead of 65536 (a CPU-sized last layer, the same on both sides),
    # 2 local crops, clipping 3.0, no frozen epoch
    return {**base, **SHAPES, "img_size": 56, "local_size": 24, "batch_size": 16, "local_crops_number": 2,
            "out_dim": 4096, "hidden_dim": 2048,
            "bottleneck_dim": 256, "epochs": 100, "steps_per_epoch": 100, "freeze_last_layer": 0, "clip_grad": 3.0,
            "warmup_epochs": 0, "base_lr": 5e-4}


def dino_sides(path: Path) -> tuple[Side, Side]:
    official = dino_step.import_official(path)
    return _dino_like_sides(official, dino_step.build_official, "main_dino", parity_dino_ours,
                            _dino_settings(parity_dino_ours.SETTINGS))


def selfpatch_sides(path: Path) -> tuple[Side, Side]:
    official = selfpatch_step.import_official(path)
    settings = {**_dino_settings(parity_selfpatch_ours.SETTINGS), "out_dim_selfpatch": 4096}
    return _dino_like_sides(official, selfpatch_step.build_official, "main_selfpatch", parity_selfpatch_ours,
                            settings)


METHODS = {"patchmix": patchmix_sides, "aps": aps_sides, "dino": dino_sides, "selfpatch": selfpatch_sides}


# ------------------------------------------------------------------------------------------- timing

def timed(side: Side, steps: int) -> float:
    with side.runtime():
        start = time.perf_counter()
        side.run(steps)
        return (time.perf_counter() - start) / steps


def measure(name: str, official: Side, ours: Side, rounds: int, steps: int) -> dict:
    off_rows, off_loss = block_rows(official, steps)
    our_rows, our_loss = block_rows(ours, steps)
    if off_rows != our_rows:
        raise SystemExit(f"{name}: unequal work, {off_rows} token rows through the official blocks vs {our_rows} "
                         "through ours in the same steps")
    times: dict[str, list[float]] = {"official": [], "ours": []}
    load_before = os.getloadavg()
    for r in range(rounds):
        order = (("official", official), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("official", official))
        for who, side in order:
            times[who].append(timed(side, steps))
    load_after = os.getloadavg()
    official_ms, our_ms = (1000 * statistics.median(times[k]) for k in ("official", "ours"))
    ratios = [o / u for o, u in zip(times["official"], times["ours"])]
    return {"method": name, "token_rows_per_step": off_rows // steps, "first_loss": {"official": off_loss,
            "ours": our_loss}, "official_ms": official_ms, "ours_ms": our_ms, "ratio": official_ms / our_ms,
            "ratio_per_round": [round(x, 3) for x in ratios],
            "official_ms_range": [1000 * min(times["official"]), 1000 * max(times["official"])],
            "ours_ms_range": [1000 * min(times["ours"]), 1000 * max(times["ours"])],
            "load_before": load_before, "load_after": load_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in METHODS:
        parser.add_argument(f"--official-{name}", type=Path, default=None, metavar="PATH",
                            help=f"checkout of the official {name} code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per timed block (APS: a multiple "
                        "of its 4 samplings per batch)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    chosen = {name: getattr(args, f"official_{name}") for name in METHODS if getattr(args, f"official_{name}")}
    if not chosen:
        parser.error("give at least one --official-METHOD checkout")
    if "aps" in chosen and args.steps % 4:
        parser.error(f"--steps {args.steps}: APS makes 4 optimiser steps per batch; give a multiple of 4")
    torch.set_num_threads(args.threads)
    results = []
    for name, path in chosen.items():
        torch.manual_seed(0)
        official, ours = METHODS[name](path)
        timed(official, args.steps), timed(ours, args.steps)  # warm-up
        row = measure(name, official, ours, args.rounds, args.steps)
        results.append(row)
        print(f"{name:10s} official {row['official_ms']:8.1f} ms/step ({row['official_ms_range'][0]:.0f}-"
              f"{row['official_ms_range'][1]:.0f})  ours {row['ours_ms']:8.1f} ms/step ({row['ours_ms_range'][0]:.0f}-"
              f"{row['ours_ms_range'][1]:.0f})  official/ours {row['ratio']:.3f} (rounds "
              f"{min(row['ratio_per_round']):.2f}-{max(row['ratio_per_round']):.2f})  first loss "
              f"{row['first_loss']['official']:.4f} / {row['first_loss']['ours']:.4f}  load "
              f"{row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                        "machine": platform.processor() or platform.machine(),
                                        "shapes": SHAPES, "rounds": args.rounds, "steps": args.steps,
                                        "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
