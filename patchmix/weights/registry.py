"""The released weights by name: PatchMix (Hugging Face repo visresearch/PatchMix; spec 6.4) and APS
(visresearch/aps; spec 8).

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
# timm 0.6.11 Blocks: no qkv bias, LayerNorm eps 1e-5, and a position table of the patch tokens only.
METHOD_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "patchmix": {},
    "aps": {"qkv_bias": False, "norm_eps": 1e-5, "pos_embed_cls": False},
}

# Attention heads of the official code of each method (not stored in any file). APS's ViT-S has 6 heads
# (its main_finetune.py), PatchMix's 12.
METHOD_HEADS: dict[str, dict[str, int]] = {
    "patchmix": {arch: spec.num_heads for arch, spec in ARCHS.items()},
    "aps": {"vit_tiny": 3, "vit_small": 6, "vit_base": 12},
}


@dataclass(frozen=True)
class ReleasedWeights:
    """One released file: what it is, the paper's number for it and where it lives on the hub."""

    name: str          # registry name, e.g. "cifar10-vit-tiny-pretrain"
    dataset: str       # cifar10 / cifar100 / imagenet (our dataset names)
    arch: str          # vit_tiny / vit_small / vit_base
    patch_size: int
    img_size: int
    epochs: int        # pretraining epochs
    protocol: str      # pretrain / linear / finetune
    top1: float        # reported top-1 (kNN for PatchMix's pretraining files; see `metric`)
    path: str          # path inside the hub repo ("" when the authors did not publish it)
    note: str = ""
    repo_id: str = REPO_ID
    revision: str = "main"
    method: str = "patchmix"   # the method that trained it: patchmix / aps
    top1_metric: str = ""      # what top1 measures, when it is not the protocol's own metric

    @property
    def published(self) -> bool:
        """Whether the file's path in the hub repo is known (else it must be downloaded by hand)."""
        return bool(self.path)

    @property
    def url(self) -> str:
        """The file's download URL, or the repository's file list when its path was not published."""
        if not self.path:
            return _TREE_URL.format(repo=self.repo_id, revision=self.revision)
        return _HUB_URL.format(repo=self.repo_id, revision=self.revision, path=self.path)

    @property
    def local_paths(self) -> tuple[str, str]:
        """Where a hand-downloaded copy is looked for, relative to the weights folder."""
        if self.path:
            return self.path, self.path.rsplit("/", 1)[-1]
        return f"{self.method}/{self.name}.pth", f"{self.name}.pth"

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


RELEASED: dict[str, ReleasedWeights] = {**_build_registry(), **_build_aps_registry()}

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
    lines += ["", "Use a name wherever weights are asked for, e.g. "
              "`python main_knn.py --config cifar10_vit_tiny --pretrained-weights cifar10-vit-tiny-pretrain`."]
    return "\n".join(lines)
