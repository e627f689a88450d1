"""Proof that official DINO and SelfPatch checkpoints load into our timm ViTs and compute the official features.

What it proves, with random weights in the OFFICIAL model classes (github.com/facebookresearch/dino:
``vision_transformer.py``, ``utils.MultiCropWrapper``; github.com/alinlab/SelfPatch:
``selfpatch_vision_transformer.py``, ``main_selfpatch.MultiCropWrapper``), for DINO's ViT-S/16 (224 px, 6 heads)
and a tiny ViT (32-d, 2 blocks, 2 heads, 32-px images, 8-px patches: the CI fixture):

DINO
* a training checkpoint saved as ``main_dino.py`` saves it (``{student (DDP: module.backbone.*, module.head.*),
  teacher (backbone.*, head.*), optimizer, epoch, args (argparse.Namespace), dino_loss}``), loaded with
  ``patchmix.weights.load_weights`` and built with ``build_model``, gives the official teacher's CLS output
  (``model(x)`` of DINO's ViT: CLS token after the final norm), and with ``checkpoint_key="student"`` the
  student's; for ViT-S the 6 heads come from ``args.arch`` (no ``--num-heads``);
* a backbone-only file (the teacher's ViT state dict, as DINO releases them, named like the release:
  ``dino_deitsmall16_pretrain.pth``) gives the same output, by path (the ``dino_*`` name rule) and, for ViT-S,
  by the registry name ``dino-imagenet-vit-small-pretrain`` found in a weights folder;
* ``python -m patchmix.weights export`` of the training checkpoint, loaded with exactly the
  ``timm.create_model(...)`` call it prints, gives the same output.

SelfPatch
* a training checkpoint saved as ``main_selfpatch.py`` saves it (``student``/``teacher`` with ``backbone.*``,
  ``ca_head.*`` (the SelfPatch head), ``c_head.*``, ``p_head.*``) gives, through our loader, the official
  image-level vector: ``ca_head(backbone(x))[:, 0]``, the token its DINO loss trains (teacher by default, student
  with ``checkpoint_key="student"``); so does the teacher's state dict on its own;
* the exported CaiT form, built with the printed timm call, gives the same vector;
* our ``SelfPatchHead.aggregate_neighbours`` gives the official teacher's patch-level aggregation
  (``ca_head(x, loc=True)[:, 1:]``: per patch, the top-k of its 8 neighbours) on 14x14 and 6x6 grids.

Controls (must differ, so the comparisons can see them): the same tensors with another head count (ViT-S: 12,
PatchMix's; tiny: 1), and with LayerNorm eps 1e-5. For information, the largest difference at another resolution
than the native one is printed too: DINO resamples the position table with its ``+0.1`` bicubic interpolation,
timm (ours) with its own; that row is not a pass/fail check.

It prints tables of the largest absolute differences and exits with status 1 when one exceeds ``TOLERANCE``
(or a control does not exceed ``CONTROL_MIN``).

How to run (a CPU is enough, about a minute; the official code needs torchvision and PIL, nothing else)::

    git clone https://github.com/facebookresearch/dino /path/to/dino
    git clone https://github.com/alinlab/SelfPatch /path/to/SelfPatch
    python tools/parity/dino_weights.py --official-dino /path/to/dino --official-selfpatch /path/to/SelfPatch
    # and to refresh the CI fixture that tests/test_dino_weights.py compares against:
    python tools/parity/dino_weights.py --official-dino /path/to/dino --official-selfpatch /path/to/SelfPatch \\
        --write-fixture tests/fixtures/dino_weights.pth

Nothing of the official code is patched. Both checkouts have a top-level ``utils`` module: each is imported with
its own checkout first on ``sys.path`` and its ``utils`` removed from ``sys.modules`` afterwards. DDP's
``module.`` prefix of the student is produced by holding the student as the ``module`` attribute of an empty
module (no process group is needed for the key names).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import textwrap
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.weights import build_model, load_weights  # noqa: E402

TOLERANCE = 1e-5    # largest absolute difference allowed on features of magnitude ~1
CONTROL_MIN = 1e-4  # a control must differ by more than this
SEED = 0

# name: (arch of the official factory or None for a custom size, image size, patch, width, depth, heads, batch,
#        other resolution for the information row)
CASES = {
    "vit_small": ("vit_small", 224, 16, 384, 12, 6, 2, 160),
    "fixture": (None, 32, 8, 32, 2, 2, 4, 48),
}
# The projection heads are kept small (their size changes nothing the loader keeps).
HEAD_SIZES = {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16}
K_NUM = 4  # SelfPatch's k (neighbours aggregated per patch), its default


def import_checkout(path: Path, names: list[str]) -> dict:
    """Import ``names`` from one official checkout, with its own top-level ``utils``."""
    saved = sys.modules.pop("utils", None)
    sys.path.insert(0, str(path))
    try:
        return {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(path))
        sys.modules.pop("utils", None)
        if saved is not None:
            sys.modules["utils"] = saved


def official_commit(path: Path, given: str) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --official-*-commit)"


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> None:
    """Random weights everywhere: LayerNorm gains near 1, matrices of unit-scale outputs, small patch embedding,
    position table and tokens (so the first LayerNorms see a small variance and their eps matters)."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=generator)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * noise)
        elif p.ndim == 2:
            p.copy_(noise / p.shape[1] ** 0.5)
        else:
            p.copy_(0.02 * noise)


