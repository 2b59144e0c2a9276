"""How much does the Pruner add to a training step?

Times ``zero_grad; loss (+ pruner.penalty()); backward; opt.step(); pruner.step()`` against the same
loop without the pruner, on two twin models (same init, same batches). Blocks of ``--block`` steps
alternate between the arms, in a rotating order (A B C, B C A, ...), so drift in machine speed hits
both alike; arm C repeats A (an A/A control showing how big a difference noise alone makes).
The per-round ratio B/A is reported as a median, with the overhead in percent; the median mostly
skips the rare rounds holding a mask update, so the ratio of total times (``total``, which spreads
the updates' cost over all steps) is reported beside it.

Schedules use the step count of mnist5k at batch 64 (63 steps per epoch), so the gradual methods
recompute their masks at the rate a real run does (every half epoch), not only once.

    python benchmarks/step_overhead.py                  # both models, all recipes (~2 minutes, 1 thread)
    python benchmarks/step_overhead.py --models lenet_300_100 --recipes l1 --rounds 20 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

import sparsekit  # noqa: E402
from examples.models import lenet_300_100, small_cnn  # noqa: E402

MODELS = {"lenet_300_100": (lenet_300_100, [784]), "small_cnn": (small_cnn, [1, 28, 28])}
STEPS_PER_EPOCH = 63  # mnist5k: 4000 training images / batch 64
GRADUAL = {"start_epoch": 0, "end_epoch": 5, "every": 0.5, "init_sparsity": 0.0, "curve": "cubic"}
RECIPES = {
    "magnitude": {"method": "magnitude", "sparsity": 0.9, "scope": "global", "schedule": GRADUAL},
    "gradient": {"method": "gradient", "criterion": "taylor", "sparsity": 0.9, "schedule": GRADUAL},
    "l1": {"method": "l1", "strength": 1e-4, "mode": "proximal", "remove_dead": False},
    "max_norm": {"method": "max_norm", "max_value": 3.0},
}


def make_step(model: nn.Module, opt: torch.optim.Optimizer, pruner: sparsekit.Pruner | None):
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        if pruner is not None:
            loss = loss + pruner.penalty()
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step()

    return step


def measure(model_name: str, method: str, args: argparse.Namespace) -> dict:
    factory, sample = MODELS[model_name]
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, *sample, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g))
        for _ in range(args.block)
    ]
    recipe = sparsekit.Recipe(**{"finetune": {"epochs": 6}, "pruning": [RECIPES[method]]})
    arms = {}
    for arm in ("A", "B", "C"):
        torch.manual_seed(0)
        model = factory()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=STEPS_PER_EPOCH) if arm == "B" else None
        arms[arm] = make_step(model, opt, pruner)

    def block(arm: str) -> float:
        start = time.perf_counter()
        for x, y in batches:
            arms[arm](x, y)
        return (time.perf_counter() - start) / len(batches)

    for arm in arms:  # warm-up: allocator, optimizer state, first mask update
        block(arm)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    order = list(arms)
    for r in range(args.rounds):
        for arm in order[r % 3 :] + order[: r % 3]:
            times[arm].append(block(arm))
    ratio = [b / a for a, b in zip(times["A"], times["B"], strict=True)]
    control = [c / a for a, c in zip(times["A"], times["C"], strict=True)]
    med = statistics.median(ratio)
    return {
        "model": model_name,
        "recipe": method,
        "dense_ms": 1e3 * statistics.median(times["A"]),
        "pruner_ms": 1e3 * statistics.median(times["B"]),
        "ratio": med,
        "overhead_pct": 100 * (med - 1),
        "ratio_iqr": [statistics.quantiles(ratio, n=4)[0], statistics.quantiles(ratio, n=4)[2]],
        "total_overhead_pct": 100 * (sum(times["B"]) / sum(times["A"]) - 1),
        "control_ratio": statistics.median(control),
        "pruner_steps": (args.rounds + 1) * args.block,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--block", type=int, default=10, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=0, help="A/B/C rounds (default: 30 lenet, 8 small_cnn)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's choice; 1, the default, is the least disturbed by other "
        "processes: with every core busy, 2 threads ran 3-10x slower in both arms)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rows = []
    if not args.json:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
            f"blocks of {args.block} steps, median of per-round ratios (A/A control: noise level)"
        )
        print(
            f"{'model':<14} {'recipe':<10} {'dense ms':>9} {'with ms':>10} {'ratio':>7} {'overhead':>9} "
            f"{'IQR':>13} {'total':>7} {'A/A':>6}"
        )
    for model_name in args.models:
        for method in args.recipes:
            ns = argparse.Namespace(**vars(args))
            ns.rounds = args.rounds or (30 if model_name == "lenet_300_100" else 8)
            row = measure(model_name, method, ns)
            rows.append(row)
            if not args.json:
                lo, hi = row["ratio_iqr"]
                print(
                    f"{model_name:<14} {method:<10} {row['dense_ms']:9.2f} {row['pruner_ms']:10.2f} "
                    f"{row['ratio']:7.3f} {row['overhead_pct']:8.1f}% {lo:6.3f}-{hi:6.3f} "
                    f"{row['total_overhead_pct']:6.1f}% {row['control_ratio']:6.3f}",
                    flush=True,
                )
    if args.json:
        doc = {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": rows}
        print(json.dumps(doc, indent=1))
    return rows


if __name__ == "__main__":
    main()
