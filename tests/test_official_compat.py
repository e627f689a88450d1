"""What the authors' evaluation scripts need from our files, and the kNN precision they use."""

from __future__ import annotations

import json

import torch
from evalkit import TINY_FLAGS, save_ours, tiny_pretraining_model

import main_knn
from patchmix.config import parse_config
from patchmix.engine import amp_dtype
from patchmix.evaluation.knn import KnnConfig
from patchmix.models import build_backbone


def official_get_model_from_frame(checkpoint: dict, encoder: str) -> dict:
    """The reader of the official main_knn.py / main_linear.py / main_finetune.py, line for line."""
    state_dict = checkpoint['state_dict']
    encoder = ('module.' if 'module' in list(state_dict.keys())[0] else '') + encoder
    for k in list(state_dict.keys()):
        if k.startswith(encoder) and not k.startswith(encoder + '.head'):
            state_dict[k[len(encoder + "."):]] = state_dict[k]
        del state_dict[k]
    return state_dict


def test_the_official_reader_loads_our_pretraining_checkpoint(pretrained):
    for encoder in ("momentum_encoder", "base_encoder"):
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        expected = {k[len(encoder) + 1:]: v.clone() for k, v in state["model"].items()
                    if k.startswith(encoder + ".") and not k.startswith(encoder + ".head")}
        weights = official_get_model_from_frame(state, encoder)
        model = build_backbone(**state["backbone"])  # a timm ViT without classifier, like the official one
        model.load_state_dict(weights)  # strict: every backbone tensor, nothing else
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items()), encoder


def test_the_state_dict_entry_does_not_grow_the_file(pretrained, tmp_path):
    state = torch.load(pretrained, map_location="cpu", weights_only=True)
    assert state["state_dict"].keys() == state["model"].keys()
    assert all(state["state_dict"][k].data_ptr() == v.data_ptr() for k, v in state["model"].items()), \
        "the two entries share their tensors"
    without = tmp_path / "without.pth"
    torch.save({k: v for k, v in state.items() if k != "state_dict"}, without)
    weights_bytes = sum(v.numel() * v.element_size() for v in state["model"].values())
    growth = pretrained.stat().st_size - without.stat().st_size
    assert growth < min(4096, weights_bytes // 10), (growth, weights_bytes)  # a second copy would add them all


def test_knn_features_are_float32_unless_amp_is_asked_for(tmp_path, toy_data):
    assert KnnConfig().amp == "none"
    cfg = parse_config(KnnConfig, ["--config", "cifar10_vit_small"], "knn", "")
    assert amp_dtype(cfg.amp, torch.device("cuda")) is None, "no autocast on a GPU either"

    weights = save_ours(tiny_pretraining_model(), tmp_path / "weights.pth")

    def features(name: str, *extra: str) -> tuple[dict, torch.Tensor]:
        out = tmp_path / name
        assert main_knn.main(TINY_FLAGS + ["--data-path", str(toy_data), "--pretrained-weights", str(weights),
                                           "--output-dir", str(out), "--batch-size", "48", "--dump-features",
                                           str(out / "features.pth"), *extra]) == 0
        dumped = torch.load(out / "features.pth", weights_only=True)
        return json.loads((out / "results.json").read_text()), dumped["test_features"]

    plain, fp32 = features("default")
    opted, bf16 = features("bf16", "--amp", "bf16")
    assert (plain["autocast"], opted["autocast"]) == ("none", "bfloat16")
    assert fp32.dtype == bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, atol=0.1), "the same features, rounded through bf16"
