"""tools/reproduce.py: the significance test against closed forms, and every row a configuration that parses."""

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import reproduce  # noqa: E402

from patchmix.config import parse_config  # noqa: E402
from patchmix.methods import get_method  # noqa: E402


@pytest.mark.parametrize("a, b", [([1.0, 2.0, 3.5], [0.0, 0.5, 1.0]), ([70.1, 69.0, 71.3], [70.0, 69.4, 70.2])])
def test_paired_t_test_matches_the_closed_form_for_two_degrees_of_freedom(a, b):
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    t = abs(mean) / (sd / math.sqrt(3))
    got_mean, got_sd, p = reproduce.paired_t_test(a, b)
    assert got_mean == pytest.approx(mean) and got_sd == pytest.approx(sd)
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-6)  # Student's t, df = 2


def test_paired_t_test_with_one_degree_of_freedom_and_degenerate_cases():
    _, _, p = reproduce.paired_t_test([3.0, 1.0], [0.0, 0.0])
    t = 2.0 / (math.sqrt(2.0) / math.sqrt(2))
    assert p == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-6)  # Cauchy tail
    assert reproduce.paired_t_test([1.0, 1.0], [1.0, 1.0])[2] == 1.0  # no difference at all
    assert reproduce.paired_t_test([2.0, 2.0], [1.0, 1.0])[2] == 0.0  # a constant difference
    assert math.isnan(reproduce.paired_t_test([2.0], [1.0])[2])


def test_every_row_is_a_configuration_main_pretrain_accepts(tmp_path):
    names = [row.name for row in reproduce.ROWS]
    assert len(set(names)) == len(names) and len({reproduce.slug(n) for n in names}) == len(names)
    assert reproduce.BASELINE in names
    for row in reproduce.ROWS:
        argv = reproduce.pretrain_command(argparse.Namespace(epochs=1, train_subset=100), row, 0, tmp_path)[2:]
        cfg = parse_config(lambda v: get_method(v.get("method", "patchmix")).config_class, argv, "pretrain", "")
        assert (cfg.epochs, cfg.train_subset, cfg.seed, cfg.knn_eval) == (1, 100, 0, False)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.dataset) == (128, 6, 4, "fashion_mnist")
