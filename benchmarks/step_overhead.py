"""How much does the Pruner add to a training step?

Times ``zero_grad; loss (+ pruner.penalty()); backward (; pruner.regularize()); opt.step(); pruner.step()``
against the same loop without the pruner, on twin models (same init, same batches) with the same optimizer
(SGD with momentum, or Adam). Blocks of ``--block`` steps alternate between the arms in a rotating order (A B C,
B C A, ...), so drift in machine speed hits them alike; arm C repeats A (an A/A control: how big a
difference noise alone makes). The per-round ratio B/A is reported as a median, with the overhead in
percent, over the rounds whose pruner block held no mask update (a gradual method re-ranks its weights
every half epoch, a few milliseconds); the ratio of total times (``total``, which spreads the updates'
cost over all steps) is reported beside it, then the A/A control's median and interquartile range (the
noise band), and ``inside``: the median time spent inside ``pruner.penalty()`` (or ``pruner.regularize()``)
and ``pruner.step()`` per step, as a share of the dense step (the direct cost, without the loss term's
backward or cache effects). The ``l1_regularize*`` recipes are the ``l1_penalty*`` ones applied by
``regularize()`` after backward, as the CLI's fine-tuning loop does.

Schedules use the step count of mnist5k at batch 64 (63 steps per epoch), so the gradual methods
recompute their masks at the rate a real run does (every half epoch), not only once. The batches are the
first ``--block`` training batches of the model's dataset (mnist5k; scikit-learn's digits for ``mlp``),
so the methods act as in a real run (``--data random``: standard-normal inputs and random labels, where
nothing can be learned and L1 takes every weight to zero, so its per-layer floor runs at every proximal
step: the worst case, not the usual one).

Models: ``lenet_300_100`` and ``small_cnn`` (issue 12), and ``mlp`` (the 64-128-64-10 digits MLP, whose
whole step is so short that the pruner's fixed per-step cost shows most; issue 16). To compare with another version,
run that checkout's copy of this script (e.g. ``git archive HEAD | tar -x -C /tmp/head``) in turns with this
one: each run has its own A/A control.

    python benchmarks/step_overhead.py                      # everything, 1 thread (~7 minutes)
    python benchmarks/step_overhead.py --quick              # fewer rounds, LeNet and mlp only (~45 s)
    python benchmarks/step_overhead.py --models lenet_300_100 --recipes l1_proximal --optimizers adam --threads 1 2
    python benchmarks/step_overhead.py --models mlp lenet_300_100 --recipes l1_proximal l1_proximal_each l1_penalty \
        l1_proximal_group l1_penalty_group max_norm --rounds 20      # l1 and max_norm only (~2 min)
    python benchmarks/step_overhead.py --json > overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo
import sparsekit  # noqa: E402
from benchmarks._checks import check  # noqa: E402
from examples.models import lenet_300_100, mlp, small_cnn  # noqa: E402
from sparsekit.methods.magnitude import Magnitude  # noqa: E402

# name -> (factory, one sample's shape, the l1 group that fits its layers, default rounds)
MODELS: dict[str, tuple[Callable[[], nn.Module], list[int], str, int]] = {
    "lenet_300_100": (lenet_300_100, [784], "row", 30),
    "small_cnn": (small_cnn, [1, 28, 28], "channel", 8),
    "mlp": (mlp, [64], "row", 60),
}
# The built-in dataset each model is measured on (--data real).
DATA = {"lenet_300_100": "mnist5k", "small_cnn": "mnist5k", "mlp": "digits"}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}
STEPS_PER_EPOCH = 63  # mnist5k: 4000 training images / batch 64
GRADUAL = {"start_epoch": 0, "end_epoch": 5, "every": 0.5, "init_sparsity": 0.0, "curve": "cubic"}
RECIPES = {
    "magnitude": {"method": "magnitude", "sparsity": 0.9, "scope": "global", "schedule": GRADUAL},
    "taylor": {"method": "gradient", "criterion": "taylor", "sparsity": 0.9, "schedule": GRADUAL},
    "movement": {"method": "gradient", "criterion": "movement", "sparsity": 0.9, "schedule": GRADUAL},
    # scores summed on every 4th step (score_every): a quarter of the passes, a noisier estimate
    "taylor_every4": {
        "method": "gradient",
        "criterion": "taylor",
        "sparsity": 0.9,
        "schedule": GRADUAL,
        "score_every": 4,
    },
    "movement_every4": {
        "method": "gradient",
        "criterion": "movement",
        "sparsity": 0.9,
        "schedule": GRADUAL,
        "score_every": 4,
    },
    # strength is lambda (issue 16): the proximal step shrinks by lr * lambda, every 4 optimizer steps by default
    # (proximal_every); 1e-2 (Keras' l1(0.01)) with SGD lr 0.01 makes new zeros during the measured steps.
    "l1_proximal": {"method": "l1", "strength": 1e-2, "mode": "proximal", "remove_dead": False},
    "l1_proximal_each": {
        "method": "l1",
        "strength": 1e-2,
        "mode": "proximal",
        "remove_dead": False,
        "proximal_every": 1,
    },
    "l1_penalty": {"method": "l1", "strength": 1e-2, "mode": "penalty", "remove_dead": False},
    # group: row for Linear layers, channel for the convolutions (see group_entries)
    "l1_proximal_group": {"method": "l1", "strength": 0.1, "mode": "proximal", "remove_dead": False},
    "l1_penalty_group": {"method": "l1", "strength": 0.1, "mode": "penalty", "remove_dead": False},
    # the same penalties applied by pruner.regularize() after backward (as the CLI's loop does) instead of
    # pruner.penalty() in the loss
    "l1_regularize": {"method": "l1", "strength": 1e-2, "mode": "penalty", "remove_dead": False},
    "l1_regularize_group": {"method": "l1", "strength": 0.1, "mode": "penalty", "remove_dead": False},
    "max_norm": {"method": "max_norm", "max_value": 3.0},
    # Channels go at the start of epoch 6, after the measured steps (310 on LeNet, 90 on small_cnn with the
    # default rounds): a smaller model would no longer be a like-for-like comparison. This times the
    # per-step cost of a structural method between its removals.
    "structured": {
        "method": "structured",
        "ratio": 0.5,
        "importance": "l2",
        "scope": "layer",
        "schedule": {"start_epoch": 6, "end_epoch": 6},
    },
}
QUICK_MODELS = ["lenet_300_100", "mlp"]
QUICK_ROUNDS = {"lenet_300_100": 12, "mlp": 20}


def entries(recipe: str, model_name: str) -> list[dict]:
    """The recipe's ``pruning`` list for ``model_name``: a group-lasso entry becomes one entry per layer kind
    (``row`` over the Linear layers, ``channel`` over the convolutions)."""
    entry = dict(RECIPES[recipe])
    if not recipe.endswith("_group"):
        return [entry]
    if MODELS[model_name][2] == "row":
        return [{**entry, "group": "row"}]
    return [
        {**entry, "group": "channel", "layers": {"types": ["Conv2d"]}},
        {**entry, "group": "row", "layers": {"types": ["Linear"]}},
    ]


def make_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    pruner: sparsekit.Pruner | None,
    inside: list[float] | None = None,
    regularize: bool = False,
):
    """One training step; with a pruner, the time spent in its calls is appended to ``inside`` (seconds).
    ``regularize``: the penalty's gradient by ``pruner.regularize()`` after backward, not ``penalty()`` in the loss."""
    clock = time.perf_counter

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        spent = 0.0
        if pruner is not None and not regularize:
            t0 = clock()
            penalty = pruner.penalty()
            spent = clock() - t0
            loss = loss + penalty
        loss.backward()
        if pruner is not None and regularize:
            t0 = clock()
            pruner.regularize()
            spent = clock() - t0
        opt.step()
        if pruner is not None and inside is not None:
            t0 = clock()
            pruner.step()
            if pruner.structure_changed:  # only with --rounds past the structured recipe's epoch 6
                pruner.update_optimizer(opt)
            inside.append(spent + clock() - t0)

    return step


