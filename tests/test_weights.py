"""The weights loader on every supported format, the released-weights registry, downloads, export, hubconf."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from evalkit import TINY, official_classifier, save_official_pretraining, save_ours, tiny_pretraining_model

from patchmix import weights as W
from patchmix.models import build_backbone


def backbone_of(model, encoder="momentum_encoder"):
    part = getattr(model, encoder)
    return {k: v for k, v in part.state_dict().items() if not k.startswith("head.")}


def assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_all_24_released_files_with_their_quirks():
    patchmix = [e for e in W.RELEASED.values() if e.method == "patchmix"]
    assert len(patchmix) == 24
    combos = {(e.dataset, e.arch) for e in patchmix}
    assert len(combos) == 8
    for entry in patchmix:
        assert W.get_released(entry.name) is entry
        assert entry.url == f"https://huggingface.co/visresearch/PatchMix/resolve/main/{entry.path}"
        assert entry.path.startswith(entry.protocol + "/") and entry.path.endswith(".pth")
    tiny = W.get_released("cifar100-vit-tiny-finetune")
    assert tiny.top1 == 84.9 and tiny.path.endswith("vit-tiny-800-84.6.pth") and "84.6" in tiny.note
    base = W.get_released("cifar100-vit-base-finetune")
    assert "vit-tiny-800-84.6.pth" in base.note  # the README mis-link is documented
    assert W.get_released("imagenet-vit-small-finetune").path.startswith("finetune/imagenet-1k/")
    assert W.get_released("imagenet-vit-small-pretrain").num_heads == 12
    assert W.get_released("cifar10-vit-tiny-pretrain").backbone_kwargs() == {
        "arch": "vit_tiny", "img_size": 32, "patch_size": 2, "embed_dim": 192, "depth": 12, "num_heads": 3}
    with pytest.raises(W.WeightsError, match="Did you mean cifar10-vit-tiny-pretrain"):
        W.get_released("cifar10-vit-tiny-pretrian")


def test_list_command_prints_the_table(capsys):
    assert W.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-vit-small-linear" in out and "96.0" in out and "pretrain/cifar10/vit-small-800-94.6.pth" in out
    assert "84.9*" in out and "num_heads=12" in out


# ------------------------------------------------------------------------------------------------------------
# Loading every format


def test_our_checkpoint_gives_the_momentum_encoder_or_the_base_encoder(tmp_path):
    model = tiny_pretraining_model()
    path = save_ours(model, tmp_path / "checkpoint.pth")
    loaded = W.load_weights(str(path))
    assert loaded.encoder == "momentum_encoder" and loaded.backbone == TINY and not loaded.heads_guessed
    assert_same(loaded.state_dict, backbone_of(model))
    assert "this code" in loaded.kind and not loaded.head
    base = W.load_weights(str(path), encoder="base_encoder")
    assert_same(base.state_dict, backbone_of(model, "base_encoder"))
    built = W.build_model(loaded)
    x = torch.randn(2, 3, 16, 16)
    model.momentum_encoder.head = torch.nn.Identity()
    assert torch.allclose(built(x), model.momentum_encoder.eval()(x))


def test_checkpoint_without_momentum_encoder_falls_back_with_a_note(tmp_path):
    model = tiny_pretraining_model(use_momentum=False)
    loaded = W.load_weights(str(save_ours(model, tmp_path / "c.pth")))
    assert loaded.encoder == "base_encoder"
    assert any("no momentum encoder" in note for note in loaded.notes)
    assert_same(loaded.state_dict, backbone_of(model, "base_encoder"))


@pytest.mark.parametrize("prefix,last", [("", False), ("module.", False), ("", True)])
def test_official_pretraining_files(tmp_path, prefix, last):
    model = tiny_pretraining_model()
    path = save_official_pretraining(model, tmp_path / "official.pth", prefix, last)
    with pytest.raises(W.WeightsError, match="number of attention heads cannot be inferred.*--num-heads"):
        W.load_weights(str(path))  # a 32-d ViT is no named size: its head count must be given
    loaded = W.load_weights(str(path), num_heads=2)
    assert loaded.kind == "official PatchMix pretraining checkpoint" and loaded.encoder == "momentum_encoder"
    assert loaded.backbone == TINY  # width, depth, patch and image size read off the shapes
    assert_same(loaded.state_dict, backbone_of(model))
    assert ("removed the DDP prefix module." in loaded.notes) == bool(prefix)


def test_named_size_gets_its_official_head_count_and_says_so(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", img_size=32, patch_size=2)
    path = tmp_path / "vit_tiny.pth"
    torch.save({"state_dict": {f"base_encoder.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = W.load_weights(str(path))
    assert loaded.encoder == "base_encoder" and loaded.heads_guessed
    assert loaded.backbone == {"arch": "vit_tiny", "img_size": 32, "patch_size": 2, "embed_dim": 192, "depth": 12,
                               "num_heads": 3}
    assert any("heads cannot be inferred" in note for note in loaded.notes)


def test_wrong_architecture_names_what_the_file_holds(tmp_path):
    model = build_backbone("vit_tiny", img_size=32, patch_size=2)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {f"momentum_encoder.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(W.WeightsMismatchError) as error:
        W.load_weights(str(path), arch="vit_small", patch_size=16)
    message = str(error.value)
    assert "pos_embed: file [1, 257, 192] vs model [1, 257, 384]" in message
    assert "patch_embed.proj.weight: file [192, 3, 2, 2] vs model [384, 3, 16, 16]" in message
    assert "seems to hold vit_tiny/2 at 32 px (192-d, 12 blocks" in message
    assert "attention heads cannot be inferred from tensor shapes; the official value for vit_tiny is 3" in message
    assert "--arch vit_tiny --patch-size 2" in message


def test_official_linear_file_gives_backbone_and_head(tmp_path):
    classifier = official_classifier()
    path = tmp_path / "linear.pth"
    torch.save({"epoch": 20, "arch": "vit-tiny", "state_dict": classifier.state_dict(), "acc_best": 91.0,
                "optimizer": {}, "scaler": {}}, path)
    loaded = W.load_weights(str(path), num_heads=2)
    assert loaded.num_classes == 4 and set(loaded.head) == {"head.weight", "head.bias"}
    assert loaded.checkpoint["acc_best"] == 91.0
    rebuilt = W.build_model(loaded, with_head=True).eval()
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(rebuilt(x), classifier.eval()(x))


FAKE_VITS = """
    import os, pathlib
    pathlib.Path(os.environ["PATCHMIX_TEST_MARKER"]).write_text("imported")  # runs only if this is imported
    from timm.models.vision_transformer import VisionTransformer

    class VisionTransformerMoCo(VisionTransformer):
        pass
