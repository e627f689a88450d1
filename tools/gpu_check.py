"""One command that runs every GPU-only path of the project on one CUDA GPU and writes one JSON report.

  python tools/gpu_check.py                          # on a machine with a GPU: a few minutes
  python tools/gpu_check.py --out report.json --only train_patchmix_bf16 --only checkpoint_resume
  python tools/gpu_check.py --device cpu --quick     # the same checks, tiny, on the CPU (CUDA-only ones skipped)

Checks (``--list`` prints them):

* ``train_<method>_<amp>``: bf16 autocast, and fp16 autocast with a GradScaler, for each method's CIFAR recipe
  (``[<method>_]cifar10_vit_tiny``; SelfPatch, which has none: ``selfpatch_imagenet_vit_small``): a few hundred
  training steps on one fixed synthetic batch through the method's own transform; the loss must stay finite and
  fall (the mean of the last quarter of the steps below that of the first quarter; for DINO and SelfPatch the
  image loss minus the teacher's entropy, their KL term, since the teacher moves);
* ``nccl_syncbn``: an NCCL process group of size 1, the pretraining model with SyncBatchNorm inside
  DistributedDataParallel, training steps, an all-reduce;
* ``compile``: the backbones under ``torch.compile`` against eager: the same first loss, finite steps, speeds;
* ``fused_backbone``: PatchMix's fused and unfused backbone passes (``--fuse-backbone``): the same loss, speeds;
* ``benchmark_*``: the rows of docs/benchmarks.md and DINO / SelfPatch at their recipes, measured by tools/benchmark.py
  (images/s, MFU, memory);
* ``knn_features``: the kNN harness's feature extraction on the device against the same model on the CPU;
* ``checkpoint_resume``: a real ``main_pretrain.py`` run on the device stopped after a few steps and resumed ends
  bit-identical to an uninterrupted run (deterministic algorithms on).

Each check runs in its own process (a crash, a CUDA error or a hang, bounded by ``--timeout``, is that check's
failure), and the report records for each: pass / fail / skip, the reason or error, the seconds and its numbers.
Where there is no GPU, it prints ``no GPU: skipped``, writes a report saying so and exits 0. Exit status: 0
when no check failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (str(REPO_ROOT), str(Path(__file__).resolve().parent)):
    if path not in sys.path:
        sys.path.insert(0, path)

import benchmark  # noqa: E402

from patchmix.config import parse_config  # noqa: E402
from patchmix.engine import train_step  # noqa: E402
from patchmix.methods import METHODS, get_method  # noqa: E402
from patchmix.pretrain import PretrainTask  # noqa: E402

# What --quick puts on top of a recipe: the tiny ViT of the tests (16-px images, 4-px patches, 2 blocks, 32-d).
TINY = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
        "--hidden-dim", "64", "--out-dim", "32", "--batch-size", "16"]
# The GPU rows of docs/benchmarks.md: tools/benchmark.py's flags, the batch size, and what --quick adds to the
# tiny model (the official ImageNet preset's 96-px local crops would dwarf a 16-px model).
BENCHMARK_ROWS: dict[str, tuple[list[str], int, list[str]]] = {
    "benchmark_cifar10_vit_tiny": (["--config", "cifar10_vit_tiny"], 512, []),
    "benchmark_cifar10_vit_tiny_compile": (["--config", "cifar10_vit_tiny", "--compile"], 512, []),
    "benchmark_imagenet_vit_small": (["--config", "imagenet_vit_small"], 128, []),
    "benchmark_imagenet_vit_small_compile": (["--config", "imagenet_vit_small", "--compile"], 128, []),
    "benchmark_imagenet_vit_small_official": (["--config", "imagenet_vit_small", "--preset", "official"], 128,
                                              ["--local-crop-size", "8"]),
    "benchmark_aps_cifar10_vit_tiny": (["--config", "aps_cifar10_vit_tiny"], 512, []),
    "benchmark_dino_cifar10_vit_tiny": (["--config", "dino_cifar10_vit_tiny"], 512, ["--local-crop-size", "8"]),
    "benchmark_dino_imagenet_vit_small": (["--config", "dino_imagenet_vit_small"], 128, ["--local-crop-size", "8"]),
    # SelfPatch's neighbourhoods need at least a 3x3 grid in every crop: 12-px local crops of the 4-px patches
    "benchmark_selfpatch_imagenet_vit_small": (["--config", "selfpatch_imagenet_vit_small"], 128,
                                               ["--local-crop-size", "12"]),
}


class SkipCheck(Exception):
    """A check that does not apply here (the reason is recorded)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How big the checks are: the device, ``quick`` (the tiny model) and the number of training steps."""

    device: str = "cuda"
    quick: bool = False
    steps: int = 200
    bench_steps: int = 30

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def require_cuda(self, what: str) -> None:
        if not self.cuda:
            raise SkipCheck(f"{what}: CUDA only (device {self.device})")


# ------------------------------------------------------------------------------------------------------------
# Helpers


def training_recipe(method: str) -> str | None:
    """The recipe a training check runs: ``method``'s CIFAR-10 ViT-T recipe, or its ImageNet ViT-S/16 recipe
    for a method without CIFAR recipes (SelfPatch, whose official code knows only ImageNet's token grids)."""
    for name in (f"{method}_cifar10_vit_tiny", "cifar10_vit_tiny" if method == "patchmix" else "",
                 f"{method}_imagenet_vit_small"):
        if name and (REPO_ROOT / "config" / "pretrain" / f"{name}.py").is_file():
            return name
    return None


# What --quick adds to the tiny model for a recipe whose crops would not fit it (SelfPatch's 96-px local crops
# against 16-px global ones; 12 px keeps the 3x3 patch grid its neighbourhoods need).
QUICK_EXTRA = {"selfpatch_imagenet_vit_small": ["--local-crop-size", "12", "--local-crops-number", "2",
                                                "--out-dim-selfpatch", "32"]}


def pretrain_config(settings: Settings, *flags: str) -> Any:
    """A pretraining config from recipe flags, on the check's device, tiny with ``quick``; no warm-up, so that
    the few steps of a check run at the recipe's peak learning rate."""
    argv = [*flags, "--device", settings.device, "--num-workers", "0", *(TINY if settings.quick else [])]
    cfg = parse_config(lambda values: get_method(values.get("method", "patchmix")).config_class, argv,
                       "pretrain", "gpu check")
    return dataclasses.replace(cfg, warmup_epochs=0.0)


def learning_signal(scalars: dict[str, float]) -> float:
    """What must fall while a method fits one fixed batch. For the contrastive methods it is the loss. For DINO
    and SelfPatch it is the image loss minus the teacher's entropy, i.e. the KL divergence from the teacher to the
    student: their loss is a cross-entropy against a teacher that moves with every step, whose entropy (and so
    the loss) can rise while the student closes in on it."""
    if "teacher_entropy" in scalars:
        return scalars.get("image_loss", scalars["loss"]) - scalars["teacher_entropy"]
    return scalars["loss"]


def train_losses(cfg: Any, steps: int) -> tuple[list[float], benchmark.Bench, float]:
    """The learning signal (:func:`learning_signal`) of ``steps`` optimiser steps on one fixed synthetic batch
    (the method's views of random images), the benchmark's ready task, and the seconds per step after the first."""
    bench = benchmark.Bench(cfg, "synthetic")
    losses: list[float] = []
    tic = 0.0
    for index in range(steps):
        if index == 1:
            synchronize(bench.device)
            tic = time.perf_counter()
        views, labels = next(bench.batches)
        batch = [[v.to(bench.device) for v in views], labels]
        for part in bench.task.substeps(batch):
            _, scalars = train_step(bench.task, bench.scaler, part, len(losses), bench.device, bench.dtype,
                                    cfg.clip_grad)
            losses.append(learning_signal(scalars))
    synchronize(bench.device)
    return losses, bench, (time.perf_counter() - tic) / max(len(losses) - 1, 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def assert_learning(losses: list[float]) -> dict[str, Any]:
    """The losses are finite and fall: the mean of the last quarter below that of the first."""
    if not all(math.isfinite(value) for value in losses):
        first_bad = next(i for i, value in enumerate(losses) if not math.isfinite(value))
        raise AssertionError(f"non-finite loss at step {first_bad}: {losses[first_bad]}")
    quarter = max(len(losses) // 4, 1)
    start, end = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    if not end < start:
        raise AssertionError(f"the loss did not fall: mean {start:.4f} over the first {quarter} steps, {end:.4f} "
                             f"over the last {quarter}")
    return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
            "first_quarter_mean": start, "last_quarter_mean": end}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------------------
# The checks: each returns its numbers, raises SkipCheck, or fails with any other exception


def check_training(method: str, amp: str) -> Callable[[Settings], dict[str, Any]]:
    def run(settings: Settings) -> dict[str, Any]:
        recipe = training_recipe(method)
        if recipe is None:
            raise SkipCheck(f"method {method!r} has no CIFAR-10 ViT-T or ImageNet ViT-S recipe in config/pretrain/")
        extra = QUICK_EXTRA.get(recipe, []) if settings.quick else []
        cfg = pretrain_config(settings, "--config", recipe, "--amp", amp, *extra)
        if not settings.quick:
            cfg = dataclasses.replace(cfg, batch_size=128)
        losses, bench, seconds = train_losses(cfg, settings.steps if not settings.quick else 30)
        signal = "image loss - teacher entropy" if method in ("dino", "selfpatch") else "loss"
        details = {"recipe": recipe, "batch_size": cfg.batch_size, "amp": amp, "signal": signal,
                   **assert_learning(losses),
                   "step_ms": 1000 * seconds}
        if amp == "fp16":
            details["grad_scale"] = bench.scaler.get_scale()
        return details
    return run


def check_nccl_syncbn(settings: Settings) -> dict[str, Any]:
    settings.require_cuda("NCCL and SyncBatchNorm")
    import torch.distributed as dist

    device = torch.device(settings.device if ":" in settings.device else "cuda:0")
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            device_id=device)
    try:
        cfg = pretrain_config(settings, "--config", "cifar10_vit_tiny", "--amp", "bf16")
        cfg = dataclasses.replace(cfg, batch_size=64 if not settings.quick else cfg.batch_size)
        torch.manual_seed(cfg.seed)
        method = get_method(cfg.method).from_config(cfg).to(device)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index],
                                                            broadcast_buffers=False)
        task = PretrainTask(model, trained, cfg, steps_per_epoch=1000)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        views = next(benchmark.synthetic_batches(cfg, cfg.batch_size))
        losses = []
        for step in range(10):
            batch = [[v.to(device) for v in views[0]], views[1]]
            _, scalars = train_step(task, scaler, batch, step, device, torch.bfloat16)
            losses.append(scalars["loss"])
        synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        if not synced:
            raise AssertionError("no SyncBatchNorm in the converted model")
        total = torch.ones(3, device=device)
        dist.all_reduce(total)
        if not torch.equal(total.cpu(), torch.ones(3)):
            raise AssertionError(f"all_reduce over 1 process changed the tensor: {total.tolist()}")
        if not all(math.isfinite(value) for value in losses):
            raise AssertionError(f"non-finite loss: {losses}")
        return {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "sync_batchnorm_layers": synced,
                "losses": losses, "nccl_version": str(torch.cuda.nccl.version())}
    finally:
        dist.destroy_process_group()