def official_vit(module, case: str) -> nn.Module:
    """The official ViT of a case: the named factory (``vit_small``) or the class with DINO's settings."""
    arch, img, patch, dim, depth, heads, _, _ = CASES[case]
    if arch is not None:
        return getattr(module, arch)(patch_size=patch)
    return module.VisionTransformer(img_size=[img], patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                                    mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))


class Holder(nn.Module):
    """Stands for DistributedDataParallel in ``state_dict()``: the wrapped model under ``module.``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def dino_args(case: str, method: str) -> argparse.Namespace:
    """The ``args`` entry of the training checkpoint (the fields the loader reads, and a few others)."""
    arch, _, patch, *_ = CASES[case]
    args = argparse.Namespace(arch=arch or "vit_small", patch_size=patch, out_dim=HEAD_SIZES["out_dim"],
                              norm_last_layer=True, momentum_teacher=0.996, use_fp16=False, epochs=100,
                              data_path="/path/to/imagenet/train", output_dir=".")
    if method == "selfpatch":
        args.k_num, args.out_dim_selfpatch = K_NUM, HEAD_SIZES["out_dim"]
    return args


def exported_timm_model(source: Path, out: Path, extra: list[str]) -> tuple[nn.Module, str]:
    """Run ``python -m patchmix.weights export`` and build the model with the timm call it prints."""
    result = subprocess.run([sys.executable, "-m", "patchmix.weights", "export", str(source), "--out", str(out),
                             *extra], cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    printed = result.stdout.split("load it with timm (CLS-token features, ImageNet normalisation):\n", 1)[1]
    code = textwrap.dedent(printed)
    namespace: dict = {}
    exec(code, namespace)  # the printed lines: "import timm" and "model = timm.create_model(...)"
    return namespace["model"].eval(), code.strip().splitlines()[-1]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def ours(source: Path | str, case: str, **kwargs) -> tuple[nn.Module, object]:
    heads = {} if CASES[case][0] else {"num_heads": CASES[case][5]}
    loaded = load_weights(str(source), **{**heads, **kwargs})
    return build_model(loaded).eval(), loaded


def control(loaded, images: torch.Tensor, **changes) -> torch.Tensor:
    """The same tensors in a ViT built with other options (head count, eps)."""
    loaded.backbone.update(changes)
    return build_model(loaded).eval()(images)


@torch.no_grad()
def run_dino(official: dict, case: str, workdir: Path) -> dict:
    vits, utils = official["vision_transformer"], official["utils"]
    arch, img, patch, dim, depth, heads, batch, other = CASES[case]
    torch.manual_seed(SEED)
    student = utils.MultiCropWrapper(official_vit(vits, case), vits.DINOHead(dim, **HEAD_SIZES))
    teacher = utils.MultiCropWrapper(official_vit(vits, case), vits.DINOHead(dim, **HEAD_SIZES))
    randomise(student, SEED)
    randomise(teacher, SEED + 1)
    student.eval(), teacher.eval()
    images = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(SEED + 2))
    teacher_cls, student_cls = teacher.backbone(images), student.backbone(images)

    checkpoint = workdir / f"dino_{case}_checkpoint.pth"
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    torch.save({"student": Holder(student).state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": 100, "args": dino_args(case, "dino"),
                "dino_loss": {"center": torch.zeros(1, HEAD_SIZES["out_dim"])}}, checkpoint)
    backbone_name = f"dino_deit{arch[4:]}{patch}_pretrain.pth" if arch else f"dino_{case}_backbone.pth"
    backbone_file = workdir / backbone_name
    torch.save(teacher.backbone.state_dict(), backbone_file)

    diffs, notes = {}, {}
    model, loaded = ours(checkpoint, case)
    assert loaded.method == "dino" and loaded.encoder == "teacher" and loaded.backbone["num_heads"] == heads
    assert arch is None or not loaded.heads_guessed, loaded.describe()
    notes["checkpoint"] = loaded.describe()
    diffs["checkpoint, teacher CLS"] = max_diff(model(images), teacher_cls)
    model_s, _ = ours(checkpoint, case, checkpoint_key="student")
    diffs["checkpoint, student CLS"] = max_diff(model_s(images), student_cls)
    model_b, loaded_b = ours(backbone_file, case)
    assert loaded_b.method == "dino" and loaded_b.backbone["num_heads"] == heads, loaded_b.describe()
    notes["backbone file"] = loaded_b.describe()
    diffs["backbone file CLS"] = max_diff(model_b(images), teacher_cls)
    if arch == "vit_small" and patch == 16 and img == 224:
        weights = workdir / "weights" / "dino"
        weights.mkdir(parents=True, exist_ok=True)
        (weights / backbone_name).write_bytes(backbone_file.read_bytes())
        loaded_r = load_weights("dino-imagenet-vit-small-pretrain", weights_dir=weights.parent)
        assert not loaded_r.heads_guessed and loaded_r.backbone["num_heads"] == 6, loaded_r.describe()
        diffs["registry name CLS"] = max_diff(build_model(loaded_r).eval()(images), teacher_cls)
    timm_model, call = exported_timm_model(checkpoint, workdir / f"dino_{case}_export",
                                           [] if arch else ["--num-heads", str(heads)])
    diffs["exported timm CLS"] = max_diff(timm_model(images), teacher_cls)

    controls = {f"{12 if arch else 1} heads": max_diff(control(ours(checkpoint, case)[1], images,
                                                              num_heads=12 if arch else 1), teacher_cls),
                "LayerNorm eps 1e-5": max_diff(control(ours(checkpoint, case)[1], images, norm_eps=1e-5),
                                               teacher_cls)}
    larger = torch.randn(batch, 3, other, other, generator=torch.Generator().manual_seed(SEED + 3))
    info = {f"{other}-px input": max_diff(model(larger), teacher.backbone(larger))}
    fixture = {"student": Holder(student).state_dict(), "teacher": teacher.state_dict(), "images": images,
               "teacher_cls": teacher_cls, "student_cls": student_cls}
    return {"diffs": diffs, "controls": controls, "info": info, "call": call, "notes": notes,
            "scale": float(teacher_cls.abs().max()), "fixture": fixture}


@torch.no_grad()
def run_selfpatch(official: dict, case: str, workdir: Path) -> dict:
    vits, main = official["selfpatch_vision_transformer"], official["main_selfpatch"]
    arch, img, patch, dim, depth, heads, batch, other = CASES[case]
    torch.manual_seed(SEED)

    def wrapper() -> nn.Module:
        return main.MultiCropWrapper(official_vit(vits, case), vits.SelfPatchHead(dim, heads, K_NUM),
                                     vits.DINOHead(dim, **HEAD_SIZES), vits.DINOHead(dim, **HEAD_SIZES))

    student, teacher = wrapper(), wrapper()
    randomise(student, SEED + 10)
    randomise(teacher, SEED + 11)
    student.eval(), teacher.eval()
    images = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(SEED + 12))

    def vector(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.ca_head(model.backbone(x), False)[:, 0]  # the image-level token fed to c_head

    teacher_vec, student_vec = vector(teacher, images), vector(student, images)
    checkpoint = workdir / f"selfpatch_{case}_checkpoint.pth"
    torch.save({"student": Holder(student).state_dict(), "teacher": teacher.state_dict(), "optimizer": {},
                "epoch": 100, "args": dino_args(case, "selfpatch"),
                "dino_loss": {"center": torch.zeros(1, 1, HEAD_SIZES["out_dim"]),
                              "patch_center": torch.zeros(1, HEAD_SIZES["out_dim"])}}, checkpoint)
    teacher_file = workdir / f"selfpatch_{case}_teacher.pth"
    torch.save(teacher.state_dict(), teacher_file)

    diffs, notes = {}, {}
    model, loaded = ours(checkpoint, case)
    assert loaded.method == "selfpatch" and loaded.encoder == "teacher", loaded.describe()
    assert loaded.backbone["num_heads"] == heads and loaded.backbone["selfpatch_head"] is True
    notes["checkpoint"] = loaded.describe()
    diffs["checkpoint, teacher vector"] = max_diff(model(images), teacher_vec)
    diffs["checkpoint, student vector"] = max_diff(ours(checkpoint, case, checkpoint_key="student")[0](images),
                                                   student_vec)
    diffs["teacher state dict vector"] = max_diff(ours(teacher_file, case)[0](images), teacher_vec)
    timm_model, call = exported_timm_model(checkpoint, workdir / f"selfpatch_{case}_export",
                                           [] if arch else ["--num-heads", str(heads)])
    diffs["exported timm CaiT vector"] = max_diff(timm_model(images), teacher_vec)

    # Patch-level aggregation (the teacher's targets): the official head asks for 14x14 or 6x6 grids.
    generator = torch.Generator().manual_seed(SEED + 13)
    tokens = {grid: torch.randn(2, grid * grid, dim, generator=generator) for grid in (14, 6)}
    local = {grid: teacher.ca_head(t, True) for grid, t in tokens.items()}
    for grid, t in tokens.items():
        diffs[f"patch aggregation {grid}x{grid}"] = max_diff(model.ca_head.aggregate_neighbours(t, K_NUM),
                                                            local[grid][:, 1:])
        diffs[f"image vector, loc=True {grid}x{grid}"] = max_diff(model.ca_head(t), local[grid][:, 0])

    controls = {f"{12 if arch else 1} heads": max_diff(control(ours(checkpoint, case)[1], images,
                                                              num_heads=12 if arch else 1), teacher_vec),
                "LayerNorm eps 1e-5": max_diff(control(ours(checkpoint, case)[1], images, norm_eps=1e-5),
                                               teacher_vec)}
    larger = torch.randn(batch, 3, other, other, generator=torch.Generator().manual_seed(SEED + 14))
    info = {f"{other}-px input": max_diff(model(larger), vector(teacher, larger))}
    fixture = {"student": Holder(student).state_dict(), "teacher": teacher.state_dict(), "images": images,
               "teacher_vector": teacher_vec, "student_vector": student_vec, "tokens": tokens[6],
               "local": local[6]}
    return {"diffs": diffs, "controls": controls, "info": info, "call": call, "notes": notes,
            "scale": float(teacher_vec.abs().max()), "fixture": fixture}


def report(title: str, result: dict) -> bool:
    print(f"\n== {title}")
    for label, text in result["notes"].items():
        print(f"   {label}: " + "\n   ".join(text.splitlines()[1:3]))
    print(f"   exported: {result['call'].split('= ', 1)[1][:150]}...")
    print(f"   {'compared output':<34} {'max |ours - official|':>22}   (outputs up to {result['scale']:.2f})")
    failed = False
    for label, diff in result["diffs"].items():
        ok = diff <= TOLERANCE
        failed |= not ok
        print(f"   {label:<34} {diff:>22.3e}   {'ok' if ok else 'FAIL'}")
    for label, diff in result["controls"].items():
        ok = diff > CONTROL_MIN
        failed |= not ok
        print(f"   {'control: ' + label:<34} {diff:>22.3e}   {'differs, as it must' if ok else 'FAIL: not visible'}")
    for label, diff in result["info"].items():
        print(f"   {'info: ' + label:<34} {diff:>22.3e}   (position table: DINO's +0.1 bicubic vs timm's)")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-dino", required=True, type=Path, help="checkout of facebookresearch/dino")
    parser.add_argument("--official-selfpatch", required=True, type=Path, help="checkout of alinlab/SelfPatch")
    parser.add_argument("--official-dino-commit", default="", help="its commit (read with git in a checkout)")
    parser.add_argument("--official-selfpatch-commit", default="", help="its commit (read with git in a checkout)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--write-fixture", type=Path, default=None,
                        help="write the tiny case's official state dicts, images and outputs here (.pth)")
    args = parser.parse_args(argv)
    import timm
    dino = import_checkout(args.official_dino, ["vision_transformer", "utils"])
    selfpatch = import_checkout(args.official_selfpatch, ["selfpatch_vision_transformer", "utils", "main_selfpatch"])
    commits = {"dino": official_commit(args.official_dino, args.official_dino_commit),
               "selfpatch": official_commit(args.official_selfpatch, args.official_selfpatch_commit)}
    print(f"official DINO code: {args.official_dino} at commit {commits['dino']}")
    print(f"official SelfPatch code: {args.official_selfpatch} at commit {commits['selfpatch']}")
    print(f"timm {timm.__version__}, torch {torch.__version__}")
    failed = False
    fixture = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for method, run, label in (("dino", run_dino, "DINO"), ("selfpatch", run_selfpatch, "SelfPatch")):
                result = run(dino if method == "dino" else selfpatch, case, Path(tmp))
                failed |= report(f"{label}, {case}", result)
                if case == "fixture":
                    fixture[method] = result["fixture"]
    if args.write_fixture is not None:
        if not fixture:
            parser.error("--write-fixture needs the fixture case")
        _, img, patch, dim, depth, heads, batch, _ = CASES["fixture"]
        content = dict(fixture)
        content["settings"] = {"img_size": img, "patch_size": patch, "embed_dim": dim, "depth": depth,
                               "num_heads": heads, "batch": batch, "k_num": K_NUM, "seed": SEED, **HEAD_SIZES}
        content["official"] = {"dino": {"repository": "github.com/facebookresearch/dino", "commit": commits["dino"]},
                               "selfpatch": {"repository": "github.com/alinlab/SelfPatch",
                                             "commit": commits["selfpatch"]},
                               "timm": str(timm.__version__), "torch": str(torch.__version__)}
        args.write_fixture.parent.mkdir(parents=True, exist_ok=True)
        torch.save(content, args.write_fixture)
        print(f"\nwrote {args.write_fixture}")
    print("\nPASS" if not failed else "\nFAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
