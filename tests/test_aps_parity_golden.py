"""Our APS training step against numbers the OFFICIAL training step produced (no official code needed).

``tests/fixtures/aps_parity.json`` was written by ``tools/parity/aps_step.py --write-golden`` from the official
``main_pretrain.train_epoch`` (github.com/visresearch/aps) run on a one-batch loader: ``nsampling`` = 4 optimiser
steps on the same deterministic weights, batch and cells. Here the weights (from the official key layout stored in
the fixture), the batch and the crop boxes are regenerated (``tests/parity_aps_ours.py``), the official cells are
injected into our sampling, and OUR real steps run (``PretrainTask.substeps`` + ``train_step``). The CLS tokens,
and at every step the loss, its two directions, the similarity, the lr and weight decay, the gradient summaries,
the parameter summaries and the BatchNorm running statistics must equal the official ones.

Tolerances (normalised as in the script; the script measured no difference at all, 0.0, on the machine that
wrote the fixture): losses 1e-5 relative; CLS tokens, gradients, parameters and BN statistics 1e-4 of the
tensor's L2 norm (the sum: of sqrt(numel) times it); the gradient of ``layer_norm.bias``, exactly zero in exact
arithmetic: both sides below 1e-5 of the largest gradient norm. As in the script, the official gradient values of
those entries are written into ours before the optimiser step (Adam would otherwise turn their rounding noise into
real steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import parity_aps_ours as ours
import pytest
import torch
from test_parity_golden import _check_summaries

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "aps_parity.json"
TOL = {"loss": 1e-5, "tokens": 1e-4, "grad": 1e-4, "param": 1e-4, "bn": 1e-4, "zero_grad": 1e-5}
ZERO_GRADIENT = {"base_encoder.layer_norm.bias": "base_encoder.norm.bias"}  # official name: ours


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def weights(golden) -> dict[str, torch.Tensor]:
    """The deterministic initial weights, generated from the official layout as the script generated them."""
    template = {name: torch.zeros(shape, dtype=torch.long if name.endswith("num_batches_tracked") else torch.float32)
                for name, shape in golden["state_dict_shapes"].items()}
    return ours.deterministic_state_dict(template)


@pytest.fixture(scope="module")
def result(golden, weights) -> ours.OursResult:
    shapes = {n: tuple(p.shape) for n, p in ours.build_our_model().named_parameters()}
    zero = ours.zero_gradient_entries(shapes, ours.SETTINGS["embed_dim"])
    assert set(zero) == set(ZERO_GRADIENT.values())
    overrides = [{mine: (zero[mine], torch.tensor(step["zero_gradient_entries"][official]))
                  for official, mine in ZERO_GRADIENT.items()} for step in golden["steps"]]
    return ours.run_ours(weights, ours.make_views(), ours.make_boxes(), golden["idxs1"], golden["idxs2"],
                         grad_overrides=overrides)


def _mapped(summaries: dict[str, list[float]]) -> dict[str, list[float]]:
    return {ours.official_to_ours(name): values for name, values in summaries.items()}


def test_inputs_and_layout_are_the_official_ones(golden, weights):
    assert golden["settings"] == ours.SETTINGS and golden["seeds"] == ours.SEEDS
    for view, expected in zip(ours.make_views(), golden["views"]):
        assert ours.summary(view)[:2] == pytest.approx(expected, rel=1e-8)
    assert [[list(b1[:4]), list(b2[:4])] for b1, b2 in ours.make_boxes()] == golden["boxes"]
    total = torch.cat([w.flatten().double() for _, w in sorted(weights.items()) if w.is_floating_point()])
    assert ours.summary(total)[:2] == pytest.approx(golden["initial_weights"], rel=1e-8)
    # the official layout, mapped, is our model's layout; and the key map is the one patchmix.weights applies
    mapped = ours.official_state_to_ours(weights)
    template = ours.build_our_model().state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in template.items()}
    from patchmix.weights.method_layouts import aps_to_timm as _aps_to_timm
    library = _aps_to_timm(weights)
    assert set(library) == set(mapped) and all(torch.equal(library[k], mapped[k]) for k in mapped)
    # the cells: (B, nsampling, k) per view, disjoint view-1 samplings per image, distinct view-2 cells
    cells1, cells2 = torch.tensor(golden["idxs1"]), torch.tensor(golden["idxs2"])
    k = ours.cells_per_sampling()
    assert cells1.shape == cells2.shape == (ours.SETTINGS["batch_size"], ours.SETTINGS["nsampling"], k)
    assert all(row.flatten().unique().numel() == row.numel() for row in cells1)
    assert all(chunk.unique().numel() == k for row in cells2 for chunk in row)


def test_our_encoder_sees_the_official_tokens(golden, weights):
    tokens = ours.our_cls_tokens(weights, ours.make_views(), golden["idxs1"], golden["idxs2"])
    problems = []
    for j, (pair, expected) in enumerate(zip(tokens, golden["cls_tokens"])):
        problems += _check_summaries({"view1": pair[0], "view2": pair[1]},
                                     {"view1": expected[0], "view2": expected[1]}, TOL["tokens"],
                                     f"sampling {j + 1} CLS")
    assert not problems, "\n".join(problems)


def test_our_steps_match_the_official_numbers(golden, result):
    problems = []
    assert len(result.losses) == len(golden["steps"]) == ours.SETTINGS["nsampling"]
    sample = ours.given_sample(golden["idxs1"], golden["idxs2"])
    for j, (cells1, cells2) in enumerate(result.cells):
        assert torch.equal(cells1, sample.view1[j]) and torch.equal(cells2, sample.view2[j])
    for j, (got, expected) in enumerate(zip(result.losses, golden["steps"])):
        values = expected["values"]
        for term in ("loss", "loss1", "loss2", "similarity"):
            if not abs(got[term] - values[term]) <= TOL["loss"] * abs(values[term]):
                problems.append(f"step {j + 1} {term}: ours {got[term]:.9g} official {values[term]:.9g}")
        for term in ("lr", "weight_decay"):
            if got[term] != pytest.approx(values[term], rel=1e-12):
                problems.append(f"step {j + 1} {term}: ours {got[term]!r} official {values[term]!r}")
    skip = frozenset(ZERO_GRADIENT.values())
    for j, (grads, expected) in enumerate(zip(result.grads, golden["steps"])):
        official = _mapped(expected["grads"])
        problems += _check_summaries(grads, official, TOL["grad"], f"step {j + 1} grad", skip=skip)
        scale = max(s[1] for s in official.values())
        for name in skip:  # rounding noise on both sides, tiny against the gradient scale
            noise = max(grads[name].norm().item(), official[name][1])
            if not noise <= TOL["zero_grad"] * scale:
                problems.append(f"step {j + 1} grad {name}: exact value 0, |g| {noise:.3g} on one side")
    for j, (state, expected) in enumerate(zip(result.states, golden["steps"])):
        params, stats = _mapped(expected["params"]), _mapped(expected["bn_running_stats"])
        problems += _check_summaries({n: state[n] for n in params}, params, TOL["param"],
                                     f"parameter after step {j + 1}")
        problems += _check_summaries({n: state[n] for n in stats}, stats, TOL["bn"],
                                     f"BN running stats after step {j + 1}")
    assert not problems, f"{len(problems)} differences from the official steps:\n" + "\n".join(problems[:20])