def check_compile(settings: Settings) -> dict[str, Any]:
    steps = 20 if not settings.quick else 4
    results = {}
    for compiled in (False, True):
        cfg = pretrain_config(settings, "--config", "cifar10_vit_tiny", "--amp", "none",
                              *(["--compile"] if compiled else []))
        if not settings.quick:
            cfg = dataclasses.replace(cfg, batch_size=128)
        tic = time.perf_counter()
        losses, _, seconds = train_losses(cfg, steps)
        results["compiled" if compiled else "eager"] = {"first_loss": losses[0], "losses_finite": all(
            math.isfinite(v) for v in losses), "step_ms_after_first": 1000 * seconds,
            "seconds_total": time.perf_counter() - tic}
    eager, compiled_run = results["eager"], results["compiled"]
    if not (eager["losses_finite"] and compiled_run["losses_finite"]):
        raise AssertionError(f"non-finite losses: {results}")
    if not math.isclose(eager["first_loss"], compiled_run["first_loss"], rel_tol=1e-3):
        raise AssertionError(f"compiled first loss {compiled_run['first_loss']} != eager {eager['first_loss']}")
    results["speedup"] = eager["step_ms_after_first"] / compiled_run["step_ms_after_first"]
    return results


def check_fused_backbone(settings: Settings) -> dict[str, Any]:
    results = {}
    for fuse in (True, False):
        cfg = pretrain_config(settings, "--config", "cifar10_vit_tiny", "--amp", "none", "--drop-path", "0",
                              "--fuse-backbone" if fuse else "--no-fuse-backbone")  # no random masks: equal
        if not settings.quick:
            cfg = dataclasses.replace(cfg, batch_size=128)
        losses, _, seconds = train_losses(cfg, 10 if not settings.quick else 3)
        results["fused" if fuse else "unfused"] = {"first_loss": losses[0], "step_ms_after_first": 1000 * seconds}
    fused, unfused = results["fused"]["first_loss"], results["unfused"]["first_loss"]
    if not math.isclose(fused, unfused, rel_tol=1e-4):
        raise AssertionError(f"fused first loss {fused} != unfused {unfused}")
    results["fused_over_unfused_speed"] = (results["unfused"]["step_ms_after_first"]
                                           / results["fused"]["step_ms_after_first"])
    return results


