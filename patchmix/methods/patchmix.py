"""PatchMix (and MoCo v3, its ``num_mix = 1`` case): the method module.

Networks, named as in the official checkpoints so their state dicts load without renaming::

    base_encoder.*        online ViT; its ``head`` is the 3-layer projector
    momentum_encoder.*    EMA copy of base_encoder (absent in the no-momentum variant of the official ViT-T)
    predictor.*           2-layer predictor on top of the online projector

One step (:meth:`PatchMix.forward`): mix view 2 (and view 1, and the local crops, where a term needs them) with
one random patch partition per call (:func:`patchmix.mix.patch_mix`), encode the queries with the online
encoder + predictor and the keys with the momentum encoder (no gradient), and combine them into the weighted
three-term loss (:class:`patchmix.loss.PatchMixLoss`). The momentum encoder moves before the forward pass, as
in MoCo v3.
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from patchmix.config import DATA, MODEL, ConfigError, configclass, option
from patchmix.data import PatchMixTransform
from patchmix.engine import StepOutput, Timer, no_timer
from patchmix.loss import Encodings, LossWeights, PatchMixLoss, needed_encodings
from patchmix.methods.base import PretrainConfig, PretrainMethod, check_backbone
from patchmix.mix import patch_mix
from patchmix.models import build_backbone, build_mlp, encode
from patchmix.schedules import MomentumStepValues, Schedules

__all__ = ["PatchMixConfig", "PatchMix"]

LOSS = "PatchMix and loss"


@configclass
class PatchMixConfig(PretrainConfig):
    """PatchMix pretraining. Defaults are the shared recipe of the paper; recipes change the rest."""

    crop_min: float = DATA(0.1, "smallest crop area of RandomResizedCrop for the two global views (paper: 0.1 "
                           "CIFAR, 0.05 ImageNet)", above=0, at_most=1)
    blur_probs: tuple[float, ...] = DATA((1.0, 0.1, 0.5), "Gaussian-blur probability of view 1, view 2 and the "
                                         "local crops", at_least=0, at_most=1)
    solarize_probs: tuple[float, ...] = DATA((0.0, 0.2), "solarisation probability of view 1 and view 2",
                                             at_least=0, at_most=1)
    color_jitter: tuple[float, ...] = DATA((0.4, 0.4, 0.2, 0.1), "brightness, contrast, saturation and hue "
                                           "strengths of the colour jitter (applied with p=0.8)", at_least=0)
    local_crops_number: int = DATA(0, "number of extra small crops, each also mixed (official ImageNet: 8)",
                                   at_least=0)
    local_crop_size: int = DATA(96, "side of the local crops in pixels", at_least=1)
    local_crop_scale: tuple[float, ...] = DATA((0.05, 0.35), "area range of the local crops", above=0, at_most=1)

    proj_layers: int = MODEL(3, "layers of the projector MLP", at_least=1)
    pred_layers: int = MODEL(2, "layers of the predictor MLP", at_least=1)
    hidden_dim: int = MODEL(4096, "hidden width of the projector and predictor", at_least=1)
    out_dim: int = MODEL(256, "output width of the projector and predictor", at_least=1)
    use_momentum: bool = MODEL(True, "momentum (EMA) key encoder; off = keys from the online network without "
                               "gradient (official ViT-Tiny code)")
    momentum: float = MODEL(0.996, "EMA momentum at the start; it follows a cosine to 1", at_least=0, at_most=1)
    momentum_per_epoch: bool = MODEL(False, "change the EMA momentum once per epoch, as the official code does "
                                     "by accident (default: every step)")
    fuse_backbone: bool | None = MODEL(None, "run each encoder's backbone once per step on all its inputs of the "
                                       "same resolution (the BatchNorm heads still see each view separately); "
                                       "default: on for CUDA, off on the CPU (measured slower there)",
                                       run_only=True)

    num_mix: int = option(3, "m, images per mixed image (paper 3, official code 2; 1 = no mixing)", group=LOSS,
                          at_least=1)
    o2o_smoothing: float = option(0.1, "label smoothing of the origin-to-origin targets (hard-coded 0.1 in the "
                                  "official code)", group=LOSS, at_least=0, at_most=0.999)
    mix_smoothing: float = option(0.0, "label smoothing of the mix-to-origin and mix-to-mix targets", group=LOSS,
                                  at_least=0, at_most=0.999)
    o2o_weight: float = option(1.0, "weight of origin-to-origin (0 switches it off)", group=LOSS, at_least=0)
    m2o_weight: float = option(0.5, "weight of mix-to-origin (0 switches it off)", group=LOSS, at_least=0)
    m2m_weight: float = option(0.5, "weight of mix-to-mix (0 switches it off)", group=LOSS, at_least=0)
    local_o2o_weight: float = option(1.0, "weight of the local crops' origin terms", group=LOSS, at_least=0)
    local_m2o_weight: float = option(1.0, "weight of the local crops' mix terms", group=LOSS, at_least=0)
    temperature: float = option(0.2, "softmax temperature after warm-up", group=LOSS, above=0)
    warmup_temperature: float = option(0.2, "temperature at the start of the warm-up", group=LOSS, above=0)
    warmup_temperature_epochs: float = option(30.0, "epochs of linear temperature warm-up", group=LOSS,
                                              at_least=0)


class PatchMix(PretrainMethod):
    """Online encoder + predictor, a momentum (EMA) encoder for the keys, the mixer and the loss.

    Args:
        backbone_kwargs: arguments of :func:`patchmix.models.build_backbone` (arch, img_size, patch_size, sizes).
        drop_path_rate: stochastic depth of the online encoder (official 0.1; the momentum encoder has 0).
        proj_layers / pred_layers / hidden_dim / out_dim: MoCo-v3 heads (3 / 2 / 4096 / 256 officially).
        use_momentum: False builds the official ViT-Tiny variant: keys come from the online network itself,
            without gradient.
        fuse_backbone: run each encoder's backbone once on all its same-resolution inputs of a step; None =
            only when the inputs are on a GPU.
        num_mix: ``m``, images per mixed image.
        criterion: the weighted loss (its weights also decide which forward passes run).
        seed: seed of the generator of the patch partitions (the same on every process).
    """

    name = "patchmix"
    config_class = PatchMixConfig

    def __init__(self, backbone_kwargs: dict, drop_path_rate: float = 0.1, proj_layers: int = 3,
                 pred_layers: int = 2, hidden_dim: int = 4096, out_dim: int = 256, use_momentum: bool = True,
                 fuse_backbone: bool | None = None, num_mix: int = 3, criterion: PatchMixLoss | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.fuse_backbone = fuse_backbone
        self.num_mix = num_mix
        self.patch_size = int(backbone_kwargs["patch_size"])
        self.criterion = criterion or PatchMixLoss()
        self.mix_generator = torch.Generator().manual_seed(seed)
        self.base_encoder = build_backbone(drop_path_rate=drop_path_rate, **backbone_kwargs)
        embed_dim = self.base_encoder.embed_dim
        self.base_encoder.head = build_mlp(proj_layers, embed_dim, hidden_dim, out_dim)
        self.predictor = build_mlp(pred_layers, out_dim, hidden_dim, out_dim)
        self.momentum_encoder: VisionTransformer | None = None
        if use_momentum:
            self.momentum_encoder = build_backbone(drop_path_rate=0.0, **backbone_kwargs)
            self.momentum_encoder.head = build_mlp(proj_layers, embed_dim, hidden_dim, out_dim)
            for online, momentum in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
                momentum.data.copy_(online.data)
                momentum.requires_grad = False

    # -- the method's declarations -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: PatchMixConfig) -> "PatchMix":
        weights = LossWeights(cfg.o2o_weight, cfg.m2o_weight, cfg.m2m_weight, cfg.local_o2o_weight,
                              cfg.local_m2o_weight)
        return cls(cls.backbone_kwargs(cfg), cfg.drop_path, cfg.proj_layers, cfg.pred_layers, cfg.hidden_dim,
                   cfg.out_dim, cfg.use_momentum, cfg.fuse_backbone, cfg.num_mix,
                   PatchMixLoss(weights, cfg.o2o_smoothing, cfg.mix_smoothing), seed=cfg.seed)

    @staticmethod
    def train_transform(cfg: PatchMixConfig) -> Callable[[Image.Image], list[torch.Tensor]]:
        return PatchMixTransform(cfg.img_size, cfg.crop_min, cfg.blur_probs, cfg.solarize_probs,
                                 cfg.local_crops_number, cfg.local_crop_size, cfg.local_crop_scale,
                                 cfg.color_jitter)

    def build_schedules(self, cfg: PatchMixConfig, steps_per_epoch: int) -> Schedules:
        return Schedules(steps_per_epoch, cfg.epochs, cfg.base_lr * cfg.batch_size / 256, cfg.min_lr,
                         cfg.warmup_epochs, cfg.weight_decay, cfg.weight_decay_end, cfg.momentum,
                         cfg.momentum_per_epoch, cfg.temperature, cfg.warmup_temperature,
                         cfg.warmup_temperature_epochs)

    @classmethod
    def check_config(cls, cfg: PatchMixConfig, batch_per_process: int) -> None:
        check_backbone(cfg)
        if cfg.num_mix > 1 and batch_per_process < 2 * cfg.num_mix - 1:
            raise ConfigError(f"the batch per process ({batch_per_process}) is smaller than 2*num_mix-1 = "
                              f"{2 * cfg.num_mix - 1}; raise --batch-size, use fewer processes, or lower --num-mix.")
        if cfg.local_crops_number and cfg.local_crop_size % cfg.patch_size:
            raise ConfigError(f"local_crop_size {cfg.local_crop_size} is not divisible by patch_size "
                              f"{cfg.patch_size}; choose a multiple of {cfg.patch_size}.")
        if (len(cfg.blur_probs), len(cfg.solarize_probs), len(cfg.local_crop_scale), len(cfg.color_jitter)) != (
                3, 2, 2, 4):
            raise ConfigError("blur_probs takes 3 values (view 1, view 2, local crops), solarize_probs 2, "
                              "local_crop_scale 2 and color_jitter 4 (brightness, contrast, saturation, hue).")
        if not any((cfg.o2o_weight, cfg.m2o_weight, cfg.m2m_weight)):
            raise ConfigError("every loss term has weight 0: switch at least one of o2o/m2o/m2m on.")

    def feature_encoder(self) -> VisionTransformer:
        return self.key_encoder

    def generators(self) -> dict[str, torch.Generator]:
        return {"mix": self.mix_generator}

    def compile_backbones(self) -> None:
        """``torch.compile`` the backbone of each encoder (the heads stay eager; state-dict keys are unchanged)."""
        for encoder in filter(None, (self.base_encoder, self.momentum_encoder)):
            encoder.forward_features = torch.compile(encoder.forward_features)

    def describe(self, cfg: PatchMixConfig) -> str:
        return f"PatchMix m={self.num_mix} | momentum encoder: {self.momentum_encoder is not None}"

    @property
    def key_encoder(self) -> VisionTransformer:
        return self.momentum_encoder if self.momentum_encoder is not None else self.base_encoder

    @torch.no_grad()
    def update_teacher(self, values: MomentumStepValues) -> None:
        """EMA of the online parameters: ``xi <- m * xi + (1 - m) * theta`` (buffers are not averaged)."""
        if self.momentum_encoder is None:
            return
        online = [p.detach() for p in self.base_encoder.parameters()]
        target = list(self.momentum_encoder.parameters())
        torch._foreach_lerp_(target, online, 1.0 - values.momentum)

    # -- one step ---------------------------------------------------------------------------------------------

    def forward(self, views: list[torch.Tensor], values: MomentumStepValues, timer: Timer = no_timer
                ) -> StepOutput:
        """Views 1, 2 (and local crops) -> the weighted PatchMix loss and its terms."""
        x1, x2, crops = views[0], views[1], views[2:]
        weights = self.criterion.weights
        needed = needed_encodings(weights, local_crops=bool(crops))
        m, p, generator = self.num_mix, self.patch_size, self.mix_generator
        with timer("mixer"):  # view 2 first, then view 1, then the crops: the order of the random partitions
            x2_mixed, mix_to_origin, mix_to_mix = patch_mix(x2, m, p, generator)
            x1_mixed = patch_mix(x1, m, p, generator)[0] if needed.k1_mixed else None
            local = torch.cat(crops) if crops and weights.local_o2o else None
            local_mixed = None
            if crops and weights.local_m2o:
                local_mixed = torch.cat([patch_mix(crop, m, p, generator)[0] for crop in crops])
        encodings = self.encode(x1, x2, x1_mixed, x2_mixed, local, local_mixed, needed.names())
        loss, terms = self.criterion(encodings, mix_to_origin, mix_to_mix, values.temperature)
        return StepOutput(loss, terms)

    def encode(self, x1: torch.Tensor, x2: torch.Tensor, x1_mixed: torch.Tensor | None,
               x2_mixed: torch.Tensor | None, local: torch.Tensor | None = None,
               local_mixed: torch.Tensor | None = None,
               needs: list[str] | tuple[str, ...] = ("q1", "q2_mixed", "k1", "k2", "k1_mixed")) -> Encodings:
        """Queries (predictor outputs, with gradient) and keys (projector outputs, no gradient).

        ``needs`` names the global-view encodings to compute; passes nobody needs are skipped. ``local`` /
        ``local_mixed`` are the V local crops concatenated along the batch (one head call each).
        """
        fuse = self.fuse_backbone if self.fuse_backbone is not None else x1.is_cuda
        out = Encodings()
        online_inputs = {"q1": x1, "q2_mixed": x2_mixed, "local": local, "local_mixed": local_mixed}
        online_names = [n for n in ("q1", "q2_mixed") if n in needs]
        online_names += [n for n in ("local", "local_mixed") if online_inputs[n] is not None]
        projections = encode(self.base_encoder, [online_inputs[n] for n in online_names], fuse)
        for name, projection in zip(online_names, projections):
            setattr(out, name, self.predictor(projection))

        key_inputs = {"k1": x1, "k2": x2, "k1_mixed": x1_mixed}
        key_names = [n for n in ("k1", "k2", "k1_mixed") if n in needs]
        if self.momentum_encoder is None and "k1" in key_names and "q1" in online_names:
            # No-momentum variant: the key of view 1 is the (detached) projection of the gradient pass.
            out.k1 = projections[online_names.index("q1")].detach()
            key_names.remove("k1")
        if key_names:
            with torch.no_grad():
                keys = encode(self.key_encoder, [key_inputs[n] for n in key_names], fuse)
            for name, key in zip(key_names, keys):
                setattr(out, name, key)
        return out

