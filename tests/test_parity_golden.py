"""Our PatchMix training step against numbers the OFFICIAL training step produced (no official code needed).

``tests/fixtures/patchmix_parity.json`` was written by ``tools/parity/patchmix_step.py --write-golden`` from the
official ``main_pretrain.train_epoch`` (github.com/visresearch/patchmix) run on the same deterministic weights and
batch. Here the weights and batch are regenerated (``tests/parity_ours.py``), the official patch permutations of
each view are injected into our mixer, and OUR real step runs twice for m = 2 and 3, with and without the momentum
encoder. Loss terms, gradient summaries and parameter summaries after two steps must equal the official ones.

Tolerances (normalised as in the script; measured differences are about 20x below them or more):
losses 1e-5 relative; gradients and parameters 1e-4 of the tensor's L2 norm (the sum: of sqrt(numel) times it);
gradient entries that are exactly zero in exact arithmetic: both sides below 1e-5 of the largest gradient norm.
As in the script, the official gradient values of those zero-true-gradient entries are written into ours before
the optimiser step (Adam would otherwise turn their rounding noise into real steps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import parity_ours as ours
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "patchmix_parity.json"
TOL = {"loss": 1e-5, "grad": 1e-4, "param": 1e-4, "zero_grad": 1e-5}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_inputs_are_the_official_ones(golden):
    assert golden["settings"] == ours.SETTINGS and golden["seeds"] == ours.SEEDS
    assert sorted(golden["cases"]) == sorted(ours.case_name(m, mom) for m, mom in ours.CASES)
    for view, expected in zip(ours.make_views(), golden["views"]):
        assert ours.summary(view)[:2] == pytest.approx(expected, rel=1e-8)
    for use_momentum in (True, False):
        template = ours.build_our_model(use_momentum).state_dict()
        shapes = golden["state_dict_shapes"]["momentum" if use_momentum else "no_momentum"]
        assert {k: list(v.shape) for k, v in template.items()} == shapes, "state-dict layout differs from the official"


def _check_summaries(ours_tensors: dict[str, torch.Tensor], official: dict[str, list[float]], tol: float,
                     what: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """[sum, L2, first, middle, last]: sums within tol * sqrt(n) * L2, the others within tol * L2."""
    assert set(ours_tensors) == set(official), f"{what}: different tensors"
    problems = []
    for name, expected in official.items():
        if name in skip:
            continue
        got = ours.summary(ours_tensors[name])
        scale = expected[1]
        bounds = [tol * scale * math.sqrt(ours_tensors[name].numel())] + [tol * scale] * 4
        for label, g, e, bound in zip(("sum", "L2", "first", "middle", "last"), got, expected, bounds):
            if not abs(g - e) <= bound:
                problems.append(f"{what} {name} {label}: ours {g:.9g} official {e:.9g} (|diff| {abs(g - e):.3g} > "
                                f"{bound:.3g})")
    return problems


@pytest.mark.parametrize("num_mix,use_momentum", ours.CASES,
                         ids=[ours.case_name(m, mom) for m, mom in ours.CASES])
def test_our_step_matches_the_official_numbers(golden, num_mix, use_momentum):
    case = golden["cases"][ours.case_name(num_mix, use_momentum)]
    model = ours.build_our_model(use_momentum)
    weights = ours.deterministic_state_dict(model.state_dict())
    total = torch.cat([w.flatten().double() for _, w in sorted(weights.items()) if w.is_floating_point()])
    assert ours.summary(total)[:2] == pytest.approx(case["initial_weights"], rel=1e-8)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    zero = ours.zero_gradient_entries(shapes, ours.SETTINGS["embed_dim"])
    overrides = [{n: (zero[n], torch.tensor(values)) for n, values in step.items()}
                 for step in case["zero_gradient_entries"]]
    assert all(set(step) == set(zero) for step in overrides)

    result = ours.run_ours(weights, ours.make_views(), case["permutations"], num_mix, use_momentum,
                           grad_overrides=overrides)

    problems = []
    for step, (mixed, expected) in enumerate(zip(result.mixed, case["mixed_image_sums"])):
        for view in ours.VIEWS:
            if ours.image_sums(mixed[view]) != pytest.approx(expected[view], rel=1e-7, abs=1e-6):
                problems.append(f"step {step + 1}: mixed {view} differs from the official mix")
    for step, (got, expected) in enumerate(zip(result.losses, case["losses"])):
        for term in ("o2o", "m2o", "m2m", "loss"):
            if not abs(got[term] - expected[term]) <= TOL["loss"] * abs(expected[term]):
                problems.append(f"step {step + 1} loss {term}: ours {got[term]:.9g} official {expected[term]:.9g}")
    all_zero = frozenset(n for n, index in zero.items() if index.numel() == math.prod(shapes[n]))
    for step, (got, expected) in enumerate(zip(result.grads, case["grads"])):
        problems += _check_summaries(got, expected, TOL["grad"], f"step {step + 1} grad", skip=all_zero)
        scale = max(s[1] for s in expected.values())
        for name in all_zero:  # rounding noise on both sides, tiny against the gradient scale
            noise = max(got[name].norm().item(), expected[name][1])
            if not noise <= TOL["zero_grad"] * scale:
                problems.append(f"step {step + 1} grad {name}: exact value 0, |g| {noise:.3g} on one side")
    final = result.states[-1]
    problems += _check_summaries({n: t for n, t in final.items() if n in case["params_after_steps"]},
                                 case["params_after_steps"], TOL["param"], "parameter after 2 steps")
    if use_momentum:  # without it the BN update order differs from the official one (see the script)
        problems += _check_summaries({n: t for n, t in final.items() if n in case["bn_running_stats_after_steps"]},
                                     case["bn_running_stats_after_steps"], TOL["param"], "BN running stats")
    assert not problems, f"{len(problems)} differences from the official step:\n" + "\n".join(problems[:20])
