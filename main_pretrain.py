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
from pathlib import Path

import torch

from patchmix.checkpoint import (LATEST_NAME, FORMAT_VERSION, capture_rng, load_checkpoint, restore_rng,
                                 save_checkpoint)
from patchmix.config import PretrainConfig, config_to_dict, parse_config
from patchmix.data import (PatchMixTransform, ResumableDistributedSampler, SeededTransformDataset, build_dataset,
                           fixed_subset)
from patchmix.distributed import barrier, cleanup, init_distributed
from patchmix.engine import JsonLog, StopFlag, amp_dtype, build_optimizer, train_one_epoch
from patchmix.loss import LossWeights, PatchMixLoss
from patchmix.models import PatchMixModel
from patchmix.pretraining import (backbone_kwargs, check_pretrain_config, keep_numbered_copy, knn_report,
                                  prepare_output_dir, print_run_header, steps_per_epoch)
from patchmix.schedules import Schedules


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PretrainConfig, argv, kind="pretrain", description=__doc__, default_config="demo")
    env = init_distributed(cfg.device, cfg.dist_timeout_minutes)
    per_process_batch = check_pretrain_config(cfg, env.world_size)
    output_dir, resume_path = prepare_output_dir(cfg, env.is_main)
    torch.manual_seed(cfg.seed)

    # Data: the augmentation of every image depends only on (seed, epoch, index).
    if env.is_main and cfg.download:
        build_dataset(cfg.dataset, cfg.data_path, train=True, download=True)
    barrier()
    dataset = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, train=True), cfg.train_subset)
    transform = PatchMixTransform(cfg.img_size, cfg.crop_min, cfg.blur_probs, cfg.solarize_probs,
                                  cfg.local_crops_number, cfg.local_crop_size, cfg.local_crop_scale)
    train_set = SeededTransformDataset(dataset, transform, cfg.seed)
    sampler = ResumableDistributedSampler(train_set, env.world_size, env.rank, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=per_process_batch, sampler=sampler, num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda", drop_last=True, persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator())  # own generator: creating an iterator must not consume the global RNG
    iterations = steps_per_epoch(len(sampler), per_process_batch, cfg)

    # Model, loss, optimiser.
    model = PatchMixModel(backbone_kwargs(cfg), cfg.drop_path, cfg.proj_layers, cfg.pred_layers, cfg.hidden_dim,
                          cfg.out_dim, cfg.use_momentum, cfg.fuse_backbone).to(env.device)
    if cfg.compile:
        for encoder in filter(None, (model.base_encoder, model.momentum_encoder)):
            encoder.forward_features = torch.compile(encoder.forward_features)
    net = model
    if env.world_size > 1:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = net
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None, broadcast_buffers=False)
    criterion = PatchMixLoss(LossWeights(cfg.o2o_weight, cfg.m2o_weight, cfg.m2m_weight, cfg.local_o2o_weight,
                                         cfg.local_m2o_weight), cfg.o2o_smoothing, cfg.mix_smoothing)
    optimizer = build_optimizer(model, cfg.weight_decay)
    dtype = amp_dtype(cfg.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    schedules = Schedules(iterations, cfg.epochs, cfg.base_lr * cfg.batch_size / 256, cfg.min_lr,
                          cfg.warmup_epochs, cfg.weight_decay, cfg.weight_decay_end, cfg.momentum,
                          cfg.momentum_per_epoch, cfg.temperature, cfg.warmup_temperature,
                          cfg.warmup_temperature_epochs)
    mix_generator = torch.Generator().manual_seed(cfg.seed)  # same on every rank: one partition per call

    start_epoch, start_step = 0, 0
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        restore_rng(state["rng"][env.rank] if isinstance(state["rng"], list) else state["rng"],
                    {"mix": mix_generator})
        if env.is_main:
            print(f"Resumed from {resume_path}: epoch {start_epoch}, step {start_step} of {iterations}.")
    print_run_header(cfg, env, per_process_batch, iterations, schedules, model, dtype)

    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output_dir / "tensorboard"))
    log = JsonLog(output_dir / "log.txt")
    stop = StopFlag(cfg.stop_after_steps).install()
    cfg_dict = config_to_dict(cfg)

    def checkpoint(epoch: int, step_in_epoch: int) -> Path:
        rng = [capture_rng({"mix": mix_generator})]
        if env.world_size > 1:
            gathered: list = [None] * env.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        path = output_dir / LATEST_NAME
        if env.is_main:
            save_checkpoint({"format_version": FORMAT_VERSION, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                             "epoch": epoch, "step_in_epoch": step_in_epoch,
                             "global_step": epoch * iterations + step_in_epoch, "rng": rng,
                             "backbone": backbone_kwargs(cfg), "config": cfg_dict}, path)
        barrier()
        return path

    progress = None
    if env.is_main:
        from tqdm import tqdm
        progress = tqdm(total=iterations * cfg.epochs, initial=start_epoch * iterations + start_step,
                        desc="pretrain", dynamic_ncols=True, file=sys.stdout)
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        step0 = start_step if epoch == start_epoch else 0
        sampler.set_start(step0 * per_process_batch)
        tic = time.time()
        result = train_one_epoch(net, criterion, loader, optimizer, scaler, schedules, epoch, step0, env.device,
                                 cfg.num_mix, cfg.patch_size, mix_generator, dtype, stop, cfg.clip_grad,
                                 writer, cfg.log_freq, progress)
        if result.stopped:
            path = checkpoint(epoch, result.steps_done)
            if env.is_main:
                progress.close()
                print(f"Stopped ({stop.reason}) at epoch {epoch}, step {result.steps_done}; saved {path}. "
                      f"Run the same command again to resume.")
            cleanup()
            return 0
        path = checkpoint(epoch + 1, 0)
        if env.is_main:
            keep_numbered_copy(path, epoch + 1, cfg.save_freq, cfg.epochs)
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in result.metrics.items()},
                      "epoch_seconds": time.time() - tic}
            log.write(record)
            progress.write(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in result.metrics.items()))
        if stop.requested:
            break
    if progress is not None:
        progress.close()
    stop.uninstall()
    if writer is not None:
        writer.close()

    if cfg.knn_eval:
        knn_report(cfg, model, env, output_dir)
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
