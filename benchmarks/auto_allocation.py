"""Does ``sparsity: auto`` / ``ratio: auto`` beat one value for every layer, after the same fine-tuning?

scikit-learn's 8x8 digits (bundled with scikit-learn, no download), split once by a fixed permutation into
1000 train / 400 validation / 397 test images. Everything chosen is chosen on train and validation: the
dense training, the sensitivity analysis and allocation (validation split), the uniform ratio of the
structured pair (from MACs alone, no data). The test split is only evaluated, once per pruned model.

Unstructured, ``examples.models:mlp`` (64-128-64-10, 17k weights) trained dense, then pruned to 90% of its
weights three ways, each with the same fine-tuning (``--epochs`` of Adam at ``--lr``, cosine schedule; the
sparsity rises along the same gradual cubic schedule):

- ``auto``: ``sparsity: auto, target: 0.9``, the per-layer sparsities allocated by
  :func:`sparsekit.allocation.allocate_with_details` from :func:`sparsekit.sensitivity.analyze` on the
  validation split (least predicted loss increase: the sum of each layer's increase when pruned alone);
- ``uniform``: ``sparsity: 0.9, scope: layer``, every layer at 90% (head included);
- ``global``: ``sparsity: 0.9, scope: global``, one magnitude ranking over all layers.

Structured, ``examples.models:small_cnn`` (``image_size=8``, input ``[1, 1, 8, 8]``), channels removed at
the first step of the same fine-tuning: ``ratio: auto, target_macs: 0.5`` against a uniform ``ratio`` (every group
the same fraction of its channels), the smallest ratio on a 0.01 grid whose pruned model keeps at most the
same 50% of the dense MACs (measured by pruning a copy; MACs depend on the channel counts only).

Per seed (``--seeds``, default 3), one dense model per architecture is trained, and the arms run on copies
of it one after the other (A B C, A B C, ...), so a drift in machine speed or a seed's luck hits every arm.
Reported per arm: the median and min-max of test accuracy over the seeds, the achieved overall sparsity
(asserted to be 0.9 within rounding) or MACs fraction, and the per-layer values auto chose.

    python benchmarks/auto_allocation.py                  # 3 seeds, ~30 s on 2 cores (1 thread)
    python benchmarks/auto_allocation.py --quick          # 1 seed, fewer epochs: a smoke test (~10 s; JSON in $TMPDIR)
    python benchmarks/auto_allocation.py --seeds 5 --out /tmp/auto.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

import sparsekit  # noqa: E402
from examples.models import mlp, small_cnn  # noqa: E402
from sparsekit.allocation import allocate_with_details  # noqa: E402
from sparsekit.layers import prunable_layers  # noqa: E402
from sparsekit.masks import weight_of  # noqa: E402
from sparsekit.sensitivity import analyze, auto_entries  # noqa: E402
from sparsekit.stats import layer_macs  # noqa: E402
from sparsekit.train import evaluate  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "auto_allocation.json"
# A --quick smoke run must not replace the measured JSON behind the README's table: it goes to a new temp folder
# (one fixed temp name would let concurrent runs overwrite each other's).
QUICK_PREFIX = "sparsekit-auto-allocation-"
TARGET_SPARSITY = 0.9
TARGET_MACS = 0.5
MLP_SHAPE = [1, 64]
CNN_SHAPE = [1, 1, 8, 8]
BATCH = 64


def digits(image: bool) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """1000 train / 400 validation / 397 test, one fixed permutation (the same for every seed and arm)."""
    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x / 16.0, dtype=torch.float32)
    xt = xt.view(-1, 1, 8, 8) if image else xt
    yt = torch.tensor(y)
    perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))
    parts = perm[:1000], perm[1000:1400], perm[1400:]
    train, val, test = (TensorDataset(xt[p], yt[p]) for p in parts)
    return train, val, test


def loader(ds: TensorDataset, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=BATCH, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def train_dense(model: nn.Module, ds: TensorDataset, epochs: int, seed: int) -> nn.Module:
    """Plain Adam (lr 3e-3) on the training split."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader(ds, shuffle=True, seed=seed):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def finetune_recipe(entry: dict[str, Any], args: argparse.Namespace, seed: int, shape: list[int]) -> sparsekit.Recipe:
    """The same fine-tuning for every arm: ``args.epochs`` of Adam, cosine schedule, on the CPU."""
    return sparsekit.Recipe(
        **{
            "seed": seed,
            "model": {"input_shape": shape},
            "finetune": {
                "epochs": args.epochs,
                "optimizer": {"name": "adam", "lr": args.lr},
                "lr_schedule": {"name": "cosine"},
                "device": "cpu",
            },
            "pruning": [entry],
        }
    )


