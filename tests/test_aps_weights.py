"""Official APS checkpoints wherever a ViT is expected, the released APS entries, export to timm.

``tests/fixtures/aps_weights.pth`` was written by ``tools/parity/aps_weights.py --write-fixture`` with the OFFICIAL
APS model classes (github.com/visresearch/aps, ``module/model.py``; the commit is recorded in the file): a tiny
APS ViT (32-d, 2 blocks, 2 heads, 16-px images, 4-px patches) with random weights, its pretraining state dict as
the official ``main_pretrain.py`` saves it, the state dict of the fine-tuning model built from it the official way
(with a 10-class ``fc``), a seeded batch, and the official CLS outputs (after ``layer_norm``, all tokens) and
logits. Only numbers: no official code is needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from evalkit import TINY, TINY_FLAGS

import main_finetune
import main_knn
from patchmix import weights as W
from patchmix.models import build_backbone
from patchmix.weights.registry import METHOD_BACKBONE_OPTIONS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "aps_weights.pth"
APS_OPTIONS = {"qkv_bias": False, "norm_eps": 1e-5, "pos_embed_cls": False}
APS_TINY = {**TINY, **APS_OPTIONS}
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture()
def pretrain_file(golden, tmp_path) -> Path:
    path = tmp_path / "last.pth"
    torch.save(golden["pretrain_state_dict"], path)  # the official format: the raw state dict
    return path


@pytest.fixture()
def finetune_file(golden, tmp_path) -> Path:
    path = tmp_path / "finetuned.pth"
    torch.save(golden["finetune_state_dict"], path)
    return path


def timm_to_aps(state_dict: dict[str, torch.Tensor], prefix: str = "base_encoder.") -> dict[str, torch.Tensor]:
    """Our APS-option backbone under APS's names (to fabricate official files of the named sizes)."""
    out = {}
    for key, value in state_dict.items():
        if key == "pos_embed":
            key, value = "pos_embedding", value.transpose(0, 1)
        for old, new in (("patch_embed.proj.", "patchify."), ("blocks.", "transformer."), ("norm.", "layer_norm.")):
            if key.startswith(old):
                key = new + key[len(old):]
        out[prefix + key] = value
    return out


# ------------------------------------------------------------------------------------------------------------
# build_backbone options


def test_default_options_leave_the_patchmix_backbone_unchanged():
    torch.manual_seed(0)
    plain = build_backbone(**TINY)
    torch.manual_seed(0)
    explicit = build_backbone(**TINY, qkv_bias=True, norm_eps=1e-6, pos_embed_cls=True)
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in plain.state_dict().items())
    assert {m.eps for m in plain.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    assert plain.pos_embed.shape == (1, 17, 32) and plain.blocks[0].attn.qkv.bias is not None


def test_aps_options_build_apss_vit():
    model = build_backbone(**APS_TINY)
    assert model.pos_embed.shape == (1, 16, 32) and model.no_embed_class  # patch tokens only, none for CLS
    assert model.blocks[0].attn.qkv.bias is None
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert json.loads(json.dumps(APS_TINY)) == APS_TINY  # plain values: they go into checkpoints and .json
    assert METHOD_BACKBONE_OPTIONS["aps"] == APS_OPTIONS


# ------------------------------------------------------------------------------------------------------------
# The official files against the official outputs


def test_official_pretraining_file_gives_the_official_cls_output(golden, pretrain_file):
    settings = golden["settings"]
    with pytest.raises(W.WeightsError, match="--num-heads"):
        W.load_weights(str(pretrain_file))  # a 32-d ViT is no named size
    loaded = W.load_weights(str(pretrain_file), num_heads=settings["num_heads"])
    assert loaded.kind == "official APS pretraining checkpoint" and loaded.method == "aps"
    assert loaded.encoder == "base_encoder" and not loaded.head
    assert loaded.backbone == APS_TINY
    # pos_embedding (T, 1, D) becomes pos_embed (1, T, D): 16 patch positions, none for the CLS token.
    official_pos = golden["pretrain_state_dict"]["base_encoder.pos_embedding"]
    assert official_pos.shape == (16, 1, 32) and loaded.state_dict["pos_embed"].shape == (1, 16, 32)
    assert torch.equal(loaded.state_dict["pos_embed"][0], official_pos[:, 0])
    assert not any(k.startswith(("head.", "fc.", "predictor.")) for k in loaded.state_dict)
    inferred = W.infer_backbone(loaded.state_dict)
    assert inferred["img_size"] == 16 and inferred["pos_embed_cls"] is False and inferred["qkv_bias"] is False
    description = loaded.describe()
    assert "no qkv bias, LayerNorm eps 1e-05, no CLS position" in description
    assert "dropped base_encoder.fc.* (the projector) and predictor.*" in description

    model = W.build_model(loaded).eval()
    with torch.no_grad():
        ours = model(golden["images"])
    assert (ours - golden["pretrain_cls"]).abs().max() <= ATOL


def test_the_comparison_sees_the_layernorm_eps(golden, pretrain_file):
    """With timm's default eps (1e-6) the same tensors give other outputs: the golden test can fail."""
    loaded = W.load_weights(str(pretrain_file), num_heads=2)
    del loaded.backbone["norm_eps"]
    with torch.no_grad():
        wrong = W.build_model(loaded).eval()(golden["images"])
    assert (wrong - golden["pretrain_cls"]).abs().max() > 100 * ATOL


def test_official_finetuned_file_gives_the_official_logits(golden, finetune_file):
    loaded = W.load_weights(str(finetune_file), num_heads=2)
    assert loaded.method == "aps" and loaded.kind == "official APS fine-tuned ViT (fc = classifier head)"
    assert loaded.backbone == APS_TINY and loaded.num_classes == 10
    assert set(loaded.head) == {"head.weight", "head.bias"}
    model = W.build_model(loaded, with_head=True).eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(golden["images"]), pre_logits=True)
        logits = model(golden["images"])
    assert (features - golden["finetune_cls"]).abs().max() <= ATOL
    assert (logits - golden["finetune_logits"]).abs().max() <= ATOL


