"""Miniature reproduction of the paper's ablations (Tables 6 and 7) on Fashion-MNIST, on a CPU.

  python tools/reproduce.py                       # every row, 2 seeds; writes docs/reproduction.md
  python tools/reproduce.py --epochs 4 --seeds 0 1 2 --output-dir output/repro_long --report docs/repro_long.md

Every row pretrains the demo model (config/pretrain/demo.py: a 6-block 128-d ViT with 7-px patches on 28-px
images) with ``main_pretrain.py`` as a subprocess (the exact commands are written to the report), then measures
the momentum encoder's CLS features:

* weighted kNN (k = 20, T = 0.07) with a fixed 10,000-image train subset as the bank, on the 10,000 test images;
* a linear probe on frozen features: multinomial logistic regression (L-BFGS, L2 1e-4) on the same 10,000 train
  features, no augmentation, evaluated once on the test set (cheaper than main_linear.py's 100-epoch protocol,
  and without its test-set model selection).

Floors: the same evaluations on a randomly initialised encoder (one per seed) and on raw pixels. Finished runs
are skipped when the command is re-run, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.config import parse_config  # noqa: E402
from patchmix.knn import extract_features, knn_splits, weighted_knn  # noqa: E402
from patchmix.methods import PatchMix, PatchMixConfig  # noqa: E402
from patchmix.models import build_backbone, cls_features  # noqa: E402
from patchmix.weights import build_model, load_weights  # noqa: E402

# (row name, paper table, extra flags). Table 7 rows use the paper's default m = 3.
ROWS: list[tuple[str, str, list[str]]] = [
    ("m=1 (no mixing)", "6", ["--num-mix", "1"]),
    ("m=2", "6", ["--num-mix", "2"]),
    ("m=3 (paper default; = all three terms)", "6, 7", ["--num-mix", "3"]),
    ("m=4", "6", ["--num-mix", "4"]),
    ("o2o only", "7", ["--m2o-weight", "0", "--m2m-weight", "0"]),
    ("m2o only", "7", ["--o2o-weight", "0", "--m2m-weight", "0"]),
    ("m2m only", "7", ["--o2o-weight", "0", "--m2o-weight", "0"]),
    ("o2o + m2o", "7", ["--m2m-weight", "0"]),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def pretrain_command(args: argparse.Namespace, flags: list[str], seed: int, out: Path) -> list[str]:
    return [sys.executable, "main_pretrain.py", "--config", "demo", "--epochs", str(args.epochs),
            "--train-subset", str(args.train_subset), "--seed", str(seed), "--no-knn-eval",
            "--output-dir", str(out), *flags]


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


class Evaluator:
    """kNN and linear probe of CLS features on fixed Fashion-MNIST splits."""

    def __init__(self, bank_size: int, img_size: int = 28) -> None:
        splits = knn_splits("fashion_mnist", "", img_size, train_subset=bank_size)  # the project's kNN harness
        self.train, self.test = splits.train, splits.test
        self.device = torch.device("cpu")

    def features(self, encode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        train_x, train_y = extract_features(encode, self.train, 500, self.device)
        test_x, test_y = extract_features(encode, self.test, 500, self.device)
        return train_x, train_y, test_x, test_y

    def scores(self, encode) -> dict[str, float]:
        train_x, train_y, test_x, test_y = self.features(encode)
        knn = weighted_knn(train_x, train_y, test_x, test_y, 10, ks=(20,))[20]["top1"]
        return {"knn": knn, "linear": linear_probe(train_x, train_y, test_x, test_y, 10)}


def encoder_of(checkpoint: Path) -> torch.nn.Module:
    return build_model(load_weights(str(checkpoint))).eval()


def summarise(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def write_report(args: argparse.Namespace, results: dict[str, Any], commands: list[str], minutes: float) -> None:
    lines = ["# Miniature reproduction on Fashion-MNIST", "",
             "Generated by `python tools/reproduce.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`.",
             "",
             f"Setting: the demo model (`config/pretrain/demo.py`, ViT 6 blocks x 128-d, 4 heads, 7-px patches on "
             f"28-px images, 1.2M backbone parameters), batch 256, {args.epochs} epochs on a fixed "
             f"{args.train_subset}-image subset of the Fashion-MNIST train split, seeds {args.seeds}. Metrics on "
             f"the momentum encoder's CLS token: weighted kNN (k = 20, T = 0.07; bank = a fixed {args.bank_size}-image "
             f"train subset) and a linear probe (logistic regression on the same frozen features), both on the 10,000 "
             f"test images. Mean ± standard deviation over seeds, top-1 %.", "",
             "| row | paper table | kNN top-1 | linear top-1 | per seed (kNN / linear) |", "|---|---|---|---|---|"]
    for name, table, _ in ROWS:
        runs = results["rows"].get(name, {})
        knn = [r["knn"] for r in runs.values()]
        linear = [r["linear"] for r in runs.values()]
        per_seed = "; ".join(f"{r['knn']:.1f} / {r['linear']:.1f}" for r in runs.values())
        lines.append(f"| {name} | {table} | {summarise(knn)} | {summarise(linear)} | {per_seed} |")
    for name in ("random init", "raw pixels"):
        runs = results["floors"].get(name, {})
        lines.append(f"| floor: {name} | – | {summarise([r['knn'] for r in runs.values()])} | "
                     f"{summarise([r['linear'] for r in runs.values()])} | "
                     + "; ".join(f"{r['knn']:.1f} / {r['linear']:.1f}" for r in runs.values()) + " |")
    lines += ["", f"Wall time of all runs and evaluations: {minutes:.1f} min on {torch.get_num_threads()} CPU "
                  f"threads (torch {torch.__version__}), summed over the invocations of the script.", "",
              "## Commands", "", "```bash",
              *commands, "```", "", "Raw numbers: `" + str(Path(args.output_dir) / "results.json") + "` (the script copies them to "
              "`docs/data/reproduction_results.json`).", ""]
    if args.notes and Path(args.notes).is_file():
        lines += [Path(args.notes).read_text()]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=16000)
    parser.add_argument("--bank-size", type=int, default=10000, help="train images in the kNN bank / probe")
    parser.add_argument("--rows", nargs="*", default=None, help="only these rows (names as in the table)")
    parser.add_argument("--output-dir", default="output/reproduction")
    parser.add_argument("--report", default="docs/reproduction.md")
    parser.add_argument("--notes", default="docs/reproduction_notes.md",
                        help="markdown file appended to the report (the discussion of the numbers)")
    args = parser.parse_args(argv)

    tic = time.time()
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"rows": {}, "floors": {}}
    evaluator = Evaluator(args.bank_size)
    commands = []

    for name, _, flags in ROWS:
        if args.rows and name not in args.rows:
            continue
        for seed in args.seeds:
            out = root / f"{slug(name)}_seed{seed}"
            command = pretrain_command(args, flags, seed, out)
            commands.append("python " + " ".join(shlex.quote(c) for c in command[1:]))
            done = results["rows"].get(name, {}).get(str(seed))
            if done:
                continue
            print(f"[{time.time() - tic:6.0f}s] pretraining {name}, seed {seed}", flush=True)
            subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
            scores = evaluator.scores(cls_features(encoder_of(out / "checkpoint.pth")))
            results["rows"].setdefault(name, {})[str(seed)] = scores
            results_path.write_text(json.dumps(results, indent=2))
            print(f"           kNN {scores['knn']:.1f}  linear {scores['linear']:.1f}", flush=True)

    demo = PatchMix.backbone_kwargs(parse_config(PatchMixConfig, ["--config", "demo"], "pretrain", ""))
    for seed in args.seeds:
        if str(seed) not in results["floors"].get("random init", {}):
            torch.manual_seed(seed)
            model = build_backbone(**demo).eval()
            results["floors"].setdefault("random init", {})[str(seed)] = evaluator.scores(cls_features(model))
    if "raw pixels" not in results["floors"]:
        results["floors"]["raw pixels"] = {"-": evaluator.scores(lambda images: images.flatten(1))}
    results["wall_minutes"] = results.get("wall_minutes", 0.0) + (time.time() - tic) / 60
    results_path.write_text(json.dumps(results, indent=2))
    write_report(args, results, commands, results["wall_minutes"])
    copy = Path(args.report).parent / "data" / "reproduction_results.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