def updates_masks(pruner: sparsekit.Pruner, step: int) -> bool:
    """Whether ``pruner.step()`` at ``step`` recomputes a gradual method's masks (a ranking: milliseconds)."""
    return any(isinstance(m, Magnitude) and m.schedule.is_update(step) for m in pruner.methods)


def _batches(model_name: str, sample: list[int], args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The block's ``--block`` training batches: the first ones of the model's dataset (``--data real``), or
    seeded standard-normal inputs with uniform random labels (``--data random``)."""
    if args.data == "random":
        g = torch.Generator().manual_seed(0)
        return [
            (torch.randn(args.batch_size, *sample, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g))
            for _ in range(args.block)
        ]
    from sparsekit.data import load_data

    bundle = load_data(DATA[model_name], batch_size=args.batch_size, seed=0, input_shape=[1, *sample])
    batches = []
    for x, y in bundle.train:
        batches.append((x, y))
        if len(batches) == args.block:
            return batches
    raise SystemExit(f"{DATA[model_name]} has fewer than {args.block} batches of {args.batch_size}")


def _iqr(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def measure(model_name: str, recipe_name: str, optimizer: str, rounds: int, args: argparse.Namespace) -> dict:
    """Time arms A (dense), B (with the pruner) and C (dense again) in alternating blocks."""
    factory, sample, _, _ = MODELS[model_name]
    batches = _batches(model_name, sample, args)
    recipe = sparsekit.Recipe(**{"finetune": {"epochs": 6}, "pruning": entries(recipe_name, model_name)})
    arms = {}
    inside: list[float] = []  # seconds spent in the pruner's calls, per step of arm B
    pruner = None
    for arm in ("A", "B", "C"):
        torch.manual_seed(0)
        model = factory()
        opt = OPTIMIZERS[optimizer](model.parameters())
        context = {"input_shape": [1, *sample]}  # structured traces the model
        if arm == "B":
            pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=STEPS_PER_EPOCH, context=context)
        arms[arm] = make_step(model, opt, pruner if arm == "B" else None, inside, "regularize" in recipe_name)
    assert pruner is not None

    def block(arm: str) -> float:
        start = time.perf_counter()
        for x, y in batches:
            arms[arm](x, y)
        return (time.perf_counter() - start) / len(batches)

    for arm in arms:  # warm-up: allocator, optimizer state, first mask update
        block(arm)
    del inside[:]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    updated: list[bool] = []  # per round: whether arm B's block recomputed masks
    order = list(arms)
    for r in range(rounds):
        for arm in order[r % 3 :] + order[: r % 3]:
            first = pruner.step_count + 1
            times[arm].append(block(arm))
            if arm == "B":
                updated.append(any(updates_masks(pruner, s) for s in range(first, pruner.step_count + 1)))
    ratio = [b / a for a, b in zip(times["A"], times["B"], strict=True)]
    control = [c / a for a, c in zip(times["A"], times["C"], strict=True)]
    # Rounds whose B block held a mask update (a few ms once every half epoch) would skew the median toward
    # them: the per-step overhead is the median of the other rounds, and `total` spreads the updates' cost.
    between = [r for r, u in zip(ratio, updated, strict=True) if not u] or ratio
    med = statistics.median(between)
    dense = statistics.median(times["A"])
    return {
        "model": model_name,
        "recipe": recipe_name,
        "optimizer": optimizer,
        "threads": torch.get_num_threads(),
        "dense_ms": 1e3 * statistics.median(times["A"]),
        "pruner_ms": 1e3 * statistics.median(times["B"]),
        "ratio": med,
        "overhead_pct": 100 * (med - 1),
        "ratio_iqr": _iqr(between) if len(between) > 1 else [med, med],
        "rounds_with_update": sum(updated),
        "inside_us": 1e6 * statistics.median(inside),
        "inside_pct": 100 * statistics.median(inside) / dense,
        "total_overhead_pct": 100 * (sum(times["B"]) / sum(times["A"]) - 1),
        "control_ratio": statistics.median(control),
        "control_iqr": _iqr(control),
        "pruner_steps": (rounds + 1) * args.block,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="default: all (--quick: lenet_300_100 mlp)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--data",
        choices=["real", "random"],
        default="real",
        help="real (default): batches of the model's dataset (mnist5k; digits for mlp), the regime of a real run; "
        "random: standard-normal inputs and random labels, where nothing can be learned and L1 drives every "
        "weight to zero (its per-layer floor then runs at every proximal step)",
    )
    ap.add_argument("--block", type=int, default=10, help="steps per timed block")
    ap.add_argument(
        "--rounds", type=int, default=0, help="A/B/C rounds (default: 30 lenet_300_100, 8 small_cnn, 60 mlp)"
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds, lenet_300_100 and mlp only: a smoke run")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch thread counts to measure, one table each (0: torch's choice; 1, the default, is the least "
        "disturbed by other processes: with every core busy, 2 threads ran 3-10x slower in both arms)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = ap.parse_args(argv)
    check(ap, args, {"batch_size": 1, "block": 1, "rounds": 0, "threads": 0})
    models = args.models or (QUICK_MODELS if args.quick else list(MODELS))

    rows = []
    default_threads = torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads if threads > 0 else default_threads)
        if not args.json:
            print(
                f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, blocks of "
                f"{args.block} steps; overhead: median of per-round ratios B/A (IQR) over the rounds without a "
                "mask update; total: ratio of summed times (updates included); A/A: the control's median ratio "
                "(IQR), the noise band; inside: median time in pruner.penalty() (or regularize()) + pruner.step() "
                "per step / dense step"
            )
            print(
                f"{'model':<14} {'recipe':<18} {'opt':<5} {'dense ms':>9} {'with ms':>8} {'overhead':>9} "
                f"{'IQR':>15} {'total':>7} {'A/A':>7} {'A/A IQR':>15} {'inside':>7}"
            )
        for model_name in models:
            for optimizer in args.optimizers:
                for recipe in args.recipes:
                    rounds = args.rounds or (QUICK_ROUNDS if args.quick else {}).get(model_name, MODELS[model_name][3])
                    row = measure(model_name, recipe, optimizer, rounds, args)
                    rows.append(row)
                    if not args.json:
                        lo, hi = (100 * (r - 1) for r in row["ratio_iqr"])
                        clo, chi = (100 * (r - 1) for r in row["control_iqr"])
                        print(
                            f"{model_name:<14} {recipe:<18} {optimizer:<5} {row['dense_ms']:9.2f} "
                            f"{row['pruner_ms']:8.2f} {row['overhead_pct']:+8.1f}% {lo:+6.1f}..{hi:+5.1f}% "
                            f"{row['total_overhead_pct']:+6.1f}% {100 * (row['control_ratio'] - 1):+6.1f}% "
                            f"{clo:+6.1f}..{chi:+5.1f}% {row['inside_pct']:6.1f}%",
                            flush=True,
                        )
    torch.set_num_threads(default_threads)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "results": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
