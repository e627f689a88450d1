"""torch.hub entries for the released PatchMix models (weights: huggingface.co/visresearch/PatchMix).

    import torch
    model = torch.hub.load("<owner>/patchmix", "patchmix_vit_small16_in1k")          # backbone, CLS features
    model = torch.hub.load(".", "patchmix_vit_tiny2_cifar10", source="local", weights="finetune")

Every entry takes ``pretrained`` (False: random weights), ``weights`` ("pretrain": the backbone of the
pretraining file, ``model(x)`` returns the CLS token after the final LayerNorm; "linear" / "finetune": the
released classifier) and ``drop_path_rate``. Files are downloaded once with huggingface_hub; offline, put
them in ./weights/<hub path> or $PATCHMIX_WEIGHTS_DIR (see ``python -m patchmix.weights list``).
"""

dependencies = ["torch", "timm"]

from patchmix.weights import hub_model as _hub_model  # noqa: E402


def _entry(dataset: str, arch: str, paper: str):
    def load(pretrained: bool = True, weights: str = "pretrain", **kwargs):
        return _hub_model(dataset, arch, pretrained, weights, **kwargs)
    load.__doc__ = (f"PatchMix {arch.replace('vit_', 'ViT-')} pretrained on {dataset}; paper top-1 {paper}. "
                    f"weights='pretrain' | 'linear' | 'finetune'.")
    return load


patchmix_vit_small16_in1k = _entry("imagenet", "vit_small", "fine-tune 82.8 / linear 77.4 / kNN 73.3")
patchmix_vit_base16_in1k = _entry("imagenet", "vit_base", "fine-tune 84.1 / linear 80.2 / kNN 76.2")
patchmix_vit_tiny2_cifar10 = _entry("cifar10", "vit_tiny", "fine-tune 97.5 / linear 94.4 / kNN 92.9")
patchmix_vit_small2_cifar10 = _entry("cifar10", "vit_small", "fine-tune 98.1 / linear 96.0 / kNN 94.6")
patchmix_vit_base2_cifar10 = _entry("cifar10", "vit_base", "fine-tune 98.3 / linear 96.6 / kNN 95.8")
patchmix_vit_tiny2_cifar100 = _entry("cifar100", "vit_tiny", "fine-tune 84.9 / linear 74.7 / kNN 68.8")
patchmix_vit_small2_cifar100 = _entry("cifar100", "vit_small", "fine-tune 86.0 / linear 78.7 / kNN 75.4")
patchmix_vit_base2_cifar100 = _entry("cifar100", "vit_base", "fine-tune 86.0 / linear 79.7 / kNN 75.7")
