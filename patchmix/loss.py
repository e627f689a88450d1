"""The PatchMix objective: three soft-target contrastive terms (plus two for multi-crop).

Every term is a cross-entropy between soft targets and a softmax over cosine similarities of one process's
L2-normalised queries with the keys of ALL processes (gathered without gradient), divided by a temperature::

    loss(Q, K, Y) = mean_i sum_c -Y[i, c] * log softmax_c(q_i . k_c / tau)

The query/key roles follow the official code (view 1 is always the key side of the mix terms)::

    total = w_o2o * loss(q1,  k2,  Y_o2o)          origin-to-origin: view 1 vs view 2, label smoothing 0.1
          + w_m2o * loss(q^2, k1,  Y_m2o)          mix-to-origin: mixed view 2 vs unmixed view 1
          + w_m2m * loss(q^2, k^1, Y_m2m)          mix-to-mix: mixed view 2 vs mixed view 1

with ``w = (1, 1/2, 1/2)``. With local crops (the official ImageNet recipe) each unmixed crop ``u_v`` and mixed
crop ``u^_v`` is also contrasted with both global keys::

    + w_local_o2o / V * sum_v [loss(u_v,  k1, Y_o2o) + loss(u_v,  k2, Y_o2o)]
    + w_local_m2o / V * sum_v [loss(u^_v, k1, Y_m2o) + loss(u^_v, k2, Y_m2o)]
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from patchmix.distributed import concat_all_gather, get_rank, get_world_size
from patchmix.mix import place_targets

__all__ = ["contrastive_loss", "info_nce", "PatchMixLoss", "LossWeights", "Encodings", "Needed", "needed_encodings"]

_soft_cross_entropy = SoftTargetCrossEntropy()


def contrastive_loss(query: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Soft-target cross-entropy of ``(N, D)`` queries against ``(C, D)`` keys with ``(N, C)`` targets.

    Computed in float32 whatever the autocast dtype (autocast is switched off here, so the product is not cast
    back down): the logits of a 0.2 temperature overflow fp16 easily.
    """
    with torch.autocast(query.device.type, enabled=False):
        query = F.normalize(query.float(), dim=1)
        keys = F.normalize(keys.float(), dim=1)
        logits = query @ keys.t() / temperature
        return _soft_cross_entropy(logits, targets.float())


