"""The contrastive loss against a direct formula, and the weighting of the PatchMix terms."""

from __future__ import annotations

import math

import pytest
import torch

from patchmix.loss import Encodings, LossWeights, PatchMixLoss, contrastive_loss, info_nce
from patchmix.mix import patch_mix


def direct_loss(query, keys, targets, temperature):
    """mean_i sum_c -Y_ic log softmax_c(<q_i/|q_i|, k_c/|k_c|> / T), with Python loops in float64."""
    total = 0.0
    for i in range(query.shape[0]):
        q = query[i].double() / query[i].double().norm()
        logits = [float(q @ (k.double() / k.double().norm())) / temperature for k in keys]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        total += sum(-float(targets[i, c]) * (logits[c] - log_norm) for c in range(keys.shape[0]))
    return total / query.shape[0]


def test_contrastive_loss_equals_the_direct_formula():
    torch.manual_seed(0)
    query, keys = torch.randn(5, 7), torch.randn(10, 7)
    targets = torch.softmax(torch.randn(5, 10), dim=1)
    for temperature in (0.2, 1.0):
        assert contrastive_loss(query, keys, targets, temperature).item() == pytest.approx(
            direct_loss(query, keys, targets, temperature), rel=1e-5)


def test_contrastive_loss_is_computed_in_float32_under_low_precision():
    torch.manual_seed(0)
    query, keys = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    loss = contrastive_loss(query, keys, torch.eye(4), 0.2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(direct_loss(query.float(), keys.float(), torch.eye(4), 0.2), rel=1e-5)


def _outputs(batch=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = ["q1", "q2_mixed", "k1", "k2", "k1_mixed"]
    return Encodings(**{n: torch.randn(batch, dim, generator=g, requires_grad=n.startswith("q")) for n in names})


def test_total_is_o2o_plus_half_mix_terms_with_official_roles():
    batch, num_mix, temperature = 5, 3, 0.2
    outputs = _outputs(batch)
    _, m2o, m2m = patch_mix(torch.zeros(batch, 3, 4, 4), num_mix, 2)
    total, terms = PatchMixLoss(o2o_smoothing=0.1)(outputs, m2o, m2m, temperature)

    y_o2o = torch.full((batch, batch), 0.1 / batch) + 0.9 * torch.eye(batch)
    o2o = direct_loss(outputs.q1.detach(), outputs.k2, y_o2o, temperature)
    mix_origin = direct_loss(outputs.q2_mixed.detach(), outputs.k1, m2o, temperature)
    mix_mix = direct_loss(outputs.q2_mixed.detach(), outputs.k1_mixed, m2m, temperature)
    assert terms["o2o"].item() == pytest.approx(o2o, rel=1e-5)
    assert terms["m2o"].item() == pytest.approx(mix_origin, rel=1e-5)
    assert terms["m2m"].item() == pytest.approx(mix_mix, rel=1e-5)
    assert total.item() == pytest.approx(o2o + 0.5 * mix_origin + 0.5 * mix_mix, rel=1e-5)


def test_gradient_flows_to_queries_only():
    outputs = _outputs()
    _, m2o, m2m = patch_mix(torch.zeros(5, 3, 4, 4), 2, 2)
    for name in ("k1", "k2", "k1_mixed"):
        getattr(outputs, name).requires_grad_(True)
    total, _ = PatchMixLoss()(outputs, m2o, m2m, 0.2)
    total.backward()
    assert outputs.q1.grad is not None and outputs.q2_mixed.grad is not None
    for name in ("k1", "k2", "k1_mixed"):
        assert getattr(outputs, name).grad is None, f"{name} must be a stop-gradient key"


@pytest.mark.parametrize("weights,present", [
    (LossWeights(1, 0, 0), {"o2o"}),
    (LossWeights(1, 0.5, 0), {"o2o", "m2o"}),
    (LossWeights(0, 0.5, 0), {"m2o"}),
    (LossWeights(0, 0, 0.5), {"m2m"}),
])
def test_terms_can_be_switched_off(weights, present):
    outputs = _outputs()
    _, m2o, m2m = patch_mix(torch.zeros(5, 3, 4, 4), 2, 2)
    total, terms = PatchMixLoss(weights)(outputs, m2o, m2m, 0.2)
    assert set(terms) == present
    assert total.item() == pytest.approx(sum(getattr(weights, n) * terms[n].item() for n in present), rel=1e-6)


def test_all_terms_off_is_an_error():
    outputs = _outputs()
    _, m2o, m2m = patch_mix(torch.zeros(5, 3, 4, 4), 2, 2)
    with pytest.raises(ValueError, match="every loss term has weight 0"):
        PatchMixLoss(LossWeights(0, 0, 0, 0, 0))(outputs, m2o, m2m, 0.2)


def test_local_crop_terms_average_over_crops_and_both_keys():
    batch, crops, temperature = 5, 3, 0.2
    outputs = _outputs(batch)
    g = torch.Generator().manual_seed(1)
    outputs.local = torch.randn(crops * batch, 6, generator=g)
    outputs.local_mixed = torch.randn(crops * batch, 6, generator=g)
    _, m2o, m2m = patch_mix(torch.zeros(batch, 3, 4, 4), 2, 2)
    _, terms = PatchMixLoss(o2o_smoothing=0.0)(outputs, m2o, m2m, temperature)
    eye = torch.eye(batch)
    expected_o2o = sum(direct_loss(c, getattr(outputs, k), eye, temperature) for c in outputs.local.split(batch)
                       for k in ("k1", "k2")) / crops
    expected_m2o = sum(direct_loss(c, getattr(outputs, k), m2o, temperature) for c in outputs.local_mixed.split(batch)
                       for k in ("k1", "k2")) / crops
    assert terms["local_o2o"].item() == pytest.approx(expected_o2o, rel=1e-5)
    assert terms["local_m2o"].item() == pytest.approx(expected_m2o, rel=1e-5)


def test_info_nce_is_hard_label_cross_entropy_and_reports_the_positive_similarity():
    torch.manual_seed(0)
    query, keys = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    loss, similarity = info_nce(query, keys, 0.1)
    assert loss.item() == pytest.approx(direct_loss(query.detach(), keys, torch.eye(6), 0.1), rel=1e-5)
    cosines = torch.nn.functional.cosine_similarity(query.detach(), keys, dim=1)
    assert similarity.item() == pytest.approx(cosines.mean().item(), rel=1e-5)
    loss.backward()
    assert query.grad is not None and not similarity.requires_grad
