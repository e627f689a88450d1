"""Proof that official APS checkpoints load into our timm ViT and compute what the official ViT computes.

What it proves: for APS's ViT-T/2, ViT-S/2 and ViT-B/2 (32-px images) and a tiny ViT (the CI fixture), with
random weights in the OFFICIAL model classes of github.com/visresearch/aps (``module/model.py``),

* a pretraining file saved as the official ``main_pretrain.py`` saves it (``model.state_dict()``, raw), loaded
  with ``patchmix.weights.load_weights`` and built with ``build_model``, gives the same CLS output (after the
  final LayerNorm) as the official encoder on the same images with all tokens (no sampling);
* a fine-tuned file saved as the official ``main_finetune.py`` saves it (the whole pickled ``Vit`` module, its
  ``fc`` a new classifier, the backbone loaded from the pretraining file the official way), read without running
  its code, gives the same CLS output and the same logits as the official ``Vit``;
* ``python -m patchmix.weights export`` of the pretraining file, loaded with exactly the ``timm.create_model(...)``
  call it prints, gives the same CLS output;
* control: the same weights in a ViT with timm's default LayerNorm eps (1e-6) do NOT match (so the comparison
  can see the eps).

It prints a table of the largest absolute differences and exits with status 1 when one exceeds ``TOLERANCE``
(or the control does not).

How to run (needs ``einops`` for the official code; a CPU is enough, well under a minute)::

    git clone https://github.com/visresearch/aps /path/to/official-aps
    python tools/parity/aps_weights.py --official /path/to/official-aps
    # and to refresh the CI fixture that tests/test_aps_weights.py compares against:
    python tools/parity/aps_weights.py --official /path/to/official-aps --write-fixture tests/fixtures/aps_weights.pth

Run-time patch (the checkout is not modified): the official code is pinned to timm 0.6.11, whose ``Block``
builds ``torch.nn.LayerNorm`` (eps 1e-5); timm 1.0's ``Block`` defaults to its own LayerNorm with eps 1e-6. The
name ``Block`` inside the official ``module.model`` is therefore bound to timm's ``Block`` with
``norm_layer=torch.nn.LayerNorm``, which is the 0.6.11 default; every LayerNorm of the official models is
checked to have eps 1e-5 and every qkv projection to have no bias. Nothing else needs patching: the model
classes run on the CPU as they are.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.weights import build_model, load_weights  # noqa: E402

TOLERANCE = 1e-5   # largest absolute difference allowed on CLS features / logits of magnitude ~1
CONTROL_MIN = 1e-4  # the eps-1e-6 control must differ by more than this

# name: (image size, patch size, width, depth, heads, projector/predictor dims (out, hidden), classes, batch)
CASES = {
    "vit_tiny": (32, 2, 192, 12, 3, (128, 512), 10, 4),
    "vit_small": (32, 2, 384, 12, 6, (128, 512), 100, 4),
    "vit_base": (32, 2, 768, 12, 12, (128, 512), 10, 2),
    "fixture": (16, 4, 32, 2, 2, (16, 32), 10, 4),
}
SEED = 0


def import_official(path: Path):
    """The official ``module.model`` with ``Block`` bound to timm 0.6.11's defaults (see the module docstring)."""
    from timm.models.vision_transformer import Block
    sys.path.insert(0, str(path))
    official = importlib.import_module("module.model")
    official.Block = functools.partial(Block, norm_layer=nn.LayerNorm)
    return official


def official_commit(path: Path, given: str) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --official-commit)"


def check_official_settings(model: nn.Module) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms), "official LayerNorms must have eps 1e-5 (timm 0.6.11)"
    qkv = [m for name, m in model.named_modules() if name.endswith("attn.qkv")]
    assert qkv and all(m.bias is None for m in qkv), "official qkv projections have no bias"


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> None:
    """Random weights everywhere: LayerNorm gains near 1, matrices of unit-scale outputs, small patch embedding
    and position table (so the first LayerNorms see a small variance and their eps matters)."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=generator)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * noise)
        elif p.ndim == 2:
            p.copy_(noise / p.shape[1] ** 0.5)
        else:
            p.copy_(0.02 * noise)


def cls_of_pretraining_encoder(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The official pretraining encoder's CLS token after ``layer_norm``, all tokens kept (index = 0..T-1)."""
    captured = {}
    handle = encoder.layer_norm.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    tokens = encoder.pos_embedding.shape[0]
    index = torch.arange(tokens).unsqueeze(1).expand(tokens, images.shape[0])
    encoder(images, index)
    handle.remove()
    return captured["out"][:, 0]


