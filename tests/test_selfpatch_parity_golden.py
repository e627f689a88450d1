"""Our SelfPatch training step against numbers the OFFICIAL training step produced (no official code needed).

``tests/fixtures/selfpatch_parity.json`` was written by ``tools/parity/selfpatch_step.py --write-golden`` from the
official ``main_selfpatch.train_one_epoch`` (github.com/alinlab/SelfPatch, the commit is in the fixture) run for
epochs 0 and 1 on one batch of the same deterministic weights (student, teacher, both centres) and crops (2 global
56-px and 2 local 24-px crops: the 14x14 and 6x6 grids of 4-px patches, the only ones the official head accepts).
Here the weights and crops are regenerated (``tests/parity_selfpatch_ours.py``) and, for each head of the fixture:
the neighbourhoods of both grids, the teacher's and student's outputs before any step (image logits; patch logits,
for the teacher those of the aggregated top-4 neighbours), then OUR real step run twice: the total, image and patch
losses, every student gradient the optimiser gets (after per-tensor clipping; epoch 0 without both frozen last
layers), the student, the teacher and both centres after each step must equal the official ones, and our schedules
must give the official lr, weight decay, teacher momentum, teacher temperature and frozen epochs.

Tolerances (measured differences are 10x below them or more): losses and outputs 1e-5 relative; gradients and
states 1e-4 of the tensor's L2 norm (the sum: of sqrt(numel) times it); exact-zero gradient entries: both sides
below 1e-5 of the largest gradient norm. As in the script, the official gradient values of the exact-zero entries
(and of the few below their rounding noise) are written into ours before the optimiser step: Adam would otherwise
turn their noise into real steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import parity_selfpatch_ours as ours
import pytest
import torch

from patchmix.selfpatch_head import neighbour_index

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "selfpatch_parity.json"
TOL = {"loss": 1e-5, "output": 1e-5, "grad": 1e-4, "state": 1e-4, "zero_grad": 1e-5, "schedule": 1e-8}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors are tiny: one thread is fastest, and immune to other jobs on the same cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_inputs_layout_and_neighbourhoods_are_the_official_ones(golden):
    assert golden["settings"] == ours.SETTINGS and golden["seeds"] == ours.SEEDS
    assert sorted(golden["cases"]) == sorted(ours.CASES)
    assert len(golden["official_commit"]) == 40
    for crop, expected in zip(ours.make_crops(), golden["crops"], strict=True):
        assert ours.summary(crop)[:2] == pytest.approx(expected, rel=1e-8)
    for grid, expected in golden["neighbourhoods"].items():
        assert neighbour_index(int(grid)).tolist() == expected, f"{grid}x{grid} grid"
    for case, expected in golden["cases"].items():
        model = ours.build_our_model(case)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == expected["state_dict_shapes"], "state-dict layout differs from the official (mapped) one"
        trainable = sorted(ours.state_key(n) for n, p in model.named_parameters() if p.requires_grad)
        assert trainable == expected["trainable"]
        names = {id(p): ours.state_key(n) for n, p in model.named_parameters()}
        groups = sorted(sorted(names[id(p)] for p in g["params"]) for g in model.param_groups(0.04))
        assert groups == expected["groups"], "weight-decay groups differ from the official get_params_groups"


def test_official_key_map():
    assert ours.state_key("student.backbone.ca_head.cls_blocks.0.attn.q.weight") == (
        "student.ca_head.cls_blocks.0.attn.q.weight")
    assert ours.official_key("student.ca_head.cls_token") == ("student", "module.ca_head.cls_token")
    assert ours.official_key("teacher.p_head.last_layer.weight_v") == ("teacher", "p_head.last_layer.weight_v")
    assert ours.official_key("dino_loss.patch_center") == ("dino_loss", "patch_center")
    with pytest.raises(KeyError):
        ours.official_key("optimizer.state")


def test_schedules_are_the_official_ones(golden):
    assert golden["schedule_settings"] == ours.SCHEDULE_SETTINGS
    schedule = ours.our_schedule()
    official = golden["schedules"]
    assert len(official["lr"]) == schedule.total_steps
    for step in range(schedule.total_steps):
        values = schedule.at(step)
        for key in ("lr", "weight_decay", "momentum", "teacher_temp"):
            assert getattr(values, key) == pytest.approx(official[key][step], rel=TOL["schedule"], abs=1e-15), (
                key, step)
        assert values.last_layer_frozen == official["last_layer_frozen"][step], step


@pytest.mark.parametrize("case", list(ours.CASES))
def test_our_step_matches_the_official_numbers(golden, case):
    expected = golden["cases"][case]
    model = ours.build_our_model(case)
    weights = ours.deterministic_state_dict(model.state_dict(), ours.SEEDS["weights"])
    total = torch.cat([w.flatten().double() for _, w in sorted(weights.items()) if w.is_floating_point()])
    assert ours.summary(total)[:2] == pytest.approx(expected["initial_weights"], rel=1e-8)
    overrides = [{n: (torch.tensor(index, dtype=torch.long), torch.tensor(values)) for n, (index, values) in
                  step.items()} for step in expected["gradient_overrides"]]
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    zero = ours.zero_gradient_entries(shapes, ours.SETTINGS["embed_dim"])
    crops = ours.make_crops()

    problems = ours.check_summaries(ours.our_outputs(weights, crops, case), expected["outputs"], TOL["output"],
                                    "before the step")
    result = ours.run_ours(weights, crops, case, grad_overrides=overrides)
    for key, term in (("losses", "loss"), ("image_losses", "image_loss"), ("patch_losses", "patch_loss")):
        for step, (terms, want) in enumerate(zip(result.terms, expected[key], strict=True)):
            got = float(terms[term])
            if not abs(got - want) <= TOL["loss"] * abs(want):
                problems.append(f"step {step + 1} {term}: ours {got:.9g} official {want:.9g}")
    all_zero = frozenset(n for n, index in zero.items() if index.numel() == math.prod(shapes[n]))
    for step, (got, want) in enumerate(zip(result.grads, expected["grads"], strict=True)):
        problems += ours.check_summaries(got, want, TOL["grad"], f"step {step + 1} grad", skip=all_zero)
        scale = max(s[1] for s in want.values())
        for name in all_zero & set(want):  # rounding noise on both sides, tiny against the gradient scale
            noise = max(got[name].norm().item(), want[name][1])
            if not noise <= TOL["zero_grad"] * scale:
                problems.append(f"step {step + 1} grad {name}: exact value 0, |g| {noise:.3g} on one side")
    for step, (got, want) in enumerate(zip(result.states, expected["states"], strict=True)):
        floats = {n: t for n, t in got.items() if t.is_floating_point()}
        problems += ours.check_summaries(floats, want, TOL["state"], f"state after step {step + 1}")
    assert not problems, f"{len(problems)} differences from the official step:\n" + "\n".join(problems[:20])