def run_arm(dense: nn.Module, recipe: sparsekit.Recipe, train_ds: TensorDataset, val_ds: TensorDataset) -> nn.Module:
    """Fine-tune a copy of ``dense`` under ``recipe`` (validation split for the per-epoch metrics), finalize."""
    model = copy.deepcopy(dense)
    train_loader = loader(train_ds, shuffle=True, seed=recipe.seed)
    model, _, pruner = sparsekit.finetune(model, recipe, train_loader, loader(val_ds), progress=False)
    return pruner.finalize().eval()


def allocate(dense: nn.Module, recipe: sparsekit.Recipe, val_ds: TensorDataset, shape: list[int]) -> tuple[Any, Any]:
    """Sensitivity analysis of the ``auto`` entries on the validation split, then the allocation."""
    table = analyze(dense, recipe, loader(val_ds), input_shape=shape, entries=auto_entries(recipe))
    allocated, details = allocate_with_details(dense, recipe, table, input_shape=shape)
    return allocated, details[0]


def layer_sparsities(model: nn.Module) -> dict[str, float]:
    out = {}
    for name, m in prunable_layers(model).items():
        w = weight_of(m)
        out[name] = int((w == 0).sum()) / w.numel()
    return out


def zeros_and_total(model: nn.Module) -> tuple[int, int]:
    zeros = total = 0
    for m in prunable_layers(model).values():
        w = weight_of(m)
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros, total


def macs_fraction(model: nn.Module, dense_macs: int) -> float:
    return sum(layer_macs(model, CNN_SHAPE).values()) / dense_macs


def channels(model: nn.Module) -> dict[str, int]:
    return {n: int(weight_of(m).shape[0]) for n, m in prunable_layers(model).items()}


def uniform_ratio_for_macs(target: float) -> tuple[float, float]:
    """The smallest uniform ratio (0.01 grid) whose pruned small_cnn keeps at most ``target`` of the dense MACs,
    and that fraction. Architecture only: a fresh model, one-shot removal, no data."""
    fresh = small_cnn(image_size=8)
    dense_macs = sum(layer_macs(fresh, CNN_SHAPE).values())
    for step in range(1, 90):
        ratio = step / 100
        recipe = sparsekit.Recipe(
            **{"model": {"input_shape": CNN_SHAPE}, "pruning": [{"method": "structured", "ratio": ratio}]}
        )
        pruned = sparsekit.Pruner(copy.deepcopy(fresh), recipe, steps_per_epoch=1).finalize()
        frac = macs_fraction(pruned, dense_macs)
        if frac <= target + 1e-9:
            return ratio, frac
    raise RuntimeError(f"no uniform ratio below 0.9 reaches {target} of the dense MACs")


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def output_path(out: Path | None, quick: bool) -> Path:
    """Where the JSON goes: ``--out`` if given, else the measured results' file, or for a smoke run a temp file."""
    if out is not None:
        return out
    return Path(tempfile.mkdtemp(prefix=QUICK_PREFIX)) / "auto_allocation.json" if quick else DEFAULT_OUT


