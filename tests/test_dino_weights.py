"""Official DINO and SelfPatch checkpoints wherever a ViT is expected, their registry entries, export to timm.

``tests/fixtures/dino_weights.pth`` was written by ``tools/parity/dino_weights.py --write-fixture`` with the
OFFICIAL model classes (github.com/facebookresearch/dino ``vision_transformer.py`` + ``utils.MultiCropWrapper``;
github.com/alinlab/SelfPatch ``selfpatch_vision_transformer.py`` + ``main_selfpatch.MultiCropWrapper``; the commits
are recorded in the file): for a tiny ViT (32-d, 2 blocks, 2 heads, 32-px images, 8-px patches) with random
weights, the student (DDP-prefixed, as saved) and teacher state dicts of both methods, a seeded batch, the official
outputs on it (DINO: the CLS token after the final norm; SelfPatch: the SelfPatch head's image-level vector), and
SelfPatch's patch-level aggregation of random 6x6 token grids. Only numbers: no official code is needed here.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
from pathlib import Path

import pytest
import torch
from evalkit import TINY_FLAGS

import main_finetune
import main_knn
import main_linear
from patchmix import weights as W
from patchmix.models import build_backbone
from patchmix.selfpatch_head import SelfPatchViT, neighbour_index

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dino_weights.pth"
ATOL = 1e-5
TINY32 = {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
DRIVE = "https://drive.google.com/file/d/19eeQrK-nl4B9ksFQ_QnewGHVKYDQF4Yw/view?usp=sharing"


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def training_checkpoint(part: dict, path: Path, **args) -> Path:
    """The official training checkpoint (main_dino.py / main_selfpatch.py): student (DDP-prefixed), teacher,
    optimizer, epoch, args (an argparse.Namespace: pickled, not weights-only readable), loss state."""
    namespace = argparse.Namespace(**{"arch": "vit_small", "patch_size": 8, "out_dim": 64, **args})
    torch.save({"student": part["student"], "teacher": part["teacher"], "optimizer": {"state": {}, "param_groups": []},
                "epoch": 100, "args": namespace, "dino_loss": {"center": torch.zeros(1, 64)}}, path)
    return path


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= ATOL


def features(loaded: W.LoadedWeights, images: torch.Tensor) -> torch.Tensor:
    model = W.build_model(loaded).eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def printed_timm_model(printed: str) -> torch.nn.Module:
    call = printed.split("load it with timm (CLS-token features, ImageNet normalisation):\n", 1)[1]
    namespace: dict = {}
    exec("\n".join(line.strip() for line in call.strip().splitlines()), namespace)
    return namespace["model"].eval()


# ------------------------------------------------------------------------------------------------------------
# DINO: the official files against the official outputs


def test_dino_training_checkpoint_gives_the_teachers_cls_output(golden, tmp_path):
    path = training_checkpoint(golden["dino"], tmp_path / "checkpoint.pth")
    with pytest.raises(W.WeightsError, match="--num-heads"):
        W.load_weights(str(path))  # a 32-d ViT is no named size
    loaded = W.load_weights(str(path), num_heads=2)
    assert loaded.method == "dino" and loaded.encoder == "teacher" and loaded.backbone == TINY32
    assert loaded.kind == "official DINO training checkpoint (teacher: backbone + DINO head)"
    assert not any(k.startswith(("head.", "backbone.")) for k in loaded.state_dict) and not loaded.head
    notes = " | ".join(loaded.notes)
    assert "using the teacher, as DINO's evaluations do (--checkpoint-key student for the student)" in notes
    assert "dropped head.* (the DINO head" in notes and "(argparse.Namespace)" in notes and "no code ran" in notes
    assert "args.arch is 'vit_small' (384-d) but the tensors are 32-d" in notes
    assert loaded.checkpoint["args"]["arch"] == "vit_small" and loaded.checkpoint["epoch"] == 100
    assert close(features(loaded, golden["dino"]["images"]), golden["dino"]["teacher_cls"])


def test_dino_student_is_one_checkpoint_key_away(golden, tmp_path):
    path = training_checkpoint(golden["dino"], tmp_path / "checkpoint.pth")
    loaded = W.load_weights(str(path), checkpoint_key="student", num_heads=2)
    assert loaded.encoder == "student" and "removed the DDP prefix module." in loaded.notes
    images = golden["dino"]["images"]
    assert close(features(loaded, images), golden["dino"]["student_cls"])
    assert not close(golden["dino"]["student_cls"], golden["dino"]["teacher_cls"])


def test_dino_backbone_file_gives_the_same_output(golden, tmp_path):
    """The released format: the teacher's ViT alone under timm's names."""
    teacher = golden["dino"]["teacher"]
    path = tmp_path / "backbone.pth"
    torch.save({k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}, path)
    loaded = W.load_weights(str(path), num_heads=2)
    assert loaded.kind == "ViT backbone" and loaded.backbone == TINY32
    assert close(features(loaded, golden["dino"]["images"]), golden["dino"]["teacher_cls"])
    # A flat teacher with its DINO head (what DINO's own loader makes of the teacher) loads too.
    flat = tmp_path / "flat.pth"
    torch.save({k.replace("backbone.", ""): v for k, v in teacher.items()}, flat)
    loaded = W.load_weights(str(flat), num_heads=2)
    assert loaded.method == "dino" and any("dropped head.* (the DINO head" in n for n in loaded.notes)
    assert close(features(loaded, golden["dino"]["images"]), golden["dino"]["teacher_cls"])


def test_the_dino_comparison_sees_heads_and_eps(golden, tmp_path):
    """The golden test can fail: one head instead of two, or LayerNorm eps 1e-5, give other outputs."""
    path = training_checkpoint(golden["dino"], tmp_path / "checkpoint.pth")
    for change in ({"num_heads": 1}, {"norm_eps": 1e-5}):
        loaded = W.load_weights(str(path), num_heads=2)
        loaded.backbone.update(change)
        wrong = features(loaded, golden["dino"]["images"])
        assert float((wrong - golden["dino"]["teacher_cls"]).abs().max()) > 100 * ATOL, change


def test_dino_export_round_trip_through_the_printed_timm_call(golden, tmp_path, capsys):
    path = training_checkpoint(golden["dino"], tmp_path / "checkpoint.pth")
    out = tmp_path / "export"
    assert W.main(["export", str(path), "--out", str(out), "--num-heads", "2"]) == 0
    record = json.loads((out / "dino_vit_tiny_p8_32.json").read_text())
    assert record["timm_model"] == "vit_tiny_patch16_224" and record["timm_objects"] == {}
    assert record["timm_kwargs"] == {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32}
    with torch.no_grad():
        assert close(printed_timm_model(capsys.readouterr().out)(golden["dino"]["images"]),
                     golden["dino"]["teacher_cls"])
    # The exported .pth is named dino_*: loaded by path, it is taken as DINO's (for its head counts).
    again = W.load_weights(str(out / record["files"]["pth"]), num_heads=2)
    assert again.method == "dino" and any("DINO's file naming" in n for n in again.notes)
    # timm's ViT-S has DINO's 6 heads: no num_heads argument is needed for a DINO ViT-S.
    assert W.timm_model_name({"arch": "vit_small", "img_size": 224, "patch_size": 16, "embed_dim": 384,
                              "depth": 12, "num_heads": 6}) == ("vit_small_patch16_224", {})


# ------------------------------------------------------------------------------------------------------------
# DINO: head counts of named sizes, the registry, offline use


@pytest.fixture(scope="module")
def dino_vit_small(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A ViT-S/16 at 224 px with DINO's 6 heads (random weights) and its state dict saved as DINO's released
    backbone file, in a weights folder: ``<weights>/dino/dino_deitsmall16_pretrain.pth``."""
    torch.manual_seed(0)
    model = build_backbone("vit_small", img_size=224, patch_size=16, num_heads=6).eval()
    path = tmp_path_factory.mktemp("weights") / "dino" / "dino_deitsmall16_pretrain.pth"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def vit_small_image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_named_dino_size_gets_dinos_head_count(dino_vit_small, vit_small_image, tmp_path):
    """DINO's vit_small has 6 heads (PatchMix's 12). A training checkpoint names its architecture in args.arch;
    a plain backbone file gets DINO's count only from a dino_* name (DINO's release names), else PatchMix's."""
    model, released_file = dino_vit_small
    state = torch.load(released_file, weights_only=True)
    teacher = {**{f"backbone.{k}": v for k, v in state.items()}, "head.mlp.0.weight": torch.zeros(8, 384)}
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "args": argparse.Namespace(arch="deit_small", patch_size=16)}, path)
    loaded = W.load_weights(str(path))  # "deit_small" is DINO's alias of vit_small
    assert loaded.backbone["num_heads"] == 6 and not loaded.heads_guessed and loaded.encoder == "teacher"
    assert any("args.arch is 'deit_small', which has 6 heads in DINO's code" in n for n in loaded.notes)
    with torch.no_grad():
        assert torch.equal(features(loaded, vit_small_image), model(vit_small_image))

    loaded = W.load_weights(str(released_file))
    assert loaded.method == "dino" and loaded.backbone["num_heads"] == 6 and loaded.heads_guessed
    assert any("DINO's official value for vit_small" in n for n in loaded.notes)
    assert any("DINO's file naming (dino_deitsmall16_pretrain.pth)" in n for n in loaded.notes)

    other_name = tmp_path / "backbone.pth"
    other_name.symlink_to(released_file)
    loaded = W.load_weights(str(other_name))
    assert loaded.backbone["num_heads"] == 12 and loaded.method == ""  # nothing says DINO: PatchMix's count
    assert any("using 12, the official value for vit_small" in n for n in loaded.notes)
    assert W.load_weights(str(other_name), num_heads=6).backbone["num_heads"] == 6

    torch.save({"teacher": teacher, "args": argparse.Namespace(arch="resnet50")}, path)
    with pytest.raises(W.WeightsError, match="DINO checkpoint of 'resnet50' \\(args.arch\\); only its ViTs"):
        W.load_weights(str(path))


