"""Random streams of several processes: shared initial weights, per-rank training draws, rank-free augmentations."""

from __future__ import annotations

import torch
from conftest import TINY_PRETRAIN

from patchmix.config import parse_config
from patchmix.data import build_dataset, fixed_subset, resumable_loader
from patchmix.distributed import DistInfo
from patchmix.methods import get_method
from patchmix.pretrain import build_method


def tiny_config(toy_data, *extra: str):
    argv = TINY_PRETRAIN + ["--data-path", str(toy_data), *extra]
    return parse_config(lambda values: get_method(values.get("method", "patchmix")).config_class, argv,
                        "pretrain", "")


def rank(r: int, world_size: int = 2) -> DistInfo:
    return DistInfo(r, world_size, r, torch.device("cpu"))


def test_ranks_share_the_initial_weights_but_draw_different_drop_path_masks(toy_data):
    cfg = tiny_config(toy_data, "--drop-path", "0.5")
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def build_and_draw(r: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        method = build_method(cfg, rank(r))
        encoder = method.base_encoder.train()  # drop path on: it draws from the process's torch stream
        with torch.no_grad():
            return method.state_dict(), encoder.forward_features(images)

    weights0, out0 = build_and_draw(0)
    weights1, out1 = build_and_draw(1)
    again0 = build_and_draw(0)[1]
    assert weights0.keys() == weights1.keys()
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0), "every rank starts from the same weights"
    assert torch.equal(out0, again0), "a rank's stream is reproducible"
    assert not torch.allclose(out0, out1), "two ranks drew the same drop-path masks"


def test_the_augmentation_of_an_image_does_not_depend_on_the_rank_or_the_number_of_processes(toy_data):
    cfg = tiny_config(toy_data)
    method_cls = get_method(cfg.method)
    dataset = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, train=True), 16)

    def views_by_index(r: int, world_size: int) -> dict[int, list[torch.Tensor]]:
        """Every image of epoch 1 this rank loads, as the training loop gets it, after the rank's seeding."""
        build_method(cfg, rank(r, world_size))  # leaves the process's stream seeded with seed + rank
        loader, sampler = resumable_loader(dataset, method_cls.train_transform(cfg), cfg.seed, 4, r, world_size,
                                           num_workers=0)
        sampler.set_epoch(1)
        order = [index for index, _epoch in sampler]
        views = [view for batch_views, _labels in loader for view in zip(*batch_views)]
        return dict(zip(order, (list(v) for v in views)))

    alone = views_by_index(0, 1)
    split = {**views_by_index(0, 2), **views_by_index(1, 2)}
    assert sorted(split) == sorted(alone) == list(range(16))
    for index, views in alone.items():
        assert all(torch.equal(a, b) for a, b in zip(views, split[index])), index
