"""Training-speed benchmark of full pretraining steps, for every method (PatchMix, APS, ...).

Measures, after warm-up steps: images/s of the real training step (patchmix.engine.train_step with the
pretraining task; one loaded batch may make several optimiser steps, as APS's samplings do), the share of each
part (data loading, the method's per-batch work such as APS's sampling, schedule + momentum update, moving to the
device, mixer, forward + loss, backward, optimiser), peak memory, and model FLOPs utilisation (MFU). Any
pretraining config and override works:

  python tools/benchmark.py --config demo                                  # CPU
  python tools/benchmark.py --config cifar10_vit_tiny --batch-size 512 --amp bf16 --data synthetic
  python tools/benchmark.py --config imagenet_vit_small --batch-size 128 --amp bf16 --compile --data synthetic
  python tools/benchmark.py --config aps_cifar10_vit_tiny --batch-size 64 --device cpu   # APS
  python tools/benchmark.py --config selfpatch_imagenet_vit_small --batch-size 4 --device cpu   # SelfPatch, ViT-S/16

For PatchMix, unless the command sets --fuse-backbone or --no-fuse-backbone, both ways of running the backbone
are measured (fused: one backbone call per encoder on all its same-resolution inputs; unfused: one call per
input), in --rounds interleaved rounds, and the ratio of their images/s is reported: it decides the default of
each device.

Parts are timed with a device synchronisation around each (so they add up to a slightly slower step; a part
inside another, the mixer inside the forward pass, is not counted twice); images/s is measured separately on
steps without those synchronisations. ``--data real`` loads and augments real images
with the config's data loader; ``synthetic`` feeds random tensors (measures the model alone).

FLOPs per image are counted from the ViT shape (2 FLOPs per multiply-add; matrix products of the attention
included; LayerNorm, softmax and GELU ignored): a step costs 3x the forward FLOPs of every online pass
(forward + backward) plus 1x of every key pass. MFU = achieved FLOP/s / the device's peak (bf16 dense tensor
core peak for known GPUs, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
from timm.layers import use_fused_attn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import dataclasses  # noqa: E402
import statistics  # noqa: E402

from PIL import Image  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from patchmix.cli import USER_ERRORS  # noqa: E402
from patchmix.config import parse_config  # noqa: E402
from patchmix.data import build_dataset, fixed_subset, resumable_loader  # noqa: E402
from patchmix.distributed import pick_device  # noqa: E402
from patchmix.engine import amp_dtype, no_timer, train_step  # noqa: E402
from patchmix.loss import LossWeights, needed_encodings  # noqa: E402
from patchmix.methods import (  # noqa: E402
    APSConfig,
    DINOConfig,
    PatchMixConfig,
    PretrainConfig,
    SelfPatchConfig,
    get_method,
)
from patchmix.models import arch_spec  # noqa: E402
from patchmix.pretrain import PretrainTask  # noqa: E402

# bf16 dense peak of known GPUs, TFLOP/s (vendor data sheets; SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def vit_forward_flops(embed_dim: int, depth: int, img_size: int, patch_size: int, hidden_dim: int,
                      out_dim: int, proj_layers: int = 3, pred_layers: int = 0, tokens: int = 0) -> float:
    """Forward FLOPs of one image through patch embedding, the blocks and the MLP heads. ``tokens``: the tokens
    the blocks see (default: every patch + CLS; APS keeps a subset after embedding every patch)."""
    patches = (img_size // patch_size) ** 2
    tokens = tokens or patches + 1
    d = embed_dim
    patch_embed = patches * 3 * patch_size ** 2 * d
    per_block = tokens * (3 * d * d + d * d + 8 * d * d) + 2 * tokens * tokens * d  # qkv, proj, mlp, attention
    head = d * hidden_dim + (proj_layers - 2) * hidden_dim ** 2 + hidden_dim * out_dim
    predictor = (out_dim * hidden_dim + (pred_layers - 2) * hidden_dim ** 2 + hidden_dim * out_dim
                 if pred_layers else 0)
    return 2.0 * (patch_embed + depth * per_block + head + predictor)


def dino_head_flops(embed_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, layers: int) -> float:
    """Forward FLOPs of DINO's head on one vector: the MLP to the bottleneck, then the last layer."""
    mlp = embed_dim * hidden_dim + (layers - 2) * hidden_dim ** 2 + hidden_dim * bottleneck_dim
    return 2.0 * (mlp + bottleneck_dim * out_dim)