@dataclass(frozen=True)
class LossWeights:
    o2o: float = 1.0
    m2o: float = 0.5
    m2m: float = 0.5
    local_o2o: float = 1.0
    local_m2o: float = 1.0


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of ``(N, D)`` queries against the keys of ALL processes, with hard labels (APS, MoCo v3).

    The keys are L2-normalised, gathered without gradient (the caller detaches them: stop-gradient), and query
    ``i`` of process ``r`` has key ``r * N + i`` as its positive. Returns the cross-entropy of the logits ``q . k /
    T`` and the mean cosine similarity of the positive pairs (APS logs it). Float32 whatever the autocast dtype.
    """
    with torch.autocast(query.device.type, enabled=False):
        query = F.normalize(query.float(), dim=1)
        keys = concat_all_gather(F.normalize(keys.float(), dim=1))
        similarity = query @ keys.t()
        labels = torch.arange(query.shape[0], device=query.device) + get_rank() * query.shape[0]
        loss = F.cross_entropy(similarity / temperature, labels)
        positive = similarity.gather(1, labels[:, None]).mean()
    return loss, positive.detach()


@dataclass
class Encodings:
    """What the PatchMix networks compute for one step, and all the loss reads.

    Queries (online encoder + predictor, with gradient): ``q1`` of view 1, ``q2_mixed`` of mixed view 2,
    ``local`` / ``local_mixed`` of the ``V`` local crops (concatenated along the batch). Keys (momentum
    encoder, or the online one without gradient): ``k1``, ``k2`` of the views, ``k1_mixed`` of mixed view 1.
    An encoding no active term needs is ``None`` (its forward pass is skipped).
    """

    q1: torch.Tensor | None = None
    q2_mixed: torch.Tensor | None = None
    k1: torch.Tensor | None = None
    k2: torch.Tensor | None = None
    k1_mixed: torch.Tensor | None = None
    local: torch.Tensor | None = None
    local_mixed: torch.Tensor | None = None


@dataclass(frozen=True)
class Needed:
    """Which global-view encodings the active loss terms read (see :func:`needed_encodings`)."""

    q1: bool = False
    q2_mixed: bool = False
    k1: bool = False
    k2: bool = False
    k1_mixed: bool = False

    def names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


def needed_encodings(weights: "LossWeights", local_crops: bool) -> Needed:
    """The encodings the terms with a non-zero weight use, so that switched-off terms cost no forward pass."""
    local = local_crops and bool(weights.local_o2o or weights.local_m2o)
    return Needed(q1=bool(weights.o2o), q2_mixed=bool(weights.m2o or weights.m2m),
                  k1=bool(weights.m2o) or local, k2=bool(weights.o2o) or local, k1_mixed=bool(weights.m2m))


class PatchMixLoss(torch.nn.Module):
    """Combine the model's queries and keys into the weighted PatchMix loss.

    Args:
        weights: weight of every term; a weight of 0 switches the term off (the paper's Table 7 ablation), and
            the model then skips the forward passes only that term needed.
        o2o_smoothing: label smoothing of the origin-to-origin targets (the official code hard-codes 0.1).
        mix_smoothing: label smoothing of the two mix targets (official 0.0).
    """

    def __init__(self, weights: LossWeights = LossWeights(), o2o_smoothing: float = 0.1,
                 mix_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weights = weights
        self.o2o_smoothing = o2o_smoothing
        self.mix_smoothing = mix_smoothing

    def forward(self, encodings: Encodings, mix_to_origin: torch.Tensor, mix_to_mix: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the total loss and every term's value (detached, for logging).

        Only the encodings the active terms need must be present (see :func:`needed_encodings`).
        """
        rank, world_size = get_rank(), get_world_size()
        keys = self._gather({name: getattr(encodings, name) for name in ("k1", "k2", "k1_mixed")
                             if getattr(encodings, name) is not None})
        eye = torch.eye(mix_to_origin.shape[0], device=mix_to_origin.device)
        y_o2o = place_targets(eye, self.o2o_smoothing, rank, world_size)
        y_m2o = place_targets(mix_to_origin, self.mix_smoothing, rank, world_size)
        y_m2m = place_targets(mix_to_mix, self.mix_smoothing, rank, world_size)

        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        if w.o2o:
            terms["o2o"] = contrastive_loss(encodings.q1, keys["k2"], y_o2o, temperature)
        if w.m2o:
            terms["m2o"] = contrastive_loss(encodings.q2_mixed, keys["k1"], y_m2o, temperature)
        if w.m2m:
            terms["m2m"] = contrastive_loss(encodings.q2_mixed, keys["k1_mixed"], y_m2m, temperature)
        if w.local_o2o and encodings.local is not None:
            terms["local_o2o"] = self._local_term(encodings.local, keys, y_o2o, temperature)
        if w.local_m2o and encodings.local_mixed is not None:
            terms["local_m2o"] = self._local_term(encodings.local_mixed, keys, y_m2o, temperature)
        if not terms:
            raise ValueError("every loss term has weight 0: switch at least one of o2o/m2o/m2m on.")
        total = sum(getattr(w, name) * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    @staticmethod
    def _gather(keys: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All-gather every key set in one collective (stop-gradient)."""
        if not keys:
            return {}
        names = list(keys)
        stacked = torch.stack([keys[name].detach() for name in names], dim=1)  # (B, n, D)
        gathered = concat_all_gather(stacked)
        return {name: gathered[:, i] for i, name in enumerate(names)}

    @staticmethod
    def _local_term(queries: torch.Tensor, keys: dict[str, torch.Tensor], targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
        batch = targets.shape[0]
        crops = queries.split(batch)
        total = queries.new_zeros((), dtype=torch.float32)
        for crop in crops:
            total = total + contrastive_loss(crop, keys["k1"], targets, temperature)
            total = total + contrastive_loss(crop, keys["k2"], targets, temperature)
        return total / len(crops)
