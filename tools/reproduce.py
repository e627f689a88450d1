"""Five pretraining methods and the PatchMix ablations (Tables 6 and 7) side by side on Fashion-MNIST, on a CPU.

  python tools/reproduce.py                       # every row, 3 seeds; writes docs/reproduction.md
  python tools/reproduce.py --rows "DINO" "APS" --seeds 0 1 2 3    # some rows, more seeds
  python tools/reproduce.py --epochs 4 --train-subset 16000 --output-dir output/repro_long --report docs/long.md

Every row pretrains with ``main_pretrain.py`` as a subprocess (the exact commands are written to the report):
the method's CPU demo recipe (``config/pretrain/{demo,aps_demo,dino_demo,selfpatch_demo}.py``: the same 6-block
128-d ViT, each method with its own demo hyperparameters) with the same images, epochs and seeds for every row.
Then it measures the encoder each method evaluates (PatchMix: the momentum encoder's CLS token; APS: the ViT's CLS
token; DINO: the teacher's CLS token; SelfPatch: the teacher's image vector):

* weighted kNN (k = 20, T = 0.07) with a fixed 10,000-image train subset as the bank, on the 10,000 test images;
* a linear probe on frozen features: multinomial logistic regression (L-BFGS, L2 1e-4) on the same 10,000 train
  features, no augmentation, evaluated once on the test set (cheaper than main_linear.py's 100-epoch protocol,
  and without its test-set model selection).

Floors: the same evaluations on each recipe's encoder at its random initialisation (the initial weights of the
same seed's run) and on raw pixels. Each method is compared with MoCo v3 (PatchMix with m = 1) by a paired
t-test over seeds (same seed: same initial weights for the PatchMix rows, same images and augmentation draws).
Finished runs are skipped when the command is re-run, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.config import parse_config  # noqa: E402
from patchmix.data import seed_everything  # noqa: E402
from patchmix.knn import extract_features, knn_splits, weighted_knn  # noqa: E402
from patchmix.methods import get_method  # noqa: E402
from patchmix.models import cls_features  # noqa: E402
from patchmix.weights import build_model, load_weights  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One row of the report: a pretraining recipe and the flags that make the row's variant of it."""

    name: str
    recipe: str
    flags: tuple[str, ...] = ()
    table: str = "methods"  # "methods", or the PatchMix paper's ablation table(s) the row belongs to


BASELINE = "MoCo v3 (PatchMix m=1)"
ROWS: list[Row] = [
    Row(BASELINE, "demo", ("--num-mix", "1"), "methods; 6"),
    Row("PatchMix m=2 (official code's default)", "demo", ("--num-mix", "2"), "methods; 6"),
    Row("PatchMix m=3 (paper's default)", "demo", ("--num-mix", "3"), "methods; 6, 7"),
    Row("APS", "aps_demo"),
    Row("DINO", "dino_demo"),
    Row("DINO + SelfPatch", "selfpatch_demo"),
    Row("m=4", "demo", ("--num-mix", "4"), "6"),
    Row("o2o only", "demo", ("--m2o-weight", "0", "--m2m-weight", "0"), "7"),
    Row("m2o only", "demo", ("--o2o-weight", "0", "--m2m-weight", "0"), "7"),
    Row("m2m only", "demo", ("--o2o-weight", "0", "--m2o-weight", "0"), "7"),
    Row("o2o + m2o", "demo", ("--m2m-weight", "0"), "7"),
]


def slug(name: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in name.split(" (")[0]).split())


