"""PatchMix pretraining.

With no arguments this runs a CPU-friendly demo (a small ViT on Fashion-MNIST, a few minutes on a laptop) that
ends by printing the weighted-kNN accuracy of the learned features next to that of a random encoder.

Examples:
  python main_pretrain.py                                     # the demo
  python main_pretrain.py --config cifar10_vit_small --data-path data --download --output-dir out/c10_s
  torchrun --nproc_per_node=8 main_pretrain.py --config imagenet_vit_small --data-path /data/imagenet \\
      --output-dir out/in1k_s
  python main_pretrain.py --config cifar100_vit_tiny --preset official   # the authors' released settings

Re-running a command with the same --output-dir resumes from OUTPUT_DIR/checkpoint.pth. Every config field
below can be set on the command line; config modules live in config/pretrain/.
"""

from __future__ import annotations

import sys
import time

import torch

from patchmix.checkpoint import LATEST_NAME
from patchmix.config import PretrainConfig, parse_config
from patchmix.distributed import cleanup, init_distributed, parameters_in_sync, progress_bar, wrap_ddp
from patchmix.engine import JsonLog, StepContext, StopFlag, amp_dtype, build_optimizer, train_one_epoch
from patchmix.pretraining import (TrainingState, build_criterion, build_loader, build_model, build_schedules,
                                  check_pretrain_config, keep_numbered_copy, knn_report, prepare_output_dir,
                                  print_run_header, steps_per_epoch)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PretrainConfig, argv, kind="pretrain", description=__doc__, default_config="demo")
    env = init_distributed(cfg.device, cfg.dist_timeout_minutes)
    per_process_batch = check_pretrain_config(cfg, env.world_size)
    output_dir, resume_path = prepare_output_dir(cfg, env.is_main)
    torch.manual_seed(cfg.seed)

    loader, sampler = build_loader(cfg, env, per_process_batch)
    iterations = steps_per_epoch(len(sampler), per_process_batch, cfg)
    model = build_model(cfg).to(env.device)
    if cfg.compile:
        model.compile_backbones()
    model, trained = wrap_ddp(model, env.device)
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(model, cfg.weight_decay)
    dtype = amp_dtype(cfg.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    schedules = build_schedules(cfg, iterations)
    mix_generator = torch.Generator().manual_seed(cfg.seed)  # same on every rank: one partition per call
    state = TrainingState(cfg, env, model, optimizer, scaler, {"mix": mix_generator}, iterations)
    start_epoch, start_step = state.restore(resume_path) if resume_path else (0, 0)
    print_run_header(cfg, env, per_process_batch, iterations, schedules, model, dtype)
    step_context = StepContext(trained, criterion, optimizer, scaler, env.device, cfg.num_mix, cfg.patch_size,
                               mix_generator, dtype, cfg.clip_grad)

    writer = progress = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output_dir / "tensorboard"))
        progress = progress_bar(total=iterations * cfg.epochs, initial=start_epoch * iterations + start_step,
                                desc="pretrain")
    log = JsonLog(output_dir / "log.txt")
    stop = StopFlag(cfg.stop_after_steps).install()
    latest = output_dir / LATEST_NAME
    completed_epochs = start_epoch

    try:
        for epoch in range(start_epoch, cfg.epochs):
            first_step = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch)
            sampler.set_start(first_step * per_process_batch)
            tic = time.time()
            result = train_one_epoch(step_context, loader, schedules, epoch, first_step, stop, writer,
                                     cfg.log_freq, progress)
            if result.stopped:  # pre-empted mid-epoch: save the exact position
                state.save(latest, epoch, result.steps_done)
                break
            if not parameters_in_sync(model):
                raise RuntimeError(f"the processes' parameters differ after epoch {epoch + 1}; the run is broken.")
            state.save(latest, epoch + 1, 0)
            if env.is_main:
                keep_numbered_copy(latest, epoch + 1, cfg.save_freq, cfg.epochs)
                log.write({"epoch": epoch + 1, **{f"train_{k}": v for k, v in result.metrics.items()},
                           "epoch_seconds": time.time() - tic, "world_size": env.world_size,
                           "replicas_in_sync": True})
                progress.write(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in result.metrics.items()))
            completed_epochs = epoch + 1
            if stop.triggered:
                break
    finally:  # also on errors: give the signals back, flush TensorBoard
        stop.uninstall()
        if env.is_main:
            progress.close()
            writer.close()

    if completed_epochs < cfg.epochs:
        if env.is_main:
            print(f"Stopped ({stop.reason}); saved {latest}. Run the same command again to resume.")
    elif cfg.knn_eval:
        knn_report(cfg, model, env, output_dir)
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