def official_finetuned(official, pretrain_state: dict, settings: tuple, seed: int) -> nn.Module:
    """The official fine-tuning model as main_finetune.py makes it: ``Vit``, backbone from ``base_encoder.*``
    (without ``fc``), then a new ``fc`` classifier (here with random weights, as after fine-tuning)."""
    img, patch, dim, depth, heads, _, classes, _ = settings
    vit = official.Vit(image_size=img, patch_size=patch, emb_dim=dim, num_layer=depth, num_head=heads,
                       out_ndim=classes)
    backbone = {k[len("base_encoder."):]: v for k, v in pretrain_state.items()
                if k.startswith("base_encoder.") and not k.startswith("base_encoder.fc.")}
    missing, unexpected = vit.load_state_dict(backbone, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected, (missing, unexpected)
    vit.fc = nn.Linear(dim, classes)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        vit.fc.weight.copy_(torch.randn(vit.fc.weight.shape, generator=generator) / dim ** 0.5)
        vit.fc.bias.copy_(0.1 * torch.randn(classes, generator=generator))
    return vit.eval()


def exported_timm_model(pretrain_file: Path, out: Path, extra: list[str]) -> tuple[nn.Module, str]:
    """Run ``python -m patchmix.weights export`` and build the model with the timm call it prints."""
    result = subprocess.run([sys.executable, "-m", "patchmix.weights", "export", str(pretrain_file), "--out",
                             str(out), *extra], cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    printed = result.stdout.split("load it with timm (CLS-token features, ImageNet normalisation):\n", 1)[1]
    code = textwrap.dedent(printed)
    namespace: dict = {}
    exec(code, namespace)  # the printed lines: "import timm" and "model = timm.create_model(...)"
    return namespace["model"].eval(), code.strip().splitlines()[-1]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@torch.no_grad()
def run_case(official, name: str, workdir: Path) -> dict:
    settings = CASES[name]
    img, patch, dim, depth, heads, (out_dim, hidden), classes, batch = settings
    torch.manual_seed(SEED)
    model = official.ViTEncoderPredHead(dim=out_dim, mlp_dim=hidden, image_size=img, patch_size=patch,
                                        emb_dim=dim, num_layer=depth, num_head=heads)
    randomise(model, SEED)
    model.eval()
    check_official_settings(model)
    images = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(SEED + 2))

    # Pretraining file, saved like the official main_pretrain.py (raw state dict).
    pretrain_file = workdir / f"{name}_last.pth"
    pretrain_state = model.state_dict()
    torch.save(pretrain_state, pretrain_file)
    official_cls = cls_of_pretraining_encoder(model.base_encoder, images)
    heads_flag = [] if name != "fixture" else ["--num-heads", str(heads)]
    loaded = load_weights(str(pretrain_file), num_heads=heads if name == "fixture" else 0)
    assert loaded.method == "aps" and loaded.backbone["num_heads"] == heads, loaded.describe()
    assert loaded.backbone["norm_eps"] == 1e-5 and loaded.backbone["qkv_bias"] is False
    assert loaded.backbone["pos_embed_cls"] is False
    ours = build_model(loaded).eval()
    ours_cls = ours(images)

    # Control: the same tensors in a ViT with timm's default LayerNorm eps.
    control_loaded = load_weights(str(pretrain_file), num_heads=heads if name == "fixture" else 0)
    del control_loaded.backbone["norm_eps"]
    control_cls = build_model(control_loaded).eval()(images)

    # Fine-tuned file, saved like the official main_finetune.py (the whole module, pickled).
    vit = official_finetuned(official, pretrain_state, settings, SEED)
    check_official_settings(vit)
    finetune_file = workdir / f"{name}_best.pth"
    torch.save(vit, finetune_file)
    official_ft_cls, official_logits = vit(images, out_feat=True), vit(images)
    loaded_ft = load_weights(str(finetune_file), num_heads=heads if name == "fixture" else 0)
    assert loaded_ft.num_classes == classes and loaded_ft.method == "aps", loaded_ft.describe()
    ours_ft = build_model(loaded_ft, with_head=True).eval()
    ours_ft_cls = ours_ft.forward_head(ours_ft.forward_features(images), pre_logits=True)
    ours_logits = ours_ft(images)

    # Export, and the printed timm call.
    timm_model, call = exported_timm_model(pretrain_file, workdir / f"{name}_export", heads_flag)
    timm_cls = timm_model(images)

    return {"name": name, "heads": heads, "describe": loaded.describe(), "finetune_describe": loaded_ft.describe(),
            "timm_call": call,
            "diffs": {"pretrain CLS": max_diff(ours_cls, official_cls),
                      "fine-tuned CLS": max_diff(ours_ft_cls, official_ft_cls),
                      "fine-tuned logits": max_diff(ours_logits, official_logits),
                      "exported timm CLS": max_diff(timm_cls, official_cls)},
            "control": max_diff(control_cls, official_cls),
            "scale": float(official_cls.abs().max()),
            "fixture": {"pretrain_state_dict": {k: v.clone() for k, v in pretrain_state.items()},
                        "finetune_state_dict": {k: v.clone() for k, v in vit.state_dict().items()},
                        "images": images, "pretrain_cls": official_cls, "finetune_cls": official_ft_cls,
                        "finetune_logits": official_logits}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of github.com/visresearch/aps")
    parser.add_argument("--official-commit", default="", help="its commit (read with git when it is a checkout)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--write-fixture", type=Path, default=None,
                        help="write the tiny case's official state dicts, images and outputs here (.pth)")
    args = parser.parse_args(argv)
    import timm
    official = import_official(args.official)
    commit = official_commit(args.official, args.official_commit)
    print(f"official APS code: {args.official} at commit {commit}; timm {timm.__version__}, torch {torch.__version__}")
    failed = False
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            result = run_case(official, name, Path(tmp))
            results[name] = result
            print(f"\n== {name}: {result['describe'].splitlines()[2].strip()}")
            print(f"   exported: model = {result['timm_call'].split('= ', 1)[1][:160]}...")
            print(f"   {'compared output':<20} {'max |ours - official|':>22}   (outputs up to {result['scale']:.2f})")
            for label, diff in result["diffs"].items():
                ok = diff <= TOLERANCE
                failed |= not ok
                print(f"   {label:<20} {diff:>22.3e}   {'ok' if ok else 'FAIL'}")
            control_ok = result["control"] > CONTROL_MIN
            failed |= not control_ok
            print(f"   {'control: eps 1e-6':<20} {result['control']:>22.3e}   "
                  f"{'differs, as it must' if control_ok else 'FAIL: the eps is not visible'}")
    if args.write_fixture is not None:
        if "fixture" not in results:
            parser.error("--write-fixture needs the fixture case")
        content = dict(results["fixture"]["fixture"])
        img, patch, dim, depth, heads, (out_dim, hidden), classes, batch = CASES["fixture"]
        content["settings"] = {"img_size": img, "patch_size": patch, "embed_dim": dim, "depth": depth,
                               "num_heads": heads, "proj_dim": out_dim, "hidden_dim": hidden, "classes": classes,
                               "batch": batch, "seed": SEED}
        content["official"] = {"repository": "github.com/visresearch/aps", "commit": commit,
                               "timm": str(timm.__version__), "torch": str(torch.__version__)}
        args.write_fixture.parent.mkdir(parents=True, exist_ok=True)
        torch.save(content, args.write_fixture)
        print(f"\nwrote {args.write_fixture}")
    print("\nPASS" if not failed else "\nFAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