"""


def test_pickled_module_is_read_without_running_its_code(tmp_path, monkeypatch):
    """The official best.pth is a whole pickled module.vits.VisionTransformerMoCo: its tensors are extracted,
    the class is never imported (even though it is importable here); --allow-pickle does import it."""
    package = tmp_path / "src" / "module"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "vits.py").write_text(textwrap.dedent(FAKE_VITS))
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("PATCHMIX_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    vits = importlib.import_module("module.vits")
    torch.manual_seed(0)
    model = vits.VisionTransformerMoCo(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=4)
    path = tmp_path / "best.pth"
    torch.save(model, path)
    for name in ("module.vits", "module"):
        monkeypatch.delitem(sys.modules, name)
    marker.unlink()

    loaded = W.load_weights(str(path), num_heads=2)
    assert not marker.exists() and "module.vits" not in sys.modules, "the pickled class must not be imported"
    assert any("module.vits.VisionTransformerMoCo" in note and "no code ran" in note for note in loaded.notes)
    assert loaded.num_classes == 4
    rebuilt = W.build_model(loaded, with_head=True).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(rebuilt(x), model.eval()(x))

    trusted = W.load_weights(str(path), num_heads=2, allow_pickle=True)
    assert marker.exists(), "--allow-pickle runs the file's code (the test can see it)"
    assert_same(trusted.state_dict, loaded.state_dict)


def test_unreadable_file_says_so(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(W.WeightsError, match="truncated, corrupt or not a PyTorch file"):
        W.load_weights(str(path))
    with pytest.raises(W.WeightsError, match="not found: no such file.*Did you mean the released weights "
                                             "cifar10-vit-tiny-pretrain"):
        W.load_weights("cifar10-vit-tiny-pretrai")


# ------------------------------------------------------------------------------------------------------------
# Downloads (no test touches the network)


def test_offline_download_error_names_file_url_and_manual_location(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    manual = tmp_path / "weights"
    with pytest.raises(W.WeightsError) as error:
        W.resolve_weights("cifar10-vit-tiny-pretrain", weights_dir=manual, cache_dir=tmp_path / "hf_cache")
    message = str(error.value)
    assert "pretrain/cifar10/vit-tiny-800-92.9.pth" in message
    assert "https://huggingface.co/visresearch/PatchMix/resolve/main/pretrain/cifar10/vit-tiny-800-92.9.pth" in message
    assert str(manual / "pretrain/cifar10/vit-tiny-800-92.9.pth") in message
    # The copy downloaded by hand is found offline, by full hub path or by file name.
    target = manual / "vit-tiny-800-92.9.pth"
    manual.mkdir()
    target.write_bytes(b"x")
    assert W.resolve_weights("cifar10-vit-tiny-pretrain", weights_dir=manual)[0] == target
    # README links (/blob/main/...) are routed through the same offline-aware path.
    readme = "https://huggingface.co/visresearch/PatchMix/blob/main/linear/cifar10/vit-tiny-800-94.4.pth"
    with pytest.raises(W.WeightsError, match="linear/cifar10/vit-tiny-800-94.4.pth"):
        W.resolve_weights(readme, weights_dir=manual, cache_dir=tmp_path / "hf_cache")


def test_plain_urls_download_once_into_the_torch_hub_cache(tmp_path):
    model = tiny_pretraining_model()
    source = save_ours(model, tmp_path / "remote" / "weights.pth")
    cache = tmp_path / "hub"
    path, _ = W.resolve_weights(source.as_uri(), cache_dir=cache)
    assert path == cache / "weights.pth" and path.read_bytes() == source.read_bytes()
    with pytest.raises(W.WeightsError, match="cannot download http://127.0.0.1:9/w.pth .*put the file at"):
        W.resolve_weights("http://127.0.0.1:9/w.pth", cache_dir=cache)


# ------------------------------------------------------------------------------------------------------------
# Export and torch.hub


def test_export_round_trip_through_timm_create_model(tmp_path, capsys):
    import timm
    model = tiny_pretraining_model()
    checkpoint = save_ours(model, tmp_path / "checkpoint.pth")
    assert W.main(["export", str(checkpoint), "--out", str(tmp_path / "export")]) == 0
    printed = capsys.readouterr().out
    assert "timm.create_model('vit_tiny_patch16_224', pretrained=True" in printed
    record = json.loads((tmp_path / "export" / "patchmix_vit_tiny_p4_16.json").read_text())
    assert record["timm_kwargs"] == {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 16}
    pth = tmp_path / "export" / record["files"]["pth"]
    assert pth.name == f"patchmix_vit_tiny_p4_16-{record['sha256'][:8]}.pth"
    reference = W.build_model(W.load_weights(str(checkpoint))).eval()
    x = torch.randn(2, 3, 16, 16)
    for file in (pth, tmp_path / "export" / record["files"]["safetensors"]):
        timm_model = timm.create_model(record["timm_model"], pretrained=True, num_classes=0,
                                       pretrained_cfg_overlay=dict(file=str(file)), **record["timm_kwargs"]).eval()
        assert torch.allclose(timm_model(x), reference(x), atol=1e-6), file.name
    # The exported files load back through the loader, with their architecture.
    again = W.load_weights(str(tmp_path / "export" / record["files"]["safetensors"]))
    assert again.backbone == TINY and not again.heads_guessed
    assert_same(W.load_weights(str(pth), num_heads=2).state_dict, again.state_dict)


def test_timm_name_for_vit_small_passes_twelve_heads():
    name, kwargs = W.timm_model_name({"arch": "vit_small", "img_size": 224, "patch_size": 16, "embed_dim": 384,
                                      "depth": 12, "num_heads": 12})
    assert (name, kwargs) == ("vit_small_patch16_224", {"num_heads": 12})
    name, kwargs = W.timm_model_name({"arch": "vit_base", "img_size": 32, "patch_size": 2, "embed_dim": 768,
                                      "depth": 12, "num_heads": 12})
    assert (name, kwargs) == ("vit_base_patch16_224", {"patch_size": 2, "img_size": 32})


def test_hubconf_entry_uses_a_hand_downloaded_copy(tmp_path, monkeypatch):
    """A released name resolves offline to a file in PATCHMIX_WEIGHTS_DIR, with the registry's architecture."""
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", img_size=32, patch_size=2)
    target = tmp_path / "weights" / "pretrain" / "cifar10" / "vit-tiny-800-92.9.pth"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"base_encoder.{k}": v for k, v in vit.state_dict().items()}}, target)
    monkeypatch.setenv("PATCHMIX_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.syspath_prepend(str(Path(W.__file__).resolve().parents[2]))  # the repository root (hubconf.py)
    hubconf = importlib.import_module("hubconf")
    assert hubconf.dependencies == ["torch", "timm"]
    model = hubconf.patchmix_vit_tiny2_cifar10().eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(model(x), vit.eval()(x))
    loaded = W.load_weights("cifar10-vit-tiny-pretrain")
    assert loaded.released.name == "cifar10-vit-tiny-pretrain" and not loaded.heads_guessed
    assert loaded.encoder == "base_encoder"  # the official ViT-T recipe has no momentum encoder
