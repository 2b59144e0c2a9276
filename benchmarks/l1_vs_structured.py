"""Group L1 with a target against structured (L2 importance) removal of the same fraction of units.

For LeNet-300-100 (neurons of fc1 and fc2, the head kept) and small_cnn (channels of conv1..conv3), both on
mnist5k: a dense model is trained (Adam 1e-3), then each arm fine-tunes a copy with the same optimizer,
learning-rate schedule and epochs:

- ``l1``: ``method: l1, mode: proximal, group: row | channel, strength: 1e-3, target: 0.5``, lambda adapting
  up to ``end_epoch`` (half the epochs), then fine-tuning with the dead units masked; the all-zero units
  are removed at finalize (``remove_dead``);
- ``structured``: ``method: structured, ratio: 0.5, importance: l2, scope: layer, round_to: null`` in
  ``--steps`` removal events over the same window (torch-pruning), then the same fine-tuning.

Reported per arm: validation accuracy (the 1,000 held-out images), units left, MACs per sample, and
onnxruntime latency (p50, 1 thread) at batch 1 and 32 as a ratio to dense, measured interleaved in one
run with an A/A control (``sparsekit.benchmark``: dense, l1, structured and a second dense session take
turns; ``band`` is the noise band the benchmark decides with (the A/A control's widest block, half the arm's
own block spread, or 5%, whichever is wider): a ratio inside it is marked ``noise``, not a speedup; ``A/A`` is
the control's p50 distance from 1 alone).

    python benchmarks/l1_vs_structured.py                    # dense 5 epochs, arms 8 epochs (~6 min on 2 cores)
    python benchmarks/l1_vs_structured.py --quick            # dense 3, arms 4 epochs, fewer runs (~2 min)
    python benchmarks/l1_vs_structured.py --models lenet_300_100 --seeds 0 1 --json

Re-runnable: every arm is seeded (``--seeds``); the ONNX files go to a temporary folder.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/ and sparsekit/ from a checkout
import sparsekit  # noqa: E402
from benchmarks._checks import check  # noqa: E402
from examples.models import lenet_300_100, small_cnn  # noqa: E402
from sparsekit.data import load_data  # noqa: E402
from sparsekit.stats import model_stats  # noqa: E402
from sparsekit.train import evaluate  # noqa: E402

# name -> (factory, input shape, the l1 group, layers whose units both arms remove, the head both keep)
MODELS: dict[str, tuple[Any, list[int], str, list[str], str]] = {
    "lenet_300_100": (lenet_300_100, [1, 784], "row", ["fc1", "fc2"], "fc3"),
    "small_cnn": (small_cnn, [1, 1, 28, 28], "channel", ["conv1", "conv2", "conv3"], "fc2"),
}


def recipe(name: str, arm: str, epochs: int, args: argparse.Namespace) -> sparsekit.Recipe:
    """The fine-tuning recipe of one arm (``dense``: training from scratch, no pruning)."""
    _, shape, group, layers, head = MODELS[name]
    window = {"start_epoch": 0, "end_epoch": epochs / 2}
    pruning: list[dict[str, Any]] = []
    if arm == "l1":
        pruning = [
            {
                "method": "l1",
                "mode": "proximal",
                "group": group,
                "strength": args.strength,
                "target": args.target,
                "layers": {"include": layers},
                "schedule": window,
            }
        ]
    elif arm == "structured":
        pruning = [
            {
                "method": "structured",
                "ratio": args.target,
                "importance": "l2",
                "scope": "layer",
                "round_to": None,
                "steps": args.steps,
                "ignore": [head, *(n for n in _prunable(name) if n not in layers)],
                "schedule": window,
            }
        ]
    optimizer = {"name": "adam", "lr": 1e-3} if arm == "dense" else {"name": "sgd", "lr": args.lr, "momentum": 0.9}
    return sparsekit.Recipe(
        seed=args.seed,
        model={"input_shape": shape},
        data={"source": "mnist5k", "batch_size": 64},
        finetune={"epochs": epochs, "optimizer": optimizer, "lr_schedule": {"name": "cosine"}},
        pruning=pruning,
    )


def _prunable(name: str) -> list[str]:
    model = MODELS[name][0]()
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def units(model: nn.Module, layers: list[str]) -> int:
    modules = dict(model.named_modules())
    return sum(int(modules[n].weight.shape[0]) for n in layers)


def run_model(name: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    factory, shape, _, layers, _ = MODELS[name]
    data = load_data("mnist5k", batch_size=64, seed=args.seed, input_shape=shape)
    torch.manual_seed(args.seed)
    dense = factory()
    started = time.perf_counter()
    dense, _, _ = sparsekit.finetune(dense, recipe(name, "dense", args.dense_epochs, args), data.train, data.val,
                                     progress=False)  # fmt: skip
    rows = [{"model": name, "arm": "dense", "seconds": time.perf_counter() - started, "model_obj": dense}]
    for arm in ("l1", "structured"):
        torch.manual_seed(args.seed)
        model = copy.deepcopy(dense)
        started = time.perf_counter()
        model, _, pruner = sparsekit.finetune(model, recipe(name, arm, args.epochs, args), data.train, data.val,
                                              progress=False)  # fmt: skip
        model = pruner.finalize()
        row = {"model": name, "arm": arm, "seconds": time.perf_counter() - started, "model_obj": model}
        if arm == "l1":
            report = pruner.methods[0].report()
            row["l1"] = {k: report[k] for k in ("asked", "achieved", "strength", "topped_up")}
        rows.append(row)
    dense_units = units(dense, layers)
    paths = []
    for row in rows:
        model = row.pop("model_obj").eval()
        row["accuracy"] = evaluate(model, data.val)["accuracy"]
        row["units"] = units(model, layers)
        row["units_removed"] = 1 - row["units"] / dense_units
        row["macs"] = model_stats(model, shape)["macs"]
        row["params"] = sum(p.numel() for p in model.parameters())
        path = out / f"{name}.{row['arm']}.onnx"
        info = sparsekit.export_onnx(model, path, shape)
        if not info["parity"]["ok"]:
            raise SystemExit(f"{path}: ONNX output differs from torch ({info['parity']})")
        paths.append(path)
    res = sparsekit.benchmark(paths, args.batch_size, threads=1, warmup=args.warmup, runs=args.runs,
                              input_shape=shape, seed=args.seed, precision=None)  # fmt: skip
    for row, f in zip(rows, res["files"], strict=True):
        row["macs_ratio"] = row["macs"] / rows[0]["macs"]
        row["latency"] = {
            str(b): {
                "p50_ms": f["latency_ms"][str(b)]["p50"],
                "ratio": f["ratio_to_first"][str(b)]["p50"] if row["arm"] != "dense" else 1.0,
                "noise": res["control"][str(b)]["noise"],
                "significant": f["speedup_significant"][str(b)] if row["arm"] != "dense" else None,
                "band": f["noise_band"][str(b)] if row["arm"] != "dense" else None,
            }
            for b in args.batch_size
        }
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--quick", action="store_true", help="dense 3 epochs, arms 4, 100 timed runs")
    ap.add_argument("--dense-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs of both arms (removal in the first half)")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the units removed by both arms")
    ap.add_argument("--strength", type=float, default=1e-3, help="l1's starting lambda")
    ap.add_argument("--lr", type=float, default=0.05, help="SGD (momentum 0.9, cosine) learning rate of both arms")
    ap.add_argument("--steps", type=int, default=4, help="structured removal events")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    check(
        ap,
        args,
        {"dense_epochs": 0, "epochs": 1, "steps": 1, "batch_size": 1, "runs": 1, "warmup": 0},
        fractions=("target",),
    )
    if args.quick:
        args.dense_epochs, args.epochs, args.runs = 3, 4, 100
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            args.seed = seed
            for name in args.models:
                for row in run_model(name, args, Path(tmp)):
                    rows.append({"seed": seed, **row})
                    if not args.json:
                        print(_line(row, args), flush=True)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "args": vars(args), "results": rows}, indent=1))
    elif len(args.seeds) > 1:
        for name in args.models:
            for arm in ("dense", "l1", "structured"):
                acc = [r["accuracy"] for r in rows if r["model"] == name and r["arm"] == arm]
                print(f"{name} {arm}: accuracy median {statistics.median(acc):.4f} ({min(acc):.4f}-{max(acc):.4f})")
    return rows


def _line(row: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(lat: dict[str, Any]) -> str:
        # The band, not the A/A p50 alone, says whether a ratio is a speedup (the A/A can be 0.01 in a band of 0.4).
        verdict = ""
        if lat.get("band") is not None:
            verdict = f", band {lat['band']:.2f}{'' if lat['significant'] else ': noise'}"
        return f"{lat['p50_ms']:.3f} ms ({lat['ratio']:.2f}x{verdict}, A/A {lat['noise']:.2f})"

    lat = " | ".join(cell(row["latency"][str(b)]) for b in args.batch_size)
    extra = ""
    if "l1" in row:
        s = row["l1"]["strength"]
        extra = f" | lambda {s['start']:g} -> {s['end']:.3g} (max {s['max']:.3g}), topped up {row['l1']['topped_up']}"
    return (
        f"| {row['model']} | {row['arm']} | {row['accuracy']:.4f} | {row['units']} "
        f"({row['units_removed']:.3f} removed) | {row['macs']:,} ({row['macs_ratio']:.3f}x) | {lat} | "
        f"{row['seconds']:.1f} s{extra} |"
    )


if __name__ == "__main__":
    main()