def test_dino_entries_are_registered_with_their_urls_and_numbers():
    dino = {name: e for name, e in W.RELEASED.items() if e.method == "dino"}
    assert set(dino) == {"dino-imagenet-vit-small-pretrain", "dino-imagenet-vit-small-p8-pretrain",
                         "dino-imagenet-vit-base-pretrain", "dino-imagenet-vit-base-p8-pretrain"}
    small = W.get_released("dino-imagenet-vit-small-pretrain")
    assert small.url == small.download_url == DINO_URL and small.published and small.num_heads == 6
    assert small.top1 == 74.5 and small.reported == (("linear top-1", 77.0),) and small.metric == "kNN"
    assert small.local_paths == ("dino/dino_deitsmall16_pretrain.pth", "dino_deitsmall16_pretrain.pth")
    assert small.backbone_kwargs() == {"arch": "vit_small", "img_size": 224, "patch_size": 16, "embed_dim": 384,
                                       "depth": 12, "num_heads": 6}
    assert "'Pretrained models' table" in small.note and "last 4 blocks" in small.note
    base = W.get_released("dino-imagenet-vit-base-pretrain")
    assert (base.top1, base.reported, base.patch_size, base.num_heads) == (76.1, (("linear top-1", 78.2),), 16, 12)
    assert base.url == "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
    assert W.get_released("dino-imagenet-vit-small-p8-pretrain").top1 == 78.3