def pretrain_command(args: argparse.Namespace, row: Row, seed: int, out: Path) -> list[str]:
    return [sys.executable, "main_pretrain.py", "--config", row.recipe, "--epochs", str(args.epochs),
            "--train-subset", str(args.train_subset), "--seed", str(seed), "--no-knn-eval",
            "--output-dir", str(out), *row.flags]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, l2: float = 1e-4, iterations: int = 200) -> float:
    """Top-1 (%) of a multinomial logistic regression fitted by L-BFGS on standardised frozen features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    layer = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(train_x), train_y) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100.0 * (layer(test_x).argmax(1) == test_y).float().mean().item()


def paired_t_test(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean and standard deviation of the paired differences ``a - b`` and the two-sided p-value of a paired
    t-test (Student's t with n - 1 degrees of freedom; its tail integrated numerically, no SciPy needed)."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.mean(diffs)
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = statistics.stdev(diffs)
    if sd == 0:
        return mean, 0.0, 0.0 if mean else 1.0
    t, df = abs(mean) / (sd / math.sqrt(n)), n - 1
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps = 4000  # Simpson's rule for the central mass on [0, t]
    h = t / steps
    total = sum((1 if i in (0, steps) else 4 if i % 2 else 2) * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2)
                for i in range(steps + 1))
    return mean, sd, max(0.0, 1.0 - 2.0 * scale * total * h / 3)


class Evaluator:
    """kNN and linear probe of frozen features on fixed Fashion-MNIST splits."""

    def __init__(self, bank_size: int, img_size: int = 28) -> None:
        splits = knn_splits("fashion_mnist", "", img_size, train_subset=bank_size)  # the project's kNN harness
        self.train, self.test = splits.train, splits.test
        self.device = torch.device("cpu")

    def scores(self, encode) -> dict[str, float]:
        train_x, train_y = extract_features(encode, self.train, 500, self.device)
        test_x, test_y = extract_features(encode, self.test, 500, self.device)
        knn = weighted_knn(train_x, train_y, test_x, test_y, 10, ks=(20,))[20]["top1"]
        return {"knn": knn, "linear": linear_probe(train_x, train_y, test_x, test_y, 10)}


def random_init_encoder(recipe: str, seed: int) -> torch.nn.Module:
    """The recipe's evaluated encoder with the initial weights ``main_pretrain.py --seed SEED`` starts from."""
    cfg = parse_config(lambda values: get_method(values.get("method", "patchmix")).config_class,
                       ["--config", recipe], "pretrain", "")
    seed_everything(seed)
    return get_method(cfg.method).from_config(cfg).feature_encoder().eval()