def class_attention_flops(embed_dim: int, tokens: int, blocks: int = 2) -> float:
    """Forward FLOPs of the SelfPatch head aggregating ``tokens`` tokens into one vector: per block the query
    projection, key and value projections of the query and the tokens, the attention, the output projection and
    the MLP of the query."""
    d, keys = embed_dim, tokens + 1
    return 2.0 * blocks * (d * d + 2 * keys * d * d + 2 * keys * d + d * d + 8 * d * d)


def dino_step_flops_per_image(cfg: DINOConfig, spec) -> float:
    """DINO and SelfPatch: the student on every crop (forward + backward), the teacher without gradient (DINO: on
    the 2 global crops; SelfPatch: on every crop, with the neighbour matching and aggregation of every patch)."""
    d = spec.embed_dim
    head = dino_head_flops(d, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim, cfg.head_layers)
    sizes = [cfg.img_size] * 2 + [cfg.local_crop_size] * cfg.local_crops_number
    if not isinstance(cfg, SelfPatchConfig):
        def crop(size: int) -> float:
            return vit_forward_flops(d, spec.depth, size, cfg.patch_size, 0, 0, 2) + head
        return 3.0 * sum(crop(size) for size in sizes) + sum(crop(size) for size in sizes[:2])
    patch_head = dino_head_flops(d, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim_selfpatch, cfg.head_layers)
    student = teacher = 0.0
    for size in sizes:
        patches = (size // cfg.patch_size) ** 2
        shared = (vit_forward_flops(d, spec.depth, size, cfg.patch_size, 0, 0, 2, tokens=patches)
                  + class_attention_flops(d, patches) + head + patches * patch_head)
        student += shared
        teacher += shared + patches * (2.0 * 8 * d + class_attention_flops(d, cfg.k_num))
    return 3.0 * student + teacher


def _spec(cfg: PretrainConfig):
    return arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, get_method(cfg.method).backbone_kwargs(cfg)["num_heads"])