def test_list_shows_dino_and_selfpatch(capsys):
    assert W.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "DINO (method dino, dl.fbaipublicfiles.com/dino)" in out and DINO_URL in out
    assert "SelfPatch (method selfpatch" in out and DRIVE in out and "COCO Mask R-CNN 1x box AP 42.1" in out


def test_dino_name_uses_a_hand_downloaded_copy_offline(dino_vit_small, vit_small_image, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no download may be attempted")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model, target = dino_vit_small
    weights = target.parent.parent
    loaded = W.load_weights("dino-imagenet-vit-small-pretrain", weights_dir=weights)
    assert loaded.path == target and loaded.method == "dino" and not loaded.heads_guessed
    assert loaded.backbone["num_heads"] == 6
    assert "released: dino-imagenet-vit-small-pretrain, reported kNN top-1 74.5, linear top-1 77.0" in \
        loaded.describe()
    with torch.no_grad():
        assert torch.equal(features(loaded, vit_small_image), model(vit_small_image))
    # The README's URL is the same entry; the bare file name directly in the folder is found too.
    assert W.resolve_weights(DINO_URL, weights_dir=weights) == (target, loaded.released)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "dino_deitsmall16_pretrain.pth").write_bytes(b"x")
    assert W.resolve_weights("dino-imagenet-vit-small-pretrain", weights_dir=flat)[0] == \
        flat / "dino_deitsmall16_pretrain.pth"


