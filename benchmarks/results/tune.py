"""How the shipped recipes' settings were chosen: candidate settings compared on the validation split.

Each round is a list of candidate arms (recipe overrides, ``key.path=value``) run at every sparsity /
ratio of one model, per seed on the same dense model and training images as the results suite
(:func:`benchmarks.results.arms.mnist_split`), next to the baseline (torch.nn.utils.prune one shot, or
Torch-Pruning used directly). Only validation accuracy is computed: the test split is never evaluated
here, so nothing chosen from this table has seen it.

    python -m benchmarks.results.tune lenet            # LeNet-300-100, 80/90/95/98%, 3 seeds
    python -m benchmarks.results.tune cnn              # small_cnn unstructured 90/95%
    python -m benchmarks.results.tune structured       # small_cnn structured 30/50/70%
    python -m benchmarks.results.tune lenet --seeds 3 --out benchmarks/results/tuning

The candidates of every round, and what was chosen from them, are in benchmarks/results/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from . import arms

OUT = Path(__file__).resolve().parent / "tuning"

# The recipe each model's candidates start from, its input shape, dense epochs, the values tried.
SETUPS: dict[str, dict[str, Any]] = {
    "lenet": {
        "recipe": "lenet-gradual-magnitude-90",
        "factory": "lenet_300_100",
        "shape": [1, 784],
        "dense_epochs": 5,
        "values": [0.8, 0.9, 0.95, 0.98],
        "key": "pruning.0.sparsity",
        "baseline": "torch",
    },
    "cnn": {
        "recipe": "cnn-layer-magnitude-80",
        "factory": "small_cnn",
        "shape": [1, 1, 28, 28],
        "dense_epochs": 4,
        "values": [0.9, 0.95],
        "key": "pruning.0.sparsity",
        "baseline": "torch",
    },
    "structured": {
        "recipe": "cnn-structured-50",
        "factory": "small_cnn",
        "shape": [1, 1, 28, 28],
        "dense_epochs": 4,
        "values": [0.3, 0.5, 0.7],
        "key": "pruning.0.ratio",
        "baseline": "torch-pruning",
    },
}

# Candidate overrides per model (first the recipe as shipped before tuning, when listed).
CANDIDATES: dict[str, dict[str, list[str]]] = {
    "lenet": {
        "v0: end 5, every 1/2": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 5, every: 0.5}",
            "finetune.distill=null",
        ],
        "every 1/8": ["pruning.0.schedule={start_epoch: 0, end_epoch: 5, every: 0.125}", "finetune.distill=null"],
        "end 3, every 1/8": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 3, every: 0.125}",
            "finetune.distill=null",
        ],
        "end 3, every 1/8, kd 0.5/T2": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 3, every: 0.125}",
            "finetune.distill={weight: 0.5, temperature: 2}",
        ],
        "end 3, every 1/8, kd 0.9/T4": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 3, every: 0.125}",
            "finetune.distill={weight: 0.9, temperature: 4}",
        ],
        "end 5, every 1/8, kd 0.5/T2": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 5, every: 0.125}",
            "finetune.distill={weight: 0.5, temperature: 2}",
        ],
        # round 2: time at the final sparsity (end 3 was best at 95/98%), and a light distillation term
        "end 2, every 1/8": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 2, every: 0.125}",
            "finetune.distill=null",
        ],
        "end 1, every 1/8": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 1, every: 0.125}",
            "finetune.distill=null",
        ],
        "end 2, every 1/16": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 2, every: 0.0625}",
            "finetune.distill=null",
        ],
        "oneshot": ["pruning.0.schedule=oneshot", "finetune.distill=null"],
        "end 3, every 1/8, kd 0.2/T1": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 3, every: 0.125}",
            "finetune.distill={weight: 0.2, temperature: 1}",
        ],
        # round 3 (tuning/hold/, after the baselines' batch-order fix; both pixel scales): the rate held at its
        # start until the target is reached, cosine over the 5 recovery epochs, against the cosine over all 8
        "end 3, every 1/8, cosine": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 3, every: 0.125}",
            "finetune.lr_schedule={name: cosine, hold_epochs: 0}",
            "finetune.distill=null",
        ],
        "end 3, every 1/8, hold 3": [
            "pruning.0.schedule={start_epoch: 0, end_epoch: 3, every: 0.125}",
            "finetune.lr_schedule={name: cosine, hold_epochs: 3}",
            "finetune.distill=null",
        ],
    },
    "cnn": {
        "v0: layer, end 3, every 1/2": [],
        "global, end 3, every 1/8": ["pruning.0.scope=global", "pruning.0.schedule.every=0.125"],
        "layer, end 2, every 1/8": ["pruning.0.schedule={start_epoch: 0, end_epoch: 2, every: 0.125}"],
        "global, end 2, every 1/8, kd 0.5/T2": [
            "pruning.0.scope=global",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 2, every: 0.125}",
            "finetune.distill={weight: 0.5, temperature: 2}",
        ],
        # round 2: which of scope and update frequency made the difference; earlier end without distillation
        "global, end 3, every 1/2": ["pruning.0.scope=global"],
        "global, end 2, every 1/8": [
            "pruning.0.scope=global",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 2, every: 0.125}",
        ],
    },
    "structured": {
        # round 3 (round_to 16, the default since): one step at epoch 0, now the shipped recipe, against the gradual
        # schedule it replaced
        "v0: 3 steps over epochs 0-2": ["pruning.0.steps=3", "pruning.0.schedule={start_epoch: 0, end_epoch: 2}"],
        "1 step at epoch 0": ["pruning.0.steps=1", "pruning.0.schedule={start_epoch: 0, end_epoch: 0}"],
        "3 steps, kd 0.5/T2": [
            "pruning.0.steps=3",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 2}",
            "finetune.distill={weight: 0.5, temperature: 2}",
        ],
        # round 2: removal events closer together; L1 importance
        "3 steps over epochs 0-1": ["pruning.0.steps=3", "pruning.0.schedule={start_epoch: 0, end_epoch: 1}"],
        "3 steps over epochs 0-2, l1": [
            "pruning.0.steps=3",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 2}",
            "pruning.0.importance=l1",
        ],
        # round 3 (tuning/distill/): distillation from the dense model on the shipped one-step schedule
        "1 step at epoch 0, kd 0.5/T2": [
            "pruning.0.steps=1",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 0}",
            "finetune.distill={weight: 0.5, temperature: 2}",
        ],
        "1 step at epoch 0, kd 0.9/T4": [
            "pruning.0.steps=1",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 0}",
            "finetune.distill={weight: 0.9, temperature: 4}",
        ],
        # round 4 (tuning/taylor/): first-order Taylor importance (Molchanov et al., 2019) from the gradients of a
        # quarter epoch of fine-tuning before the one removal, and L2 removed at the same point (the control)
        "taylor, 1 step at epoch 0.25": [
            "pruning.0.steps=1",
            "pruning.0.importance=taylor",
            "pruning.0.schedule={start_epoch: 0.25, end_epoch: 0.25}",
        ],
        "l2, 1 step at epoch 0.25": [
            "pruning.0.steps=1",
            "pruning.0.schedule={start_epoch: 0.25, end_epoch: 0.25}",
        ],
        # round 5 (tuning/lr/): the learning rate after the one removal, as LeNet's round 3 found a held rate helps:
        # held at its start for 1 or 2 of the 6 epochs, then cosine; or twice the rate, with the cosine over all 6
        "1 step at epoch 0, hold 1": [
            "pruning.0.steps=1",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 0}",
            "finetune.lr_schedule={name: cosine, hold_epochs: 1}",
        ],
        "1 step at epoch 0, hold 2": [
            "pruning.0.steps=1",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 0}",
            "finetune.lr_schedule={name: cosine, hold_epochs: 2}",
        ],
        "1 step at epoch 0, lr 1e-3": [
            "pruning.0.steps=1",
            "pruning.0.schedule={start_epoch: 0, end_epoch: 0}",
            "finetune.optimizer.lr=0.001",
        ],
    },
}


# The fine-tuning settings the baselines' plain loop reads (arms._plain_finetune): not finetune.distill, which it
# leaves out, so "--baseline-as '...kd 0.5/T2'" ran the baseline undistilled under a distilled arm's name
BASELINE_READS = ("finetune.optimizer", "finetune.lr_schedule", "finetune.epochs")


def baseline_settings(model_name: str, candidate: str) -> list[str]:
    """The overrides of ``candidate`` that the baseline takes for ``--baseline-as``: those it reads."""
    return [o for o in CANDIDATES[model_name][candidate] if o.startswith(BASELINE_READS)]


def run_seed(job: tuple[str, int, dict[str, list[str]], bool, str, list[str]]) -> list[dict[str, Any]]:
    """Every candidate and the baseline at every value, for one seed: validation accuracy. Where the shipped recipe
    holds its learning rate (``lr_schedule.hold_epochs``), torch's one shot runs twice: with the schedule over all
    the epochs (the suite's baseline) and with the recipe's held schedule (``torch (held LR)``)."""
    import torch

    from examples import models

    model_name, seed, candidates, with_baseline, normalize, baseline_as = job
    torch.set_num_threads(1)
    setup = SETUPS[model_name]
    split = arms.mnist_split(seed, setup["shape"], normalize)
    torch.manual_seed(seed)
    dense = arms.train_dense(getattr(models, setup["factory"])(), split, setup["dense_epochs"])
    rows = [{"seed": seed, "arm": "dense", "value": 0.0, "val_accuracy": arms.accuracy(dense, split, "val")}]

    def row(arm: str, value: float, run: Any, *args: Any, **kwargs: Any) -> None:
        """Run ``run(*args, **kwargs)`` (a pruned model), timed, and add its validation accuracy as ``arm``'s row."""
        start = time.perf_counter()
        pruned = run(*args, **kwargs)
        rows.append(
            {
                "seed": seed,
                "arm": arm,
                "value": value,
                "val_accuracy": arms.accuracy(pruned, split, "val"),
                "seconds": time.perf_counter() - start,
            }
        )

    def baseline(recipe: Any, value: float, held_lr: bool = False) -> Any:
        if setup["baseline"] == "torch":
            return arms.run_torch_prune(dense, recipe, split, value, held_lr=held_lr)
        return arms.run_torch_pruning(dense, recipe, split, setup["shape"], held_lr=held_lr)

    for value in setup["values"]:
        base = arms.shipped(setup["recipe"], seed, [f"{setup['key']}={value}"])
        if with_baseline:
            row(setup["baseline"], value, baseline, base, value)
            if setup["baseline"] == "torch" and base.finetune.lr_schedule.hold_epochs:
                row("torch (held LR)", value, baseline, base, value, held_lr=True)
        for name in baseline_as:
            # The baseline with a candidate's fine-tuning settings (its finetune.* overrides, the schedule exactly as
            # the candidate's): whether what helps sparsekit's arm helps the baseline as well.
            tuned = arms.shipped(
                setup["recipe"], seed, [f"{setup['key']}={value}", *baseline_settings(model_name, name)]
            )
            row(f"{setup['baseline']}, {name.split(', ', 1)[-1]}", value, baseline, tuned, value, held_lr=True)
        for name, overrides in candidates.items():
            recipe = arms.shipped(setup["recipe"], seed, [f"{setup['key']}={value}", *overrides])
            row(name, value, arms.run_sparsekit, dense, recipe, split)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per arm, one column per value: median validation accuracy (per-seed values)."""
    values = sorted({r["value"] for r in rows if r["arm"] != "dense"})
    dense = sorted(r["val_accuracy"] for r in rows if r["arm"] == "dense")
    lines = [
        f"dense validation accuracy per seed: {', '.join(f'{a:.3f}' for a in dense)}",
        "",
        "| arm | " + " | ".join(f"{v:g}" for v in values) + " |",
        "|---|" + "---:|" * len(values),
    ]
    for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != "dense"):
        cells = []
        for v in values:
            accs = [r["val_accuracy"] for r in rows if r["arm"] == arm and r["value"] == v]
            med = arms.summary(accs)["median"]
            cells.append(f"{med:.3f} ({' '.join(f'{a:.3f}' for a in accs)})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(SETUPS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="processes (at most 2; one torch thread each)")
    ap.add_argument("--only", action="append", default=None, help="run only this candidate (repeatable)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--baseline-as",
        action="append",
        default=[],
        metavar="CANDIDATE",
        help="also run the baseline with this candidate's finetune.* settings (repeatable)",
    )
    ap.add_argument(
        "--no-candidates", action="store_true", help="run the baseline (and --baseline-as) alone, no candidate"
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--normalize",
        choices=["standard", "none"],
        default="standard",
        help="pixels standardized (the suite's inputs) or in [0, 1] (the CLI's default)",
    )
    args = ap.parse_args(argv)
    candidates = CANDIDATES[args.model]
    if args.only:
        # A misspelt name used to match nothing and run the baseline alone, silently: name it instead.
        unknown = [name for name in args.only if name not in candidates]
        if unknown:
            ap.error(
                f"--only {unknown[0]!r} is not a {args.model} candidate; they are: "
                + ", ".join(repr(c) for c in candidates)
            )
        candidates = {k: v for k, v in candidates.items() if k in args.only}
    if args.no_candidates:
        if args.only:
            ap.error("--only chooses candidates to run and --no-candidates runs none: give one of them")
        candidates = {}
    unknown = [name for name in args.baseline_as if name not in CANDIDATES[args.model]]
    if unknown:
        ap.error(f"--baseline-as {unknown[0]!r} is not a {args.model} candidate")
    # A candidate whose settings the baseline does not read (its pruning schedule, distillation) ran the baseline
    # itself, named as the candidate ("torch, end 3, every 1/8": no schedule of its own), beside the real one.
    same = [name for name in args.baseline_as if not baseline_settings(args.model, name)]
    if same:
        ap.error(
            f"--baseline-as {same[0]!r} changes nothing the baseline's fine-tuning reads (its optimizer, lr_schedule "
            "and epochs): that arm would be the baseline itself; give a candidate that sets one of them"
        )
    args.baseline_as = list(dict.fromkeys(args.baseline_as))  # (one given twice: its rows once per seed)
    path = args.out / f"{args.model}.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    # This run's rows replace the file's rows of the same arms and keep the others beside them in one table: rows on
    # the other pixel scale (the default --out holds standardized ones) made a table of arms trained on different
    # inputs, silently. Refused before any training. (Rows written before the field existed are standardized.)
    scales = {r.get("normalize", "standard") for r in previous} - {args.normalize}
    if scales:
        raise SystemExit(
            f"{path}: holds rows with --normalize {', '.join(sorted(scales))}, and this run's are --normalize "
            f"{args.normalize}: one table compares arms on one pixel scale; give another --out"
        )
    started = time.perf_counter()
    jobs = [
        (args.model, seed, candidates, not args.no_baseline, args.normalize, args.baseline_as)
        for seed in range(args.seeds)
    ]
    workers = max(1, min(args.workers, 2, len(jobs)))
    if workers == 1:
        results = [run_seed(j) for j in jobs]
    else:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(run_seed, jobs)
    rows = [{**r, "normalize": args.normalize} for part in results for r in part]
    args.out.mkdir(parents=True, exist_ok=True)
    keep = [r for r in previous if r["arm"] not in {r2["arm"] for r2 in rows}]
    path.write_text(json.dumps(keep + rows, indent=1) + "\n")
    print(table(keep + rows))
    print(f"\n{time.perf_counter() - started:.0f} s; {path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