def step_flops_per_image(cfg: PretrainConfig) -> float:
    """FLOPs of one loaded batch per image: forward + backward (3x forward) of every pass with gradient, forward
    of every pass without (PatchMix: from the passes the active loss terms need; APS: 2 views of k + 1 tokens,
    ``nsampling`` times; DINO and SelfPatch: :func:`dino_step_flops_per_image`)."""
    spec = _spec(cfg)
    if isinstance(cfg, APSConfig):
        cells = (cfg.img_size // cfg.patch_size) ** 2
        tokens = int(cells * cfg.sampling_ratio) + 1
        view = vit_forward_flops(spec.embed_dim, spec.depth, cfg.img_size, cfg.patch_size, cfg.hidden_dim,
                                 cfg.out_dim, 3, 3, tokens=tokens)
        return 3.0 * 2 * view * cfg.nsampling
    if isinstance(cfg, DINOConfig):
        return dino_step_flops_per_image(cfg, spec)
    if not isinstance(cfg, PatchMixConfig):
        raise NotImplementedError(f"no FLOP count for method {cfg.method!r} yet")
    weights = LossWeights(cfg.o2o_weight, cfg.m2o_weight, cfg.m2m_weight, cfg.local_o2o_weight,
                          cfg.local_m2o_weight)
    needs = needed_encodings(weights, local_crops=cfg.local_crops_number > 0).names()

    def forward(size: int, online: bool) -> float:
        return vit_forward_flops(spec.embed_dim, spec.depth, size, cfg.patch_size, cfg.hidden_dim, cfg.out_dim,
                                 cfg.proj_layers, cfg.pred_layers if online else 0)

    online = sum(n in needs for n in ("q1", "q2_mixed")) * forward(cfg.img_size, True)
    keys = sum(n in needs for n in ("k1", "k2", "k1_mixed")) * forward(cfg.img_size, False)
    if not cfg.use_momentum and "q1" in needs and "k1" in needs:
        keys -= forward(cfg.img_size, False)  # the no-momentum variant reuses the gradient pass for k1
    local = 0.0
    if cfg.local_crops_number:
        local = 2 * cfg.local_crops_number * forward(cfg.local_crop_size, True)
    return 3.0 * (online + local) + keys


def device_peak_tflops(device: torch.device, override: float) -> tuple[float | None, str]:
    if override:
        return override, "given with --peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value, f"{name}: bf16 dense peak {value:g} TFLOP/s (data sheet)"
        return None, f"{name}: peak unknown (pass --peak-tflops)"
    return None, "CPU: peak unknown (pass --peak-tflops for an MFU)"


class PartTimer:
    """Accumulates wall time per named part, synchronising the device around each part.

    A part timed inside another (the mixer inside the forward pass) is subtracted from the outer one, so the
    parts add up to the step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # time of the parts nested in each open part

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        tic = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - tic
            inner = self._inner.pop()
            self.seconds[name] += elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed


def synthetic_batches(cfg: PretrainConfig, batch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """One batch of the method's views of random images (its transform, so every method gets its own views,
    boxes included), repeated: the model alone is measured."""
    generator = torch.Generator().manual_seed(0)
    transform = get_method(cfg.method).train_transform(cfg)
    pixels = torch.randint(0, 256, (batch, cfg.img_size, cfg.img_size, 3), generator=generator, dtype=torch.uint8)
    views = default_collate([transform(Image.fromarray(image.numpy())) for image in pixels])
    while True:
        yield views, torch.zeros(batch, dtype=torch.long)


class Bench:
    """One configuration ready to step: the pretraining task, its grad scaler and a source of batches."""

    def __init__(self, cfg: PretrainConfig, data: str) -> None:
        self.cfg, self.device = cfg, pick_device(cfg.device, 0)
        torch.manual_seed(cfg.seed)
        method = get_method(cfg.method).from_config(cfg).to(self.device)
        self.steps_per_batch = get_method(cfg.method).steps_per_batch(cfg)
        if cfg.compile:
            method.compile_backbones()
        self.task = PretrainTask(method, method, cfg, steps_per_epoch=1000)
        self.dtype = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        method.train()
        if data == "real":
            dataset = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, train=True), cfg.train_subset)
            loader, sampler = resumable_loader(dataset, get_method(cfg.method).train_transform(cfg), cfg.seed,
                                               cfg.batch_size, 0, 1, cfg.num_workers)

            def epochs() -> Iterator[Any]:
                epoch = 0
                while True:
                    sampler.set_epoch(epoch)
                    yield from loader
                    epoch += 1

            self.batches: Iterator[Any] = epochs()
        else:
            self.batches = synthetic_batches(cfg, cfg.batch_size)
        self.step_index = 0
        self.step_peak_gib: float | None = None

    def step(self, timer: Any = None) -> None:
        """One loaded batch: its optimiser steps (one for most methods, ``nsampling`` for APS)."""
        timer = timer or no_timer
        with timer("data_loading"):
            batch = next(self.batches)
        with timer("data_to_device"):
            batch = [[v.to(self.device, non_blocking=True) for v in batch[0]], batch[1]]
        with timer("per_batch"):  # e.g. APS's sampling of the batch
            parts = self.task.substeps(batch)
        for part in parts:
            train_step(self.task, self.scaler, part, self.step_index, self.device, self.dtype, self.cfg.clip_grad,
                       timer=timer)
            self.step_index += 1

    def timed(self, steps: int) -> float:
        """Seconds for ``steps`` steps, device synchronised. On CUDA, also the peak memory the steps allocate
        above what is held between steps (activations, gradients, temporaries), in ``step_peak_gib``."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            held = torch.cuda.memory_allocated(self.device)
        tic = time.perf_counter()
        for _ in range(steps):
            self.step()
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = (torch.cuda.max_memory_allocated(self.device) - held) / 2 ** 30
            self.step_peak_gib = max(self.step_peak_gib or 0.0, peak)
        return time.perf_counter() - tic


def run_benchmark(cfg: PretrainConfig, steps: int, warmup: int, data: str, peak_tflops: float = 0.0
                  ) -> dict[str, Any]:
    """Measure ``steps`` training steps after ``warmup`` steps; return the results as a dict."""
    bench = Bench(cfg, data)
    warmup_seconds = bench.timed(warmup)
    return measure(bench, [bench.timed(steps)], steps, warmup, data, peak_tflops, warmup_seconds)