def test_dino_name_without_network_is_one_line_naming_url_and_place(tmp_path, monkeypatch, capsys):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty torch.hub cache
    argv = TINY_FLAGS + ["--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--pretrained-weights",
                         "dino-imagenet-vit-base-pretrain", "--weights-dir", str(tmp_path / "w")]
    assert main_knn.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot download the released weights "
                                                   "'dino-imagenet-vit-base-pretrain' (DINO pretrain file")
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth" in lines[0]
    assert str(tmp_path / "w" / "dino" / "dino_vitbase16_pretrain.pth") in lines[0]
    assert "Temporary failure in name resolution" in lines[0]


# ------------------------------------------------------------------------------------------------------------
# SelfPatch: the official files against the official image-level vector


def selfpatch_loaded(golden, tmp_path, **kwargs) -> W.LoadedWeights:
    path = training_checkpoint(golden["selfpatch"], tmp_path / "checkpoint.pth", k_num=4)
    return W.load_weights(str(path), num_heads=2, **kwargs)


def test_selfpatch_checkpoint_gives_the_official_image_vector(golden, tmp_path):
    loaded = selfpatch_loaded(golden, tmp_path)
    assert loaded.method == "selfpatch" and loaded.encoder == "teacher"
    assert loaded.backbone == {**TINY32, "selfpatch_head": True}
    assert loaded.kind == "official SelfPatch training checkpoint (teacher: backbone + SelfPatch head + DINO heads)"
    assert "ca_head.cls_token" in loaded.state_dict and "cls_token" not in loaded.state_dict
    assert not any(k.startswith(("c_head.", "p_head.", "backbone.", "norm.")) for k in loaded.state_dict)
    assert any("dropped c_head.*, p_head.*" in n for n in loaded.notes)
    assert "no CLS token: SelfPatch head over all patch tokens" in loaded.describe()
    model = W.build_model(loaded).eval()
    assert isinstance(model, SelfPatchViT)
    images = golden["selfpatch"]["images"]
    with torch.no_grad():
        assert close(model(images), golden["selfpatch"]["teacher_vector"])
        assert model.forward_features(images).shape == (4, 16, 32)  # all patch tokens, no CLS token
    student = selfpatch_loaded(golden, tmp_path, checkpoint_key="student")
    assert student.encoder == "student" and close(features(student, images), golden["selfpatch"]["student_vector"])


def test_selfpatch_state_dicts_without_the_checkpoint_load_too(golden, tmp_path):
    teacher = golden["selfpatch"]["teacher"]
    images = golden["selfpatch"]["images"]
    wrapper = tmp_path / "teacher.pth"
    torch.save(teacher, wrapper)  # backbone.*, ca_head.*, c_head.*, p_head.*
    flat = tmp_path / "flat.pth"
    torch.save({k.replace("backbone.", ""): v for k, v in teacher.items()}, flat)  # as DINO's loader strips it
    for path in (wrapper, flat):
        loaded = W.load_weights(str(path), num_heads=2)
        assert loaded.method == "selfpatch" and loaded.backbone["selfpatch_head"] is True
        assert close(features(loaded, images), golden["selfpatch"]["teacher_vector"]), path.name


