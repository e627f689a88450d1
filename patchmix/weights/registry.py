"""The released weights by name: PatchMix (Hugging Face repo visresearch/PatchMix; spec 6.4), APS
(visresearch/aps; spec 8), DINO (dl.fbaipublicfiles.com, facebookresearch/dino README) and SelfPatch (a Google
Drive link of the alinlab/SelfPatch README; spec 9).

One table of the released files, what each is, the reported number for it and the documented oddities of the
release. It needs no file and no network, so ``list``, name look-ups and the torch.hub entries start from here;
:mod:`patchmix.weights.fetch` turns an entry into a local file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from patchmix.models import ARCHS
from patchmix.weights.errors import WeightsError

REPO_ID = "visresearch/PatchMix"
APS_REPO_ID = "visresearch/aps"
_HUB_URL = "https://huggingface.co/{repo}/resolve/{revision}/{path}"
_TREE_URL = "https://huggingface.co/{repo}/tree/{revision}"

# The build_backbone options of each method's ViT (empty: the defaults, PatchMix's). APS's ViT is built from
# timm 0.6.11 Blocks: no qkv bias, LayerNorm eps 1e-5, and a position table of the patch tokens only. DINO's ViT
# (its vision_transformer.py) is timm's: qkv bias, eps 1e-6, CLS token with a position. SelfPatch's is DINO's
# without the CLS token and the final LayerNorm, plus the SelfPatch head that forms the image vector.
METHOD_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "patchmix": {},
    "aps": {"qkv_bias": False, "norm_eps": 1e-5, "pos_embed_cls": False},
    "dino": {},
    "selfpatch": {"selfpatch_head": True},
}

# Attention heads of the official code of each method (not stored in any file). APS's ViT-S has 6 heads
# (its main_finetune.py), PatchMix's 12; DINO's vit_small has 6 (its vision_transformer.py), and SelfPatch builds
# DINO's ViTs (its head has the backbone's head count).
_DEIT_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12}
METHOD_HEADS: dict[str, dict[str, int]] = {
    "patchmix": {arch: spec.num_heads for arch, spec in ARCHS.items()},
    "aps": dict(_DEIT_HEADS),
    "dino": dict(_DEIT_HEADS),
    "selfpatch": dict(_DEIT_HEADS),
}

METHOD_LABELS = {"patchmix": "PatchMix", "aps": "APS", "dino": "DINO", "selfpatch": "SelfPatch"}


@dataclass(frozen=True)
class ReleasedWeights:
    """One released file: what it is, the reported number for it and where it lives: a path in a Hugging Face
    repository (PatchMix), a direct download URL (``download_url``: DINO), or only a web page to download it
    from by hand (``page_url``: SelfPatch's Google Drive link; no ``path`` at all: APS)."""

    name: str          # registry name, e.g. "cifar10-vit-tiny-pretrain"
    dataset: str       # cifar10 / cifar100 / imagenet (our dataset names)
    arch: str          # vit_tiny / vit_small / vit_base
    patch_size: int
    img_size: int
    epochs: int        # pretraining epochs (0: not stated where the file is published)
    protocol: str      # pretrain / linear / finetune
    top1: float | None  # reported top-1 (kNN for pretraining files; see `metric`); None: the authors report none
    path: str          # path inside the hub repo ("" when the authors did not publish it)
    note: str = ""
    repo_id: str = REPO_ID
    revision: str = "main"
    method: str = "patchmix"   # the method that trained it: patchmix / aps / dino / selfpatch
    top1_metric: str = ""      # what top1 measures, when it is not the protocol's own metric
    download_url: str = ""     # a direct download URL (files not on the Hugging Face hub)
    page_url: str = ""         # a page to download the file from by hand (no direct URL published)
    reported: tuple[tuple[str, float], ...] = ()  # other reported numbers: (what, value)

    @property
    def published(self) -> bool:
        """Whether the file can be downloaded by name (a hub path or a direct URL is known)."""
        return bool(self.path or self.download_url)

    @property
    def url(self) -> str:
        """The file's download URL, else the page to download it from by hand (the repository's file list when
        its hub path was not published)."""
        if self.download_url:
            return self.download_url
        if self.page_url:
            return self.page_url
        if not self.path:
            return _TREE_URL.format(repo=self.repo_id, revision=self.revision)
        return _HUB_URL.format(repo=self.repo_id, revision=self.revision, path=self.path)

    @property
    def by_hand_reason(self) -> str:
        """Why an unpublished entry cannot be downloaded by name."""
        if self.page_url:
            return "the authors link it only as a web page (a Google Drive view link), not as a direct download"
        return "the authors' README names no file in their Hugging Face repository"

    @property
    def local_paths(self) -> tuple[str, str]:
        """Where a hand-downloaded copy is looked for, relative to the weights folder."""
        if self.path:
            return self.path, self.path.rsplit("/", 1)[-1]
        if self.download_url:
            file_name = self.download_url.rsplit("/", 1)[-1]
            return f"{self.method}/{file_name}", file_name
        return f"{self.method}/{self.name}.pth", f"{self.name}.pth"

    @property
    def label(self) -> str:
        """The method's name as written (PatchMix, APS, DINO, SelfPatch)."""
        return METHOD_LABELS.get(self.method, self.method)

    def numbers(self) -> str:
        """The reported numbers in words: ``kNN top-1 74.5, linear top-1 77.0``."""
        parts = [f"{self.metric} top-1 {self.top1:.1f}"] if self.top1 is not None else []
        parts += [f"{what} {value:.1f}" for what, value in self.reported]
        return ", ".join(parts) or "no number reported"

    @property
    def metric(self) -> str:
        if self.top1_metric:
            return self.top1_metric
        return {"pretrain": "kNN", "linear": "linear", "finetune": "fine-tune"}[self.protocol]

    @property
    def num_heads(self) -> int:
        return METHOD_HEADS[self.method][self.arch]

    def backbone_kwargs(self) -> dict[str, Any]:
        spec = ARCHS[self.arch]
        return {"arch": self.arch, "img_size": self.img_size, "patch_size": self.patch_size,
                "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": self.num_heads,
                **METHOD_BACKBONE_OPTIONS[self.method]}


_FILE_NAME_NOTE = ("the file name says 84.6, the README table and the paper (Table 3) say 84.9; this entry "
                   "reports 84.9")
_C100_BASE_NOTE = ("README quirk: its link for this model points at the ViT-T file "
                   "finetune/cifar100/vit-tiny-800-84.6.pth; this path follows the older OneDrive name "
                   "(vit-base-800-86.0.pth) and was not verified on the hub. If the download gives a 404, the file "
                   "is not released there; if the loader reports a 192-d ViT, you got the ViT-T file")
_TINY_NOTE = "official ViT-T recipe trains without a momentum encoder: kNN/linear/fine-tune use base_encoder"

# (dataset, arch, patch, img, epochs, hub folder name per protocol, {protocol: (file stem, top1, note)})
_TABLE: list[tuple[str, str, int, int, int, dict[str, tuple[str, float, str]]]] = [
    ("imagenet", "vit_small", 16, 224, 300, {
        "finetune": ("finetune/imagenet-1k/vit-small-300-82.8.pth", 82.8, ""),
        "linear": ("linear/imagenet1k/vit-small-300-77.4.pth", 77.4, ""),
        "pretrain": ("pretrain/imagenet1k/vit-small-300-73.3.pth", 73.3, "")}),
    ("imagenet", "vit_base", 16, 224, 300, {
        "finetune": ("finetune/imagenet-1k/vit-base-300-84.1.pth", 84.1, ""),
        "linear": ("linear/imagenet1k/vit-base-300-80.2.pth", 80.2, ""),
        "pretrain": ("pretrain/imagenet1k/vit-base-300-76.2.pth", 76.2, "")}),
    ("cifar10", "vit_tiny", 2, 32, 800, {
        "finetune": ("finetune/cifar10/vit-tiny-800-97.5.pth", 97.5, ""),
        "linear": ("linear/cifar10/vit-tiny-800-94.4.pth", 94.4, ""),
        "pretrain": ("pretrain/cifar10/vit-tiny-800-92.9.pth", 92.9, _TINY_NOTE)}),
    ("cifar10", "vit_small", 2, 32, 800, {
        "finetune": ("finetune/cifar10/vit-small-800-98.1.pth", 98.1, ""),
        "linear": ("linear/cifar10/vit-small-800-96.0.pth", 96.0, ""),
        "pretrain": ("pretrain/cifar10/vit-small-800-94.6.pth", 94.6, "")}),
    ("cifar10", "vit_base", 2, 32, 800, {
        "finetune": ("finetune/cifar10/vit-base-800-98.3.pth", 98.3, ""),
        "linear": ("linear/cifar10/vit-base-800-96.6.pth", 96.6, ""),
        "pretrain": ("pretrain/cifar10/vit-base-800-95.8.pth", 95.8, "")}),
    ("cifar100", "vit_tiny", 2, 32, 800, {
        "finetune": ("finetune/cifar100/vit-tiny-800-84.6.pth", 84.9, _FILE_NAME_NOTE),
        "linear": ("linear/cifar100/vit-tiny-800-74.7.pth", 74.7, ""),
        "pretrain": ("pretrain/cifar100/vit-tiny-800-68.8.pth", 68.8, _TINY_NOTE)}),
    ("cifar100", "vit_small", 2, 32, 800, {
        "finetune": ("finetune/cifar100/vit-small-800-86.0.pth", 86.0, ""),
        "linear": ("linear/cifar100/vit-small-800-78.7.pth", 78.7, ""),
        "pretrain": ("pretrain/cifar100/vit-small-800-75.4.pth", 75.4, "")}),
    ("cifar100", "vit_base", 2, 32, 800, {
        "finetune": ("finetune/cifar100/vit-base-800-86.0.pth", 86.0, _C100_BASE_NOTE),
        "linear": ("linear/cifar100/vit-base-800-79.7.pth", 79.7, ""),
        "pretrain": ("pretrain/cifar100/vit-base-800-75.7.pth", 75.7, "")}),
]


def _build_registry() -> dict[str, ReleasedWeights]:
    registry: dict[str, ReleasedWeights] = {}
    for dataset, arch, patch, img, epochs, files in _TABLE:
        for protocol in ("pretrain", "linear", "finetune"):
            path, top1, note = files[protocol]
            name = f"{dataset}-{arch.replace('_', '-')}-{protocol}"
            registry[name] = ReleasedWeights(name, dataset, arch, patch, img, epochs, protocol, top1, path, note)
    return registry


# APS (spec 8): the README's "Main Results" table gives fine-tuning top-1 on CIFAR for ViT-T/2, ViT-S/2 and
# ViT-B/2 after 1600 and 3200 pretraining epochs (100 fine-tuning epochs), and links the Hugging Face repository
# visresearch/aps as a whole ([Model] -> /tree/main), naming no file in it. Its previous version (before commit
# f02380e, "update model link") linked a pretraining and a fine-tuned download for every cell of that table.
# So every cell has a pretraining and a fine-tuning entry here, without a hub path (path="").
_APS_SOURCE = "README 'Main Results' ({dataset}, {epochs} epochs, ViT-{size}/2): fine-tune top-1 after 100 epochs"
_APS_PATH_NOTE = ("the APS README names no file in its Hugging Face repository: download this file by hand from "
                  "https://huggingface.co/visresearch/aps/tree/main")
_APS_TABLE: list[tuple[str, int, dict[str, float]]] = [
    ("cifar10", 1600, {"vit_tiny": 97.2, "vit_small": 98.1, "vit_base": 98.2}),
    ("cifar10", 3200, {"vit_tiny": 97.5, "vit_small": 98.2, "vit_base": 98.3}),
    ("cifar100", 1600, {"vit_tiny": 83.4, "vit_small": 84.9, "vit_base": 85.9}),
    ("cifar100", 3200, {"vit_tiny": 83.4, "vit_small": 85.3, "vit_base": 86.0}),
]


def _build_aps_registry() -> dict[str, ReleasedWeights]:
    registry: dict[str, ReleasedWeights] = {}
    names = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
    for dataset, epochs, numbers in _APS_TABLE:
        for arch, top1 in numbers.items():
            size = {"vit_tiny": "Tiny", "vit_small": "Small", "vit_base": "Base"}[arch]
            source = _APS_SOURCE.format(dataset=names[dataset], epochs=epochs, size=size)
            for protocol in ("pretrain", "finetune"):
                name = f"aps-{dataset}-{arch.replace('_', '-')}-{epochs}-{protocol}"
                metric = "fine-tune (of this file)" if protocol == "pretrain" else ""
                registry[name] = ReleasedWeights(name, dataset, arch, 2, 32, epochs, protocol, top1, "",
                                                 f"{source}; {_APS_PATH_NOTE}", APS_REPO_ID, "main", "aps", metric)
    return registry


# DINO (facebookresearch/dino README, "Pretrained models" table): the backbone-only files (the teacher's ViT, a
# plain timm-named state dict) on dl.fbaipublicfiles.com, with the table's ImageNet-1k top-1 of the weighted k-NN
# (eval_knn.py, temperature 0.07; the number of each entry) and of DINO's linear protocol (eval_linear.py). The
# README does not state the training epochs (its args.txt files do): epochs 0 here.
DINO_URL = "https://dl.fbaipublicfiles.com/dino/{folder}/{folder}.pth"
_DINO_SOURCE = "facebookresearch/dino README, 'Pretrained models' table (ImageNet-1k val): k-NN {knn}, linear {linear}"
_DINO_LINEAR = {"vit_small": "the CLS tokens of the last 4 blocks concatenated",
                "vit_base": "the last block's CLS token and mean patch token concatenated"}
_DINO_TABLE: list[tuple[str, str, int, str, float, float]] = [  # name, arch, patch, folder, k-NN, linear
    ("dino-imagenet-vit-small-pretrain", "vit_small", 16, "dino_deitsmall16_pretrain", 74.5, 77.0),
    ("dino-imagenet-vit-small-p8-pretrain", "vit_small", 8, "dino_deitsmall8_pretrain", 78.3, 79.7),
    ("dino-imagenet-vit-base-pretrain", "vit_base", 16, "dino_vitbase16_pretrain", 76.1, 78.2),
    ("dino-imagenet-vit-base-p8-pretrain", "vit_base", 8, "dino_vitbase8_pretrain", 77.4, 80.1),
]


def _build_dino_registry() -> dict[str, ReleasedWeights]:
    registry: dict[str, ReleasedWeights] = {}
    for name, arch, patch, folder, knn, linear in _DINO_TABLE:
        note = (_DINO_SOURCE.format(knn=knn, linear=linear) + f"; the linear number is DINO's protocol on "
                f"{_DINO_LINEAR[arch]}, not main_linear.py's probe of the last CLS token")
        registry[name] = ReleasedWeights(name, "imagenet", arch, patch, 224, 0, "pretrain", knn, "", note, "", "",
                                         "dino", download_url=DINO_URL.format(folder=folder),
                                         reported=(("linear top-1", linear),))
    return registry


# SelfPatch (alinlab/SelfPatch README, "Pretrained weights on ImageNet": DINO + SelfPatch, ViT-S/16), linked as a
# Google Drive view page (no direct download). The authors report no ImageNet classification number for it; their
# detection and segmentation READMEs report the models fine-tuned from it.
SELFPATCH_PAGE = "https://drive.google.com/file/d/19eeQrK-nl4B9ksFQ_QnewGHVKYDQF4Yw/view?usp=sharing"
_SELFPATCH_NOTE = ("alinlab/SelfPatch README, 'Pretrained weights on ImageNet' (DINO + SelfPatch, ViT-S/16); no "
                   "ImageNet kNN / linear number is reported. Downstream numbers (fine-tuned from this file): "
                   "detection/README.md (COCO, Mask R-CNN 1x) and segmentation/README.md (ADE20K)")


def _build_selfpatch_registry() -> dict[str, ReleasedWeights]:
    name = "selfpatch-imagenet-vit-small-pretrain"
    reported = (("COCO Mask R-CNN 1x box AP", 42.1), ("COCO Mask R-CNN 1x mask AP", 38.5),
                ("ADE20K Semantic FPN 40k mIoU", 41.2), ("ADE20K UperNet 160k mIoU", 43.2))
    return {name: ReleasedWeights(name, "imagenet", "vit_small", 16, 224, 0, "pretrain", None, "", _SELFPATCH_NOTE,
                                  "", "", "selfpatch", page_url=SELFPATCH_PAGE, reported=reported)}


RELEASED: dict[str, ReleasedWeights] = {**_build_registry(), **_build_aps_registry(), **_build_dino_registry(),
                                        **_build_selfpatch_registry()}

# Documented oddities of the release (README vs files), printed under `list`.
QUIRKS = (
    "Pretraining files are evaluated with kNN (the number shown); the same file is the starting point of the "
    "linear and fine-tuning protocols.",
    "cifar100-vit-tiny-finetune: " + _FILE_NAME_NOTE + ".",
    "cifar100-vit-base-finetune: " + _C100_BASE_NOTE + ".",
    "Folder spelling: finetune/imagenet-1k/ but linear/imagenet1k/ and pretrain/imagenet1k/ (as released).",
    "ViT-S uses 12 attention heads in every released file (the paper's Table 8 says 6): build ViT-S with "
    "num_heads=12.",
    "The official linear / fine-tune best.pth files are whole pickled modules: they are read with a restricted "
    "unpickler (no code runs); --allow-pickle is needed only if that fails.",
)

APS_QUIRKS = (
    "Numbers: fine-tuning top-1 of the APS README's 'Main Results' table (100 fine-tuning epochs; the official "
    "script reports the best epoch); a pretraining entry shows the number of the model fine-tuned from it. APS "
    "reports no kNN or linear numbers.",
    "The APS README links the Hugging Face repository (https://huggingface.co/visresearch/aps/tree/main) but "
    "names no file in it, so these entries have no hub path and are not downloaded: download the file by hand "
    "and put it at <weights dir>/aps/<name>.pth (or <weights dir>/<name>.pth; --weights-dir or "
    "$PATCHMIX_WEIGHTS_DIR), or pass its path or URL to --pretrained-weights.",
    "APS's ViT: no qkv bias, LayerNorm eps 1e-5, no position for the CLS token; ViT-S has 6 attention heads "
    "(PatchMix's 12). Pretraining files are raw state dicts (base_encoder.*, predictor.*); fine-tuned files are "
    "whole pickled module.model.Vit modules (read without running code).",
)


DINO_QUIRKS = (
    "Numbers: the DINO README's 'Pretrained models' table (ImageNet-1k val top-1). k-NN is eval_knn.py's weighted "
    "k-NN on the teacher's CLS token (temperature 0.07; the paper reports k = 20), as main_knn.py computes it. "
    "Linear is DINO's eval_linear.py: ViT-S on the CLS tokens of the last 4 blocks concatenated, ViT-B on the "
    "last CLS token and the mean patch token; main_linear.py probes the last CLS token only, so expect lower "
    "numbers from it. Not re-measured here.",
    "Files: the backbone-only downloads (the teacher's ViT; timm's key names), fetched once with torch.hub into "
    "its cache; a copy at <weights dir>/dino/<file name> or <weights dir>/<file name> is used without download.",
    "DINO's vit_small has 6 attention heads (PatchMix's 12); the files do not say it. By name, or by the file "
    "name dino_*.pth, DINO's counts are used; the full training checkpoints (checkpoint.pth, *_full_checkpoint.pth) "
    "name the architecture in args.arch. --num-heads overrides.",
    "The README does not state the training epochs of these files (its args.txt files do).",
    "At another resolution than 224 px the position table is resampled by timm (bicubic), not by DINO's "
    "interpolate_pos_encoding (bicubic with a +0.1 offset): outputs differ slightly there.",
)

SELFPATCH_QUIRKS = (
    "The README links this file as a Google Drive page, not a direct download: download it by hand and put it at "
    "<weights dir>/selfpatch/selfpatch-imagenet-vit-small-pretrain.pth (or pass its path).",
    "SelfPatch's ViT has no CLS token: the feature is the SelfPatch head's aggregate of all patch tokens (the "
    "image-level vector its DINO loss trains). A file must therefore hold the head (ca_head.*): training "
    "checkpoints (teacher by default), teacher / student state dicts and flat state dicts with ca_head.* load; a "
    "file with the backbone alone is refused with a message. The layout of the released file was not inspected "
    "here.",
    "No ImageNet classification number is reported for it: the numbers shown are the COCO / ADE20K results of "
    "the models fine-tuned from it (SelfPatch's detection and segmentation READMEs).",
)


def get_released(name: str) -> ReleasedWeights:
    """The registry entry called ``name`` (error with the closest names otherwise)."""
    if name in RELEASED:
        return RELEASED[name]
    close = difflib.get_close_matches(name, list(RELEASED), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise WeightsError(f"no released weights called {name!r}.{hint} See `python -m patchmix.weights list`.")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_registry() -> str:
    """The registry as text tables, one per method (one row per released file), each followed by its notes."""
    short = {"vit_tiny": "ViT-T", "vit_small": "ViT-S", "vit_base": "ViT-B"}
    patchmix = [e for e in RELEASED.values() if e.method == "patchmix"]
    aps = [e for e in RELEASED.values() if e.method == "aps"]
    lines = [f"PatchMix (method patchmix, huggingface.co/{REPO_ID})", ""]
    lines += _table(("name", "dataset", "model", "epochs", "protocol", "top-1", f"file in huggingface.co/{REPO_ID}"),
                    [(e.name, e.dataset, f"{short[e.arch]}/{e.patch_size}", str(e.epochs), e.metric,
                      f"{e.top1:.1f}" + ("*" if e.note and e.protocol != "pretrain" else ""), e.path)
                     for e in patchmix])
    lines += ["", "* see notes. Notes:"] + [f"  - {q}" for q in QUIRKS]
    lines += ["", f"APS (method aps, huggingface.co/{APS_REPO_ID})", ""]
    lines += _table(("name", "dataset", "model", "epochs", "file", "fine-tune top-1", "hand-downloaded copy at"),
                    [(e.name, e.dataset, f"{short[e.arch]}/{e.patch_size}", str(e.epochs), e.protocol,
                      f"{e.top1:.1f}", f"<weights dir>/{e.local_paths[0]}") for e in aps])
    lines += ["", "Notes:"] + [f"  - {q}" for q in APS_QUIRKS]
    dino = [e for e in RELEASED.values() if e.method == "dino"]
    lines += ["", "DINO (method dino, dl.fbaipublicfiles.com/dino)", ""]
    lines += _table(("name", "dataset", "model", "kNN top-1", "linear top-1", "download URL"),
                    [(e.name, e.dataset, f"{short[e.arch]}/{e.patch_size}", f"{e.top1:.1f}",
                      f"{dict(e.reported)['linear top-1']:.1f}", e.download_url) for e in dino])
    lines += ["", "Notes:"] + [f"  - {q}" for q in DINO_QUIRKS]
    selfpatch = [e for e in RELEASED.values() if e.method == "selfpatch"]
    lines += ["", "SelfPatch (method selfpatch, Google Drive link of github.com/alinlab/SelfPatch)", ""]
    lines += _table(("name", "dataset", "model", "reported (fine-tuned from it)", "download page"),
                    [(e.name, e.dataset, f"{short[e.arch]}/{e.patch_size}", e.numbers(), e.page_url)
                     for e in selfpatch])
    lines += ["", "Notes:"] + [f"  - {q}" for q in SELFPATCH_QUIRKS]
    lines += ["", "Use a name wherever weights are asked for, e.g. "
              "`python main_knn.py --config cifar10_vit_tiny --pretrained-weights cifar10-vit-tiny-pretrain`."]
    return "\n".join(lines)