def measure(bench: Bench, round_seconds: list[float], steps: int, warmup: int, data: str, peak_tflops: float,
            warmup_seconds: float = 0.0) -> dict[str, Any]:
    """The results of a configuration whose rounds of ``steps`` steps took ``round_seconds``."""
    cfg, device, dtype = bench.cfg, bench.device, bench.dtype
    elapsed = statistics.median(round_seconds)
    images_per_second = steps * cfg.batch_size / elapsed
    timer = PartTimer(device)
    for _ in range(steps):
        bench.step(timer)
    total = sum(timer.seconds.values())
    shares = {name: 100.0 * seconds / total for name, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1])}

    flops = step_flops_per_image(cfg)
    peak, peak_note = device_peak_tflops(device, peak_tflops)
    achieved = flops * images_per_second / 1e12
    return {
        "config": cfg.arch + f"/{cfg.patch_size} at {cfg.img_size}px", "batch_size": cfg.batch_size,
        "amp": str(dtype).replace("torch.", "") if dtype else "none", "compile": cfg.compile,
        "data": data, "method": cfg.method, "optimizer_steps_per_batch": bench.steps_per_batch,
        "fuse_backbone": _fused(bench),
        "images_per_second": images_per_second, "step_ms": 1000.0 * elapsed / steps,
        "rounds_images_per_second": [steps * cfg.batch_size / t for t in round_seconds],
        "part_share_percent": shares, "step_peak_memory_gib": bench.step_peak_gib,
        "gflops_per_image": flops / 1e9, "achieved_tflops": achieved,
        "mfu_percent": 100.0 * achieved / peak if peak else None, "peak_note": peak_note,
        "warmup_steps": warmup, "warmup_seconds": warmup_seconds, "measured_steps": steps,
        "fused_attention": bool(use_fused_attn()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(),
    }


def _fused(bench: Bench) -> bool | None:
    """Whether PatchMix's backbone passes ran fused (None for methods without that choice)."""
    fuse = getattr(bench.task.model, "fuse_backbone", "absent")
    if fuse == "absent":
        return None
    return fuse if fuse is not None else bench.device.type == "cuda"


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['method']} {results['config']}, batch {results['batch_size']} "
             f"({results['optimizer_steps_per_batch']} optimiser step(s) per batch), amp {results['amp']}, compile "
             f"{results['compile']}, fused backbone {results['fuse_backbone']}, data {results['data']}, on "
             f"{results['device']} ({results['threads']} threads)",
             f"  {results['images_per_second']:.1f} images/s, {results['step_ms']:.1f} ms/step, "
             f"{results['gflops_per_image']:.2f} GFLOP per image, {results['achieved_tflops']:.3f} TFLOP/s"
             + (f", MFU {results['mfu_percent']:.1f}%" if results["mfu_percent"] is not None else "")
             + (f", step peak memory {results['step_peak_memory_gib']:.2f} GiB above the memory held between steps"
                if results["step_peak_memory_gib"] else ""),
             "  share of a step: " + ", ".join(f"{k} {v:.1f}%" for k, v in results["part_share_percent"].items()),
             f"  {results['peak_note']}; fused attention: {results['fused_attention']}"]
    return "\n".join(lines)


def compare_fusion(cfg: PretrainConfig, steps: int, warmup: int, data: str, peak_tflops: float, rounds: int
                   ) -> list[dict[str, Any]]:
    """Fused and unfused backbone passes, measured in interleaved rounds (the median round counts)."""
    benches = [Bench(dataclasses.replace(cfg, fuse_backbone=fuse), data) for fuse in (True, False)]
    warmup_seconds = [bench.timed(warmup) for bench in benches]
    seconds: list[list[float]] = [[], []]
    for _ in range(rounds):
        for index, bench in enumerate(benches):
            seconds[index].append(bench.timed(steps))
    return [measure(bench, times, steps, warmup, data, peak_tflops, warm)
            for bench, times, warm in zip(benches, seconds, warmup_seconds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     add_help=False)
    parser.add_argument("--steps", type=int, default=10, help="measured steps (per round)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring (compilation, caches)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds when both fusions are measured")
    parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for the MFU")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        print("\nAll pretraining options (python main_pretrain.py --help) are accepted as well.")
        return 0
    cfg = parse_config(lambda values: get_method(values.get("method", "patchmix")).config_class,
                       rest or ["--config", "demo"], kind="pretrain", description=__doc__)
    get_method(cfg.method).check_config(cfg, cfg.batch_size)  # what main_pretrain.py refuses, refused here too
    if getattr(cfg, "fuse_backbone", False) is None:  # PatchMix without a choice: measure both ways
        results = compare_fusion(cfg, args.steps, args.warmup, args.data, args.peak_tflops, args.rounds)
    else:
        results = [run_benchmark(cfg, args.steps, args.warmup, args.data, args.peak_tflops)]
    print("\n".join(format_results(r) for r in results))
    if len(results) == 2:
        ratio = results[0]["images_per_second"] / results[1]["images_per_second"]
        print(f"fused / unfused images/s: {ratio:.3f} (median of {args.rounds} interleaved rounds of {args.steps} "
              f"steps each)")
    if args.json:
        Path(args.json).write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``main`` with a bad configuration reported in one line (exit 2), as the entry scripts do."""
    try:
        return main(argv)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