def test_selfpatch_backbone_alone_is_refused_with_the_reason(golden, tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save({k[len("backbone."):]: v for k, v in golden["selfpatch"]["teacher"].items()
                if k.startswith("backbone.")}, path)
    with pytest.raises(W.WeightsError, match="SelfPatch's backbone alone.*SelfPatch head \\(ca_head"):
        W.load_weights(str(path), num_heads=2)


def test_selfpatch_patch_aggregation_matches_the_official_teacher(golden, tmp_path):
    """The per-patch aggregation (top-4 of the 8 neighbours, wrapping around the grid) that SelfPatch's teacher
    computes for its patch-level loss, on a 6x6 grid of random tokens."""
    model = W.build_model(selfpatch_loaded(golden, tmp_path)).eval()
    tokens, local = golden["selfpatch"]["tokens"], golden["selfpatch"]["local"]
    with torch.no_grad():
        assert close(model.ca_head.aggregate_neighbours(tokens, k=4), local[:, 1:])
        assert close(model.ca_head(tokens), local[:, 0])
    index = neighbour_index(6)
    assert index.shape == (36, 8) and index[0].tolist() == [1, 5, 6, 7, 11, 30, 31, 35]


def test_the_selfpatch_comparison_sees_heads_and_eps(golden, tmp_path):
    for change in ({"num_heads": 1}, {"norm_eps": 1e-5}):
        loaded = selfpatch_loaded(golden, tmp_path)
        loaded.backbone.update(change)
        wrong = features(loaded, golden["selfpatch"]["images"])
        assert float((wrong - golden["selfpatch"]["teacher_vector"]).abs().max()) > 100 * ATOL, change


def test_selfpatch_export_is_timm_cait_and_loads_back(golden, tmp_path, capsys):
    path = training_checkpoint(golden["selfpatch"], tmp_path / "checkpoint.pth")
    out = tmp_path / "export"
    assert W.main(["export", str(path), "--out", str(out), "--num-heads", "2"]) == 0
    record = json.loads((out / "selfpatch_vit_tiny_p8_32.json").read_text())
    assert record["timm_model"] == "cait_s24_224"
    assert record["timm_kwargs"] == {"init_values": 1.0, "embed_dim": 32, "depth": 2, "num_heads": 2,
                                     "patch_size": 8, "img_size": 32}
    assert record["timm_objects"] == {"attn_block": "timm.models.vision_transformer.Attention"}
    images, expected = golden["selfpatch"]["images"], golden["selfpatch"]["teacher_vector"]
    timm_model = printed_timm_model(capsys.readouterr().out)
    assert type(timm_model).__name__ == "Cait"
    with torch.no_grad():
        assert close(timm_model(images), expected)
    for file in (record["files"]["pth"], record["files"]["safetensors"]):
        again = W.load_weights(str(out / file), num_heads=2)
        assert again.method == "selfpatch" and again.backbone == {**TINY32, "selfpatch_head": True}, file
        assert close(features(again, images), expected), file
    # A CaiT with real layer scales is not a SelfPatch model.
    state = torch.load(out / record["files"]["pth"], weights_only=True)
    state["blocks.0.gamma_1"] = torch.full_like(state["blocks.0.gamma_1"], 1e-5)
    torch.save(state, tmp_path / "cait.pth")
    with pytest.raises(W.WeightsError, match="layer scale is not a SelfPatch model"):
        W.load_weights(str(tmp_path / "cait.pth"), num_heads=2)


def test_selfpatch_model_has_the_interface_of_a_timm_vit():
    from timm.optim import param_groups_layer_decay
    torch.manual_seed(0)
    plain = build_backbone(**TINY32)
    assert type(plain).__name__ == "VisionTransformer" and plain.cls_token is not None  # default unchanged
    model = build_backbone(**TINY32, selfpatch_head=True)
    assert isinstance(model, SelfPatchViT) and model.cls_token is None and model.pos_embed.shape == (1, 16, 32)
    assert isinstance(model.norm, torch.nn.Identity) and model.embed_dim == 32
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 32) and model.forward_features(x).shape == (2, 16, 32)
    assert torch.equal(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 32)
    assert "ca_head.cls_token" in model.no_weight_decay()
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.75)
    def scales(module: torch.nn.Module) -> set[float]:
        return {g["lr_scale"] for g in groups for p in g["params"] if any(p is q for q in module.parameters())}
    # The SelfPatch head (which takes the place of the final norm) learns at the last block's rate, as timm groups
    # a ViT's final norm and CaiT its class-attention blocks; the classifier at the full rate.
    assert scales(model.ca_head) == scales(model.blocks[-1]) == {0.75} and scales(model.head) == {1.0}
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 5)  # other resolutions: the position table is resampled


# ------------------------------------------------------------------------------------------------------------
# The evaluation scripts take both methods' files unchanged