def summarise(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def comparison(runs: dict[str, dict], reference: dict[str, dict], metric: str) -> str:
    """``Δ mean ± sd (p = ...)`` of a row against the reference row over the seeds both have."""
    seeds = sorted(set(runs) & set(reference))
    if len(seeds) < 2 or runs is reference:
        return "–"
    mean, sd, p = paired_t_test([runs[s][metric] for s in seeds], [reference[s][metric] for s in seeds])
    return f"{mean:+.1f} ± {sd:.1f} (p {'< 0.01' if p < 0.01 else f'= {p:.2f}'})"


def table(rows: list[Row], results: dict[str, Any], reference: str) -> list[str]:
    """Rows with their means, the paired comparison against ``reference`` and against the same seeds' random
    initialisation of the row's recipe (the weights each run started from)."""
    lines = [f"| row | paper table | kNN top-1 | linear top-1 | kNN vs {reference} | linear vs {reference} | "
             "kNN / linear vs its random init | pretraining min / run (median) | per seed (kNN / linear) |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = results["runs"].get(reference, {})
    for row in rows:
        runs = results["runs"].get(row.name, {})
        start = results["floors"].get(random_init_name(row.recipe), {})
        per_seed = "; ".join(f"{runs[s]['knn']:.1f} / {runs[s]['linear']:.1f}" for s in sorted(runs))
        minutes = f"{statistics.median(r['seconds'] / 60 for r in runs.values()):.1f}" if runs else "–"
        tables = row.table.replace("methods; ", "").replace("methods", "–")
        lines.append(f"| {row.name} | {tables} | {summarise([r['knn'] for r in runs.values()])} | "
                     f"{summarise([r['linear'] for r in runs.values()])} | {comparison(runs, ref, 'knn')} | "
                     f"{comparison(runs, ref, 'linear')} | {comparison(runs, start, 'knn')} / "
                     f"{comparison(runs, start, 'linear')} | {minutes} | {per_seed} |")
    return lines


def random_init_name(recipe: str) -> str:
    return f"random init ({recipe}.py)"


def write_report(args: argparse.Namespace, results: dict[str, Any], commands: list[str]) -> None:
    methods = [row for row in ROWS if row.table.startswith("methods")]
    ablations = [row for row in ROWS if row.table != "methods"]
    lines = ["# Five methods and the PatchMix ablations on Fashion-MNIST", "",
             "Generated by `" + " ".join(["python tools/reproduce.py", *map(shlex.quote, sys.argv[1:])]) + "`; "
             f"the runs were made at commit `{results.get('commit', '?')}`.", "",
             f"Setting: every row pretrains the same 6-block 128-d ViT (4 heads) with its method's CPU demo recipe "
             f"for {args.epochs} epochs on the same fixed {args.train_subset}-image subset of the Fashion-MNIST "
             f"train split, seeds {args.seeds}. Metrics on the encoder each method evaluates: weighted kNN "
             f"(k = 20, T = 0.07; bank = a fixed {args.bank_size}-image train subset) and a linear probe (logistic "
             f"regression on the same frozen features), both on the 10,000 test images. Mean ± standard deviation "
             f"over seeds, top-1 %. \"vs\" columns: mean ± standard deviation of the per-seed differences and the "
             f"two-sided p-value of a paired t-test over seeds.", "",
             "## Methods", "", *table(methods, results, BASELINE), "",
             "## PatchMix ablations (the paper's Tables 6 and 7), same budget", "",
             *table(ablations, results, "PatchMix m=3 (paper's default)"), "", "## Floors", "",
             "| floor | kNN top-1 | linear top-1 | per seed (kNN / linear) |", "|---|---|---|---|"]
    for name, runs in results["floors"].items():
        lines.append(f"| {name} | {summarise([r['knn'] for r in runs.values()])} | "
                     f"{summarise([r['linear'] for r in runs.values()])} | "
                     + "; ".join(f"{r['knn']:.1f} / {r['linear']:.1f}" for r in runs.values()) + " |")
    lines += ["", f"Wall time of all runs and evaluations: {results['wall_minutes']:.1f} min on "
                  f"{torch.get_num_threads()} CPU threads (torch {torch.__version__}), summed over the invocations "
                  "of the script.", "", "## Commands", "", "```bash", *commands, "```", "",
              "Raw numbers: `docs/data/reproduction_results.json`.", ""]
    if args.notes and Path(args.notes).is_file():
        lines += [Path(args.notes).read_text()]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=8000)
    parser.add_argument("--bank-size", type=int, default=10000, help="train images in the kNN bank / probe")
    parser.add_argument("--rows", nargs="*", default=None, help="only these rows (names as in the table)")
    parser.add_argument("--output-dir", default="output/reproduction")
    parser.add_argument("--report", default="docs/reproduction.md")
    parser.add_argument("--notes", default="docs/reproduction_notes.md",
                        help="markdown file appended to the report (the discussion of the numbers)")
    args = parser.parse_args(argv)
    unknown = set(args.rows or ()) - {row.name for row in ROWS}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {[row.name for row in ROWS]}")

    tic = time.time()
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}, "floors": {}}
    results.setdefault("commit", git_commit())  # the code the first runs came from (an interrupted table resumes)
    evaluator = Evaluator(args.bank_size)
    commands = []

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    for seed in args.seeds:  # seed-major: an interrupted table has whole seeds of every row
        for row in ROWS:
            if args.rows and row.name not in args.rows:
                continue
            out = root / f"{slug(row.name)}_seed{seed}"
            command = pretrain_command(args, row, seed, out)
            commands.append("python " + " ".join(shlex.quote(c) for c in command[1:]))
            if str(seed) in results["runs"].get(row.name, {}):
                continue
            print(f"[{time.time() - tic:6.0f}s] pretraining {row.name}, seed {seed}", flush=True)
            start = time.time()
            subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
            seconds = time.time() - start
            scores = evaluator.scores(cls_features(build_model(load_weights(str(out / "checkpoint.pth"))).eval()))
            results["runs"].setdefault(row.name, {})[str(seed)] = {**scores, "seconds": seconds}
            save()
            print(f"           kNN {scores['knn']:.1f}  linear {scores['linear']:.1f}  ({seconds / 60:.1f} min)",
                  flush=True)

    recipes = dict.fromkeys(row.recipe for row in ROWS if not args.rows or row.name in args.rows)
    for recipe in recipes:
        name = random_init_name(recipe)
        for seed in args.seeds:
            if str(seed) not in results["floors"].get(name, {}):
                scores = evaluator.scores(cls_features(random_init_encoder(recipe, seed)))
                results["floors"].setdefault(name, {})[str(seed)] = scores
    if "raw pixels" not in results["floors"]:
        results["floors"]["raw pixels"] = {"-": evaluator.scores(lambda images: images.flatten(1))}
    results["wall_minutes"] = results.get("wall_minutes", 0.0) + (time.time() - tic) / 60
    save()
    write_report(args, results, commands)
    copy = Path(args.report).parent / "data" / "reproduction_results.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