def test_wrong_architecture_names_the_aps_layout(pretrain_file):
    with pytest.raises(W.WeightsMismatchError) as error:
        W.load_weights(str(pretrain_file), arch="vit_small")
    message = str(error.value)
    assert "pos_embed: file [1, 16, 32] vs model [1, 16, 384]" in message
    assert "seems to hold a custom ViT/4 at 16 px (32-d, 2 blocks" in message
    assert "no qkv bias, no CLS position" in message


def test_named_aps_size_gets_apss_head_count(tmp_path):
    """APS's ViT-S has 6 heads (PatchMix's 12): without --num-heads the APS value is used and said."""
    torch.manual_seed(0)
    vit = build_backbone("vit_small", img_size=32, patch_size=2, num_heads=6, **APS_OPTIONS)
    path = tmp_path / "last.pth"
    torch.save(timm_to_aps(vit.state_dict()), path)
    loaded = W.load_weights(str(path))
    assert loaded.backbone == {"arch": "vit_small", "img_size": 32, "patch_size": 2, "embed_dim": 384, "depth": 12,
                               "num_heads": 6, **APS_OPTIONS}
    assert loaded.heads_guessed and any("APS's official value for vit_small" in n for n in loaded.notes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(W.build_model(loaded).eval()(x), vit.eval()(x))


# ------------------------------------------------------------------------------------------------------------
# The evaluation scripts take APS files unchanged


def test_knn_and_finetune_eval_run_on_official_aps_files(tmp_path, toy_data, pretrain_file, finetune_file):
    out = tmp_path / "knn"
    assert main_knn.main(TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(out), "--batch-size", "32",
                                       "--pretrained-weights", str(pretrain_file), "--num-heads", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["weights"]["method"] == "aps" and results["weights"]["backbone"] == APS_TINY
    evaluated = tmp_path / "finetuned"
    assert main_finetune.main(TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(evaluated),
                                            "--pretrained-weights", str(finetune_file), "--num-heads", "2",
                                            "--eval-only", "--batch-size", "16"]) == 0
    assert json.loads((evaluated / "results.json").read_text())["weights"]["backbone"] == APS_TINY


# ------------------------------------------------------------------------------------------------------------
# Export


def test_export_round_trip_through_the_printed_timm_call(golden, pretrain_file, tmp_path, capsys):
    out = tmp_path / "export"
    assert W.main(["export", str(pretrain_file), "--out", str(out), "--num-heads", "2"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "aps_vit_tiny_p4_16.json").read_text())
    assert record["backbone"] == APS_TINY
    assert record["timm_model"] == "vit_base_patch16_clip_224"  # timm's ViT whose LayerNorm has eps 1e-5
    assert record["timm_kwargs"] == {"pre_norm": False, "embed_dim": 32, "depth": 2, "num_heads": 2,
                                     "patch_size": 4, "img_size": 16, "qkv_bias": False, "no_embed_class": True}
    call = printed.split("load it with timm (CLS-token features, ImageNet normalisation):\n", 1)[1]
    assert call.strip().splitlines()[-1].strip() == f"model = {record['usage']}"
    namespace: dict = {}
    exec("\n".join(line.strip() for line in call.strip().splitlines()), namespace)
    timm_model = namespace["model"].eval()
    assert {m.eps for m in timm_model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    with torch.no_grad():
        assert (timm_model(golden["images"]) - golden["pretrain_cls"]).abs().max() <= ATOL
    # The .safetensors file keeps the options; the plain .pth is recognised by its layout.
    again = W.load_weights(str(out / record["files"]["safetensors"]))
    assert again.backbone == APS_TINY and not again.heads_guessed
    plain = W.load_weights(str(out / record["files"]["pth"]), num_heads=2)
    assert plain.backbone == APS_TINY and any("layout of APS's ViT" in n for n in plain.notes)


# ------------------------------------------------------------------------------------------------------------
# Registry


def test_aps_entries_are_registered_with_their_method_and_source():
    aps = {name: e for name, e in W.RELEASED.items() if e.method == "aps"}
    assert len(aps) == 24 and all(name.startswith("aps-") for name in aps)
    assert {e.method for e in W.RELEASED.values()} == {"patchmix", "aps", "dino", "selfpatch"}
    entry = W.get_released("aps-cifar100-vit-small-1600-pretrain")
    assert entry.top1 == 84.9 and entry.epochs == 1600 and entry.repo_id == "visresearch/aps"
    assert "README 'Main Results' (CIFAR100, 1600 epochs, ViT-Small/2)" in entry.note
    assert not entry.published and entry.url == "https://huggingface.co/visresearch/aps/tree/main"
    assert entry.backbone_kwargs() == {"arch": "vit_small", "img_size": 32, "patch_size": 2, "embed_dim": 384,
                                       "depth": 12, "num_heads": 6, **APS_OPTIONS}
    assert W.get_released("aps-cifar10-vit-base-3200-finetune").top1 == 98.3
    assert W.get_released("cifar10-vit-small-pretrain").method == "patchmix"


def test_list_shows_both_methods(capsys):
    assert W.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "PatchMix (method patchmix, huggingface.co/visresearch/PatchMix)" in out
    assert "APS (method aps, huggingface.co/visresearch/aps)" in out
    assert out.index("cifar10-vit-tiny-pretrain") < out.index("aps-cifar10-vit-tiny-1600-pretrain")
    assert "<weights dir>/aps/aps-cifar100-vit-base-3200-pretrain.pth" in out


def test_aps_name_uses_a_hand_downloaded_copy_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", img_size=32, patch_size=2, **APS_OPTIONS)
    target = tmp_path / "weights" / "aps" / "aps-cifar10-vit-tiny-1600-pretrain.pth"
    target.parent.mkdir(parents=True)
    torch.save(timm_to_aps(vit.state_dict()), target)
    loaded = W.load_weights("aps-cifar10-vit-tiny-1600-pretrain", weights_dir=tmp_path / "weights")
    assert loaded.path == target and loaded.released.name == "aps-cifar10-vit-tiny-1600-pretrain"
    assert not loaded.heads_guessed and loaded.backbone["num_heads"] == 3 and loaded.method == "aps"
    assert "released: aps-cifar10-vit-tiny-1600-pretrain, reported fine-tune (of this file) top-1 97.2" in \
        loaded.describe()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(W.build_model(loaded).eval()(x), vit.eval()(x))
    # Just the file name, directly in the weights folder, is found too.
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "aps-cifar10-vit-tiny-1600-pretrain.pth").write_bytes(b"x")
    assert W.resolve_weights("aps-cifar10-vit-tiny-1600-pretrain", weights_dir=flat)[0] == \
        flat / "aps-cifar10-vit-tiny-1600-pretrain.pth"


def test_aps_name_without_file_says_where_to_get_it_and_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    argv = TINY_FLAGS + ["--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"),
                         "--pretrained-weights", "aps-cifar100-vit-small-3200-pretrain",
                         "--weights-dir", str(tmp_path / "w")]
    assert main_knn.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "https://huggingface.co/visresearch/aps/tree/main" in lines[0]
    assert str(tmp_path / "w" / "aps" / "aps-cifar100-vit-small-3200-pretrain.pth") in lines[0]