def check_benchmark(flags: list[str], batch_size: int, quick_flags: list[str]
                    ) -> Callable[[Settings], dict[str, Any]]:
    def run(settings: Settings) -> dict[str, Any]:
        if settings.quick:  # the recipe's own size takes minutes per step on a CPU: the tiny model instead
            sizes, steps, warmup, rounds = [*TINY, *quick_flags], 2, 1, 1
        else:
            sizes, steps, warmup, rounds = ["--batch-size", str(batch_size)], settings.bench_steps, 10, 3
        command = ["--steps", str(steps), "--warmup", str(warmup), "--rounds", str(rounds), "--data", "synthetic",
                   *flags, *sizes, "--device", settings.device, "--num-workers", "0"]
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "bench.json"
            if benchmark.main([*command, "--json", str(out)]) != 0:
                raise AssertionError("tools/benchmark.py failed")
            rows = json.loads(out.read_text())
        rows = rows if isinstance(rows, list) else [rows]
        for row in rows:
            if not row["images_per_second"] > 0:
                raise AssertionError(f"no throughput measured: {row}")
        keep = ("method", "config", "batch_size", "amp", "compile", "fuse_backbone", "images_per_second", "step_ms",
                "gflops_per_image", "achieved_tflops", "mfu_percent", "step_peak_memory_gib", "part_share_percent",
                "device")
        return {"command": "python tools/benchmark.py " + " ".join(command),
                "rows": [{k: row.get(k) for k in keep} for row in rows]}
    return run