def recorded_path(path: Path) -> str:
    """``path`` as the committed JSON records it: relative to the checkout when inside it, so the file names
    ``benchmarks/results/auto_allocation.json`` rather than the measuring machine's clone (``/tmp/...``)."""
    root = DEFAULT_OUT.parent.parent.parent
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds (dense models per architecture); default 3")
    ap.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs, every arm (default 8)")
    ap.add_argument("--dense-epochs", type=int, default=15, help="dense training epochs (default 15)")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate, Adam (default 1e-3)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 3 fine-tuning and 6 dense epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice; default 1)")
    ap.add_argument(
        "--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT}; --quick: a new temp folder)"
    )
    args = ap.parse_args(argv)
    args.out = output_path(args.out, args.quick)
    if args.quick:
        args.seeds, args.epochs, args.dense_epochs = 1, 3, 6
    if args.seeds < 1 or args.epochs < 2:
        ap.error("--seeds must be >= 1 and --epochs >= 2")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    # Gradual 0 -> 0.9 over the first half of the fine-tuning (cubic, four updates per epoch), then training
    # at the final sparsity: identical for the three unstructured arms.
    schedule = {"start_epoch": 0, "end_epoch": max(1, args.epochs // 2), "every": 0.25, "curve": "cubic"}
    unstructured = {
        "auto": {"method": "magnitude", "sparsity": "auto", "target": TARGET_SPARSITY, "schedule": schedule},
        "uniform": {"method": "magnitude", "sparsity": TARGET_SPARSITY, "scope": "layer", "schedule": schedule},
        "global": {"method": "magnitude", "sparsity": TARGET_SPARSITY, "scope": "global", "schedule": schedule},
    }
    uniform_ratio, uniform_macs = uniform_ratio_for_macs(TARGET_MACS)
    structured = {
        "auto": {"method": "structured", "ratio": "auto", "target_macs": TARGET_MACS},
        "uniform": {"method": "structured", "ratio": uniform_ratio},
    }

    flat, image = digits(image=False), digits(image=True)
    mlp_rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in unstructured}
    cnn_rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in structured}
    dense_rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        train_ds, val_ds, test_ds = flat
        dense = train_dense(mlp(), train_ds, args.dense_epochs, seed)
        dense_row = {"seed": seed, "mlp_test_accuracy": evaluate(dense, loader(test_ds))["accuracy"]}
        for arm, entry in unstructured.items():
            t0 = time.perf_counter()
            recipe = finetune_recipe(entry, args, seed, MLP_SHAPE)
            info = None
            if arm == "auto":
                recipe, info = allocate(dense, recipe, val_ds, MLP_SHAPE)
            pruned = run_arm(dense, recipe, train_ds, val_ds)
            zeros, total = zeros_and_total(pruned)
            assert abs(zeros - round(TARGET_SPARSITY * total)) <= len(prunable_layers(pruned)), (arm, zeros, total)
            row = {
                "seed": seed,
                "test_accuracy": evaluate(pruned, loader(test_ds))["accuracy"],
                "val_accuracy": evaluate(pruned, loader(val_ds))["accuracy"],
                "sparsity": zeros / total,
                "zeros": zeros,
                "weights": total,
                "layer_sparsity": layer_sparsities(pruned),
                "seconds": time.perf_counter() - t0,
            }
            if info is not None:
                row["allocated"] = info.values
                row["predicted_loss_increase"] = {
                    "auto": info.predicted_loss_increase,
                    "uniform": info.uniform_loss_increase,
                }
            mlp_rows[arm].append(row)
            print(
                f"seed {seed} mlp {arm:<8} test {row['test_accuracy']:.4f} sparsity {row['sparsity']:.4f} "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )

        train_ds, val_ds, test_ds = image
        torch.manual_seed(seed)
        dense = train_dense(small_cnn(image_size=8), train_ds, args.dense_epochs, seed)
        dense_macs = sum(layer_macs(dense, CNN_SHAPE).values())
        dense_row["cnn_test_accuracy"] = evaluate(dense, loader(test_ds))["accuracy"]
        dense_row["cnn_macs"] = dense_macs
        dense_rows.append(dense_row)
        for arm, entry in structured.items():
            t0 = time.perf_counter()
            recipe = finetune_recipe(entry, args, seed, CNN_SHAPE)
            info = None
            if arm == "auto":
                recipe, info = allocate(dense, recipe, val_ds, CNN_SHAPE)
            pruned = run_arm(dense, recipe, train_ds, val_ds)
            row = {
                "seed": seed,
                "test_accuracy": evaluate(pruned, loader(test_ds))["accuracy"],
                "val_accuracy": evaluate(pruned, loader(val_ds))["accuracy"],
                "macs": macs_fraction(pruned, dense_macs),
                "channels": channels(pruned),
                "seconds": time.perf_counter() - t0,
            }
            # fraction of each layer's output channels removed (the head keeps its 10 outputs)
            before, after = channels(dense), row["channels"]
            row["removed"] = {k: 1 - after[k] / before[k] for k in before if after[k] != before[k]}
            if info is not None:
                row["allocated"] = info.values
            if info is not None:
                row["predicted_loss_increase"] = {
                    "auto": info.predicted_loss_increase,
                    "uniform": info.uniform_loss_increase,
                }
            cnn_rows[arm].append(row)
            print(
                f"seed {seed} cnn {arm:<8} test {row['test_accuracy']:.4f} MACs {row['macs']:.4f} "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )

    doc: dict[str, Any] = {
        "torch": torch.__version__,
        "sparsekit": sparsekit.__version__,
        "threads": torch.get_num_threads(),
        "args": {k: (recorded_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "split": {"train": 1000, "validation": 400, "test": 397},
        "dense": dense_rows,
        "mlp": {
            "target_sparsity": TARGET_SPARSITY,
            "schedule": schedule,
            "arms": {
                arm: {
                    "entry": unstructured[arm],
                    "test_accuracy": summary([r["test_accuracy"] for r in rows]),
                    "sparsity": summary([r["sparsity"] for r in rows]),
                    "runs": rows,
                }
                for arm, rows in mlp_rows.items()
            },
        },
        "small_cnn": {
            "target_macs": TARGET_MACS,
            "uniform_ratio": uniform_ratio,
            "uniform_ratio_macs_fresh": uniform_macs,
            "arms": {
                arm: {
                    "entry": structured[arm],
                    "test_accuracy": summary([r["test_accuracy"] for r in rows]),
                    "macs": summary([r["macs"] for r in rows]),
                    "runs": rows,
                }
                for arm, rows in cnn_rows.items()
            },
        },
    }
    doc["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(markdown(doc))
    print(f"\n{time.perf_counter() - started:.0f} s; JSON: {args.out}")
    return doc


def _pct(s: dict[str, Any]) -> str:
    return f"{100 * s['median']:.1f}% ({100 * s['min']:.1f}–{100 * s['max']:.1f})"


def _spread(s: dict[str, Any], fmt: str) -> str:
    """The median, with the min-max range when it shows at this precision."""
    lo, mid, hi = (format(s[k], fmt) for k in ("min", "median", "max"))
    return mid if lo == hi else f"{mid} ({lo}–{hi})"


def markdown(doc: dict[str, Any]) -> str:
    n = len(doc["dense"])
    dense_mlp = summary([r["mlp_test_accuracy"] for r in doc["dense"]])
    dense_cnn = summary([r["cnn_test_accuracy"] for r in doc["dense"]])
    lines = [
        f"Test accuracy: median (min–max) over {n} seed(s); digits test split (397 images), never used for a "
        f"choice. Fine-tuning: {doc['args']['epochs']} epochs, Adam lr {doc['args']['lr']:g}, cosine.",
        "",
        "| model | arm | recipe entry | test accuracy | achieved | per layer, as pruned (median over seeds) |",
        "|---|---|---|---:|---|---|",
        f"| mlp | dense | – | {_pct(dense_mlp)} | sparsity 0 | – |",
    ]
    entries = {
        "auto": "`sparsity: auto, target: 0.9`",
        "uniform": "`sparsity: 0.9, scope: layer`",
        "global": "`sparsity: 0.9, scope: global`",
    }
    for arm, res in doc["mlp"]["arms"].items():
        layers = res["runs"][0]["layer_sparsity"]
        per = ", ".join(f"{k} {statistics.median(r['layer_sparsity'][k] for r in res['runs']):.3f}" for k in layers)
        s = res["sparsity"]
        achieved = f"sparsity {_spread(s, '.4f')}"
        lines.append(f"| mlp | {arm} | {entries[arm]} | {_pct(res['test_accuracy'])} | {achieved} | {per} |")
    cnn = doc["small_cnn"]
    lines.append(f"| small_cnn | dense | – | {_pct(dense_cnn)} | MACs 1.000 ({doc['dense'][0]['cnn_macs']:,}) | – |")
    cnn_entries = {
        "auto": f"`ratio: auto, target_macs: {cnn['target_macs']:g}`",
        "uniform": f"`ratio: {cnn['uniform_ratio']:g}`",
    }
    for arm, res in cnn["arms"].items():
        layers = list(cnn["arms"]["auto"]["runs"][0]["allocated"])
        removed = [r["removed"] for r in res["runs"]]
        per = ", ".join(f"{k} {statistics.median(r.get(k, 0.0) for r in removed):.3f}" for k in layers)
        m = res["macs"]
        achieved = f"MACs {_spread(m, '.3f')}"
        lines.append(f"| small_cnn | {arm} | {cnn_entries[arm]} | {_pct(res['test_accuracy'])} | {achieved} | {per} |")
    lines += ["", "Per seed, the values auto chose (mlp: sparsity per layer; small_cnn: channel ratio per group):", ""]
    for model, key in (("mlp", "allocated"), ("small_cnn", "allocated")):
        runs = doc[model]["arms"]["auto"]["runs"]
        names = list(runs[0][key])
        lines += [f"| {model} seed | " + " | ".join(names) + " | test acc |", "|---:|" + "---:|" * (len(names) + 1)]
        for r in runs:
            cells = " | ".join(f"{r[key][k]:.3f}" for k in names)
            lines.append(f"| {r['seed']} | {cells} | {100 * r['test_accuracy']:.1f}% |")
        lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    main()