@pytest.mark.slow
def test_knn_linear_and_finetune_run_on_official_selfpatch_and_dino_files(golden, tmp_path, toy_data):
    selfpatch = training_checkpoint(golden["selfpatch"], tmp_path / "selfpatch.pth")
    dino = training_checkpoint(golden["dino"], tmp_path / "dino.pth")
    common = TINY_FLAGS + ["--data-path", str(toy_data), "--num-heads", "2", "--batch-size", "16"]
    for name, path, method in (("sp", selfpatch, "selfpatch"), ("dino", dino, "dino")):
        out = tmp_path / f"knn_{name}"
        assert main_knn.main(common + ["--output-dir", str(out), "--pretrained-weights", str(path)]) == 0
        weights = json.loads((out / "results.json").read_text())["weights"]
        assert weights["method"] == method and weights["encoder"] == "teacher"
    linear = tmp_path / "linear"
    assert main_linear.main(common + ["--output-dir", str(linear), "--pretrained-weights", str(selfpatch),
                                      "--epochs", "1"]) == 0
    results = json.loads((linear / "results.json").read_text())
    assert results["backbone_unchanged"] is True and results["weights"]["backbone"]["selfpatch_head"] is True
    finetune = tmp_path / "finetune"
    assert main_finetune.main(common + ["--output-dir", str(finetune), "--pretrained-weights", str(selfpatch),
                                        "--epochs", "1", "--warmup-epochs", "0"]) == 0
    # The fine-tuned classifier (ours: SelfPatch model + head) evaluates again through the loader.
    evaluated = tmp_path / "evaluated"
    assert main_finetune.main(common + ["--output-dir", str(evaluated), "--pretrained-weights",
                                        str(finetune / "checkpoint.pth"), "--eval-only"]) == 0
    assert json.loads((evaluated / "results.json").read_text())["top1"] == \
        json.loads((finetune / "results.json").read_text())["top1"]


# ------------------------------------------------------------------------------------------------------------
# SelfPatch registry entry


def test_selfpatch_entry_is_a_hand_download_with_its_downstream_numbers(tmp_path, monkeypatch, capsys):
    entry = W.get_released("selfpatch-imagenet-vit-small-pretrain")
    assert entry.method == "selfpatch" and not entry.published and entry.url == entry.page_url == DRIVE
    assert entry.top1 is None and entry.num_heads == 6
    assert entry.backbone_kwargs()["selfpatch_head"] is True
    assert entry.numbers().startswith("COCO Mask R-CNN 1x box AP 42.1, COCO Mask R-CNN 1x mask AP 38.5")
    assert entry.local_paths == ("selfpatch/selfpatch-imagenet-vit-small-pretrain.pth",
                                 "selfpatch-imagenet-vit-small-pretrain.pth")
    monkeypatch.chdir(tmp_path)
    argv = TINY_FLAGS + ["--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"),
                         "--pretrained-weights", DRIVE, "--weights-dir", str(tmp_path / "w")]  # its URL = its name
    assert main_knn.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'selfpatch-imagenet-vit-small-pretrain' (SelfPatch pretrain file" in lines[0]
    assert "Google Drive view link" in lines[0] and DRIVE in lines[0]
    assert str(tmp_path / "w" / "selfpatch" / "selfpatch-imagenet-vit-small-pretrain.pth") in lines[0]
    copy = tmp_path / "w" / "selfpatch" / "selfpatch-imagenet-vit-small-pretrain.pth"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"x")
    assert W.resolve_weights("selfpatch-imagenet-vit-small-pretrain", weights_dir=tmp_path / "w") == (copy, entry)


def test_pickled_args_are_read_as_a_dict_without_building_them(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"args": argparse.Namespace(arch="vit_small", global_crops_scale=(0.4, 1.0), seed=0, note=None,
                                           path=Path("x")), "teacher": {"w": torch.zeros(1)}}, path)
    for allow_pickle, other in ((False, "<not built: pathlib.PosixPath>"), (True, repr(Path("x")))):
        content, _ = W.read_weights_file(path, allow_pickle=allow_pickle)
        assert content["args"] == {"arch": "vit_small", "global_crops_scale": (0.4, 1.0), "seed": 0, "note": None,
                                   "path": other}, allow_pickle
