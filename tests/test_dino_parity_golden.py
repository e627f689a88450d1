"""Our DINO training step against numbers the OFFICIAL training step produced (no official code needed).

``tests/fixtures/dino_parity.json`` was written by ``tools/parity/dino_step.py --write-golden`` from the official
``main_dino.train_one_epoch`` (github.com/facebookresearch/dino, the commit is in the fixture) run for epochs 0 and
1 on one batch of the same deterministic weights (student, teacher, centre) and crops. Here the weights and crops
are regenerated (``tests/parity_dino_ours.py``) and OUR real step runs twice for each head of the fixture: the
loss, every student gradient the optimiser gets (after per-tensor clipping; epoch 0 without the frozen last layer),
the student, teacher, centre and BatchNorm statistics after each step must equal the official ones, and our
schedules must give the official lr, weight decay, teacher momentum, teacher temperature and frozen epochs.

Tolerances (measured differences are 8x below them or more): losses 1e-5 relative; gradients and states 1e-4 of
the tensor's L2 norm (the sum: of sqrt(numel) times it); exact-zero gradient entries: both sides below 1e-5 of the
largest gradient norm. As in the script, the official gradient values of the exact-zero entries (and of the few
below their rounding noise) are written into ours before the optimiser step: Adam would otherwise turn their
noise into real steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import parity_dino_ours as ours
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "dino_parity.json"
TOL = {"loss": 1e-5, "grad": 1e-4, "state": 1e-4, "zero_grad": 1e-5, "schedule": 1e-8}


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


def test_inputs_and_layout_are_the_official_ones(golden):
    assert golden["settings"] == ours.SETTINGS and golden["seeds"] == ours.SEEDS
    assert sorted(golden["cases"]) == sorted(ours.CASES)
    for crop, expected in zip(ours.make_crops(), golden["crops"], strict=True):
        assert ours.summary(crop)[:2] == pytest.approx(expected, rel=1e-8)
    for case, expected in golden["cases"].items():
        model = ours.build_our_model(case)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == expected["state_dict_shapes"], "state-dict layout differs from the official (mapped) one"
        assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == expected["trainable"]
        names = {id(p): n for n, p in model.named_parameters()}
        groups = sorted(sorted(names[id(p)] for p in g["params"]) for g in model.param_groups(0.04))
        assert groups == expected["groups"], "weight-decay groups differ from the official get_params_groups"


def test_official_key_map():
    assert ours.official_key("student.backbone.blocks.0.attn.qkv.weight") == (
        "student", "module.backbone.blocks.0.attn.qkv.weight")
    assert ours.official_key("student.head.last_layer.weight_g") == ("student", "module.head.last_layer.weight_g")
    assert ours.official_key("teacher.head.mlp.0.weight") == ("teacher", "head.mlp.0.weight")
    assert ours.official_key("dino_loss.center") == ("dino_loss", "center")


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


_check_summaries = ours.check_summaries


@pytest.mark.parametrize("case", list(ours.CASES))
def test_our_step_matches_the_official_numbers(golden, case):
    expected = golden["cases"][case]
    model = ours.build_our_model(case)
    weights = ours.deterministic_state_dict(model.state_dict())
    total = torch.cat([w.flatten().double() for _, w in sorted(weights.items()) if w.is_floating_point()])
    assert ours.summary(total)[:2] == pytest.approx(expected["initial_weights"], rel=1e-8)
    overrides = [{n: (torch.tensor(index, dtype=torch.long), torch.tensor(values)) for n, (index, values) in
                  step.items()} for step in expected["gradient_overrides"]]
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    zero = ours.zero_gradient_entries(shapes, ours.SETTINGS["embed_dim"], ours.CASES[case]["use_bn"])

    result = ours.run_ours(weights, ours.make_crops(), case, grad_overrides=overrides)

    problems = []
    for step, (got, want) in enumerate(zip(result.losses, expected["losses"], strict=True)):
        if not abs(got - want) <= TOL["loss"] * abs(want):
            problems.append(f"step {step + 1} loss: ours {got:.9g} official {want:.9g}")
    all_zero = frozenset(n for n, index in zero.items() if index.numel() == math.prod(shapes[n]))
    for step, (got, want) in enumerate(zip(result.grads, expected["grads"], strict=True)):
        problems += _check_summaries(got, want, TOL["grad"], f"step {step + 1} grad", skip=all_zero)
        scale = max(s[1] for s in want.values())
        for name in all_zero & set(want):  # rounding noise on both sides, tiny against the gradient scale
            noise = max(got[name].norm().item(), want[name][1])
            if not noise <= TOL["zero_grad"] * scale:
                problems.append(f"step {step + 1} grad {name}: exact value 0, |g| {noise:.3g} on one side")
    for step, (got, want) in enumerate(zip(result.states, expected["states"], strict=True)):
        floats = {n: t for n, t in got.items() if t.is_floating_point()}
        problems += _check_summaries(floats, want, TOL["state"], f"state after step {step + 1}")
    assert not problems, f"{len(problems)} differences from the official step:\n" + "\n".join(problems[:20])
