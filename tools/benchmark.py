"""Training-speed benchmark of full PatchMix pretraining steps.

Measures, after warm-up steps: images/s of the real training step (patchmix.engine.train_step), the share of
each part of a step (data loading, moving to the device, mixer, forward + loss, backward, optimiser, momentum
update), peak memory, and model FLOPs utilisation (MFU). Any pretraining config and override works:

  python tools/benchmark.py --config demo                                  # CPU
  python tools/benchmark.py --config cifar10_vit_tiny --batch-size 512 --amp bf16 --data synthetic
  python tools/benchmark.py --config imagenet_vit_small --batch-size 128 --amp bf16 --compile --data synthetic

Parts are timed with a device synchronisation around each (so they add up to a slightly slower step); images/s
is measured separately on steps without those synchronisations. ``--data real`` loads and augments real images
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

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.config import PretrainConfig, parse_config  # noqa: E402
from patchmix.distributed import DistInfo, pick_device  # noqa: E402
from patchmix.engine import StepContext, amp_dtype, build_optimizer, required_outputs, train_step  # noqa: E402
from patchmix.models import arch_spec  # noqa: E402
from patchmix.pretraining import build_criterion, build_loader, build_model  # noqa: E402

# bf16 dense peak of known GPUs, TFLOP/s (vendor data sheets; SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def vit_forward_flops(embed_dim: int, depth: int, img_size: int, patch_size: int, hidden_dim: int,
                      out_dim: int, proj_layers: int = 3, pred_layers: int = 0) -> float:
    """Forward FLOPs of one image through patch embedding, the blocks and the MLP heads."""
    tokens = (img_size // patch_size) ** 2 + 1
    d = embed_dim
    patch_embed = (tokens - 1) * 3 * patch_size ** 2 * d
    per_block = tokens * (3 * d * d + d * d + 8 * d * d) + 2 * tokens * tokens * d  # qkv, proj, mlp, attention
    head = d * hidden_dim + (proj_layers - 2) * hidden_dim ** 2 + hidden_dim * out_dim
    predictor = (out_dim * hidden_dim + (pred_layers - 2) * hidden_dim ** 2 + hidden_dim * out_dim
                 if pred_layers else 0)
    return 2.0 * (patch_embed + depth * per_block + head + predictor)


def step_flops_per_image(cfg: PretrainConfig) -> float:
    """FLOPs of one training step per image of the batch, from the passes the active loss terms need."""
    spec = arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)
    needs = required_outputs(build_criterion(cfg).weights, local_crops=cfg.local_crops_number > 0)

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
    """Accumulates wall time per named part, synchronising the device around each part."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        tic = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - tic


def synthetic_batches(cfg: PretrainConfig, batch: int) -> Iterator[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, cfg.img_size, cfg.img_size, generator=generator) for _ in range(2)]
    views += [torch.randn(batch, 3, cfg.local_crop_size, cfg.local_crop_size, generator=generator)
              for _ in range(cfg.local_crops_number)]
    while True:
        yield views


def run_benchmark(cfg: PretrainConfig, steps: int, warmup: int, data: str, peak_tflops: float = 0.0
                  ) -> dict[str, Any]:
    """Measure ``steps`` training steps after ``warmup`` steps; return the results as a dict."""
    device = pick_device(cfg.device, 0)
    env = DistInfo(0, 1, 0, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.compile:
        model.compile_backbones()
    dtype = amp_dtype(cfg.amp, device)
    ctx = StepContext(model, build_criterion(cfg), build_optimizer(model, cfg.weight_decay),
                      torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), device, cfg.num_mix,
                      cfg.patch_size, torch.Generator().manual_seed(cfg.seed), dtype, cfg.clip_grad)
    model.train()
    if data == "real":
        loader, sampler = build_loader(cfg, env, cfg.batch_size)

        def epochs() -> Iterator[list[torch.Tensor]]:
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                yield from (views for views, _ in loader)
                epoch += 1

        batches = epochs()
    else:
        batches = synthetic_batches(cfg, cfg.batch_size)

    def step(timer: Any = None) -> None:
        if timer is None:
            views = next(batches)
            train_step(ctx, views, 1e-4, 0.05, 0.996, 0.2)
        else:
            with timer("data_loading"):
                views = next(batches)
            train_step(ctx, views, 1e-4, 0.05, 0.996, 0.2, timer=timer)

    compile_tic = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_seconds = time.perf_counter() - compile_tic
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    tic = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - tic
    images_per_second = steps * cfg.batch_size / elapsed
    peak_memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None

    timer = PartTimer(device)
    for _ in range(steps):
        step(timer)
    total = sum(timer.seconds.values())
    shares = {name: 100.0 * seconds / total for name, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1])}

    flops = step_flops_per_image(cfg)
    peak, peak_note = device_peak_tflops(device, peak_tflops)
    achieved = flops * images_per_second / 1e12
    import timm
    from timm.layers import use_fused_attn
    return {
        "config": cfg.arch + f"/{cfg.patch_size} at {cfg.img_size}px", "batch_size": cfg.batch_size,
        "amp": str(dtype).replace("torch.", "") if dtype else "none", "compile": cfg.compile,
        "data": data, "num_mix": cfg.num_mix, "local_crops": cfg.local_crops_number,
        "images_per_second": images_per_second, "step_ms": 1000.0 * elapsed / steps,
        "part_share_percent": shares, "peak_memory_gib": peak_memory,
        "gflops_per_image_step": flops / 1e9, "achieved_tflops": achieved,
        "mfu_percent": 100.0 * achieved / peak if peak else None, "peak_note": peak_note,
        "warmup_steps": warmup, "warmup_seconds": warmup_seconds, "measured_steps": steps,
        "fused_attention": bool(use_fused_attn()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(),
    }


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['config']}, batch {results['batch_size']}, amp {results['amp']}, compile "
             f"{results['compile']}, data {results['data']}, on {results['device']} ({results['threads']} threads)",
             f"  {results['images_per_second']:.1f} images/s, {results['step_ms']:.1f} ms/step, "
             f"{results['gflops_per_image_step']:.2f} GFLOP per image-step, {results['achieved_tflops']:.3f} TFLOP/s"
             + (f", MFU {results['mfu_percent']:.1f}%" if results["mfu_percent"] is not None else "")
             + (f", peak memory {results['peak_memory_gib']:.2f} GiB" if results["peak_memory_gib"] else ""),
             "  share of a step: " + ", ".join(f"{k} {v:.1f}%" for k, v in results["part_share_percent"].items()),
             f"  {results['peak_note']}; fused attention: {results['fused_attention']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     add_help=False)
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring (compilation, caches)")
    parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for the MFU")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        print("\nAll pretraining options (python main_pretrain.py --help) are accepted as well.")
        return 0
    cfg = parse_config(PretrainConfig, rest, kind="pretrain", description=__doc__, default_config="demo")
    results = run_benchmark(cfg, args.steps, args.warmup, args.data, args.peak_tflops)
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