def check_knn_features(settings: Settings) -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    from patchmix.knn import extract_features
    from patchmix.models import build_backbone, cls_features

    torch.manual_seed(0)
    sizes = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2) if settings.quick else \
        dict(img_size=32, patch_size=2)
    model = build_backbone("vit_tiny", **sizes).eval()
    count, compared = (64, 64) if settings.quick else (2048, 64)  # the CPU reference only for the first images
    images = torch.randn(count, 3, sizes["img_size"], sizes["img_size"])
    dataset = TensorDataset(images, torch.arange(count) % 10)
    with torch.no_grad():
        reference = cls_features(model)(images[:compared])
    device = torch.device(settings.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on the CPU
    extract_features(cls_features(model.to(device)), dataset, 256, device)  # warm-up (kernels, allocator)
    synchronize(device)
    tic = time.perf_counter()
    features, labels = extract_features(cls_features(model), dataset, 256, device)
    synchronize(device)
    seconds = time.perf_counter() - tic
    if not torch.equal(labels.cpu(), torch.arange(count) % 10):
        raise AssertionError("labels out of order")
    difference = (features[:compared].cpu() - reference).abs().max().item()
    if difference > 1e-3:
        raise AssertionError(f"the device's features differ from the CPU's by up to {difference:.3g}")
    return {"images": count, "feature_dim": features.shape[1], "max_abs_difference_to_cpu": difference,
            "compared_on_cpu": compared, "images_per_second": count / seconds}


RESUME_DRIVER = """
import os, sys
import torch
torch.use_deterministic_algorithms(True, warn_only=True)
sys.path.insert(0, os.getcwd())
import main_pretrain
sys.exit(main_pretrain.main(sys.argv[1:]))
"""


def check_checkpoint_resume(settings: Settings) -> dict[str, Any]:
    from PIL import Image

    from patchmix.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        generator = torch.Generator().manual_seed(0)
        for index in range(64):  # a learnable toy folder: 4 classes, a bright band at each class's own place
            label = index % 4
            pixels = torch.randint(0, 60, (16, 16, 3), generator=generator, dtype=torch.uint8)
            pixels[label * 4:(label + 1) * 4] += 180
            (root / "data" / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy()).save(root / "data" / f"c{label}" / f"{index:03d}.png")
        flags = ["--config", "demo", "--dataset", "folder", "--data-path", str(root / "data"), "--arch", "vit_tiny",
                 *TINY, "--epochs", "2", "--warmup-epochs", "1", "--device", settings.device, "--num-workers", "0",
                 "--no-knn-eval", "--log-freq", "1"]
        env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", OMP_NUM_THREADS="1")

        def run(out: Path, *extra: str) -> None:
            result = subprocess.run([sys.executable, "-c", RESUME_DRIVER, *flags, "--output-dir", str(out), *extra],
                                    cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise AssertionError(f"main_pretrain.py exited {result.returncode}: "
                                     f"{(result.stdout + result.stderr)[-1500:]}")

        run(root / "straight")
        run(root / "resumed", "--stop-after-steps", "3")
        stopped = load_checkpoint(root / "resumed" / "checkpoint.pth")
        run(root / "resumed")
        final, straight = (load_checkpoint(root / "resumed" / "checkpoint.pth"),
                           load_checkpoint(root / "straight" / "checkpoint.pth"))
        different = [k for k in straight["model"] if not torch.equal(straight["model"][k], final["model"][k])]
        if different:
            largest = max((straight["model"][k].float() - final["model"][k].float()).abs().max().item()
                          for k in different)
            raise AssertionError(f"{len(different)} of {len(straight['model'])} tensors differ after resuming "
                                 f"(largest difference {largest:.3g}), e.g. {different[0]}")
        return {"stopped_at_global_step": int(stopped["global_step"]), "final_global_step": int(final["global_step"]),
                "tensors_compared": len(straight["model"]), "bit_identical": True}


def all_checks() -> dict[str, Callable[[Settings], dict[str, Any]]]:
    """Every check by name, in the order they run."""
    checks: dict[str, Callable[[Settings], dict[str, Any]]] = {}
    for method in METHODS:
        for amp in ("bf16", "fp16"):
            checks[f"train_{method}_{amp}"] = check_training(method, amp)
    checks["nccl_syncbn"] = check_nccl_syncbn
    checks["compile"] = check_compile
    checks["fused_backbone"] = check_fused_backbone
    for name, (flags, batch_size, quick_flags) in BENCHMARK_ROWS.items():
        checks[name] = check_benchmark(flags, batch_size, quick_flags)
    checks["knn_features"] = check_knn_features
    checks["checkpoint_resume"] = check_checkpoint_resume
    return checks


# ------------------------------------------------------------------------------------------------------------
# Running them


def run_check(name: str, check: Callable[[Settings], dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """One check in this process: its record (status pass / fail / skip, seconds, details or reason/error)."""
    tic = time.perf_counter()
    record: dict[str, Any] = {"name": name}
    try:
        record.update(status="pass", details=check(settings))
    except SkipCheck as reason:
        record.update(status="skip", reason=str(reason))
    except Exception as error:  # a check's failure is its record, whatever it is
        frames = traceback.extract_tb(error.__traceback__)
        where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        record.update(status="fail", error=f"{type(error).__name__}: {error}{where}")
    record["seconds"] = round(time.perf_counter() - tic, 2)
    return record


def child_command(name: str, settings: Settings, result: Path) -> list[str]:
    """The command that runs one check in a process of its own and writes its record to ``result``."""
    return [sys.executable, str(Path(__file__).resolve()), "--run-check", name, "--device", settings.device,
            "--steps", str(settings.steps), "--bench-steps", str(settings.bench_steps), "--result", str(result),
            *(["--quick"] if settings.quick else [])]


def run_isolated(name: str, settings: Settings, timeout: float) -> dict[str, Any]:
    """One check in its own process: a crash, a CUDA error that poisons the process, or a hang (``timeout``
    seconds) fails that check alone."""
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        result = Path(directory) / "record.json"
        try:
            done = subprocess.run(child_command(name, settings, result), cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, "status": "fail", "error": f"timed out after {timeout:.0f} s",
                    "seconds": round(time.perf_counter() - tic, 2)}
        if result.is_file():
            return json.loads(result.read_text())
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        return {"name": name, "status": "fail", "error": f"the check's process exited {done.returncode} without a "
                f"result: {' | '.join(tail)}", "seconds": round(time.perf_counter() - tic, 2)}


def environment(settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {"device": settings.device, "quick": settings.quick, "torch": torch.__version__,
                            "python": platform.python_version(), "cuda_available": torch.cuda.is_available()}
    try:
        import timm
        info["timm"] = timm.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    return info


def run_all(names: list[str], settings: Settings, isolate: bool = True, timeout: float = 900.0,
            checks: dict[str, Callable[[Settings], dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Run the named checks one after the other, each isolated from the others; return the report."""
    checks = checks if checks is not None else all_checks()
    tic = time.perf_counter()
    records = []
    for name in names:
        print(f"[{len(records) + 1}/{len(names)}] {name} ...", flush=True)
        record = run_isolated(name, settings, timeout) if isolate else run_check(name, checks[name], settings)
        note = record.get("reason") or record.get("error") or ""
        print(f"    {record['status']} ({record['seconds']:.1f} s){': ' + note if note else ''}", flush=True)
        records.append(record)
    counts = {status: sum(r["status"] == status for r in records) for status in ("pass", "fail", "skip")}
    return {"status": "fail" if counts["fail"] else "pass", "summary": counts, "environment": environment(settings),
            "seconds": round(time.perf_counter() - tic, 1), "checks": records}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --quick: the "
                        "runner's own test)")
    parser.add_argument("--quick", action="store_true", help="the tiny model and few steps everywhere")
    parser.add_argument("--only", action="append", default=[], metavar="CHECK", help="run only these checks")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--steps", type=int, default=200, help="training steps of the train_* checks (default 200)")
    parser.add_argument("--bench-steps", type=int, default=30, help="measured steps per benchmark round")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one check may take (default 900)")
    parser.add_argument("--in-process", action="store_true", help="run the checks in this process (faster; a "
                        "crash then ends the run)")
    parser.add_argument("--run-check", default="", help=argparse.SUPPRESS)  # a child process: one check
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(args.device, args.quick, args.steps, args.bench_steps)
    checks = all_checks()
    if args.run_check:
        record = run_check(args.run_check, checks[args.run_check], settings)
        Path(args.result).write_text(json.dumps(record, indent=2) + "\n")
        return 0
    if args.list:
        print("\n".join(checks))
        return 0
    unknown = [name for name in args.only if name not in checks]
    if unknown:
        print(f"error: unknown check {unknown[0]!r}; `python tools/gpu_check.py --list` names them.", file=sys.stderr)
        return 2
    out = Path(args.out)
    if settings.cuda and not torch.cuda.is_available():
        print("no GPU: skipped")
        report = {"status": "skipped", "reason": "no GPU: torch.cuda.is_available() is False (run with --device "
                  "cpu --quick to exercise the checks on the CPU)", "summary": {"pass": 0, "fail": 0, "skip": 0},
                  "environment": environment(settings), "checks": []}
        out.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    report = run_all(args.only or list(checks), settings, isolate=not args.in_process, timeout=args.timeout,
                     checks=checks)
    out.write_text(json.dumps(report, indent=2) + "\n")
    counts = report["summary"]
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped in {report['seconds']:.0f} s;"
          f" report: {out}")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
