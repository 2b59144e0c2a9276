"""How much latency does structural channel removal buy? small_cnn and resnet_small, 50% of channels.

Prunes each example model structurally (torch-pruning, L2 importance, per layer, head kept; no
training: only shapes matter for latency), exports dense and pruned ONNX, and times both in
onnxruntime, interleaved with an A/A control (``sparsekit.onnx.benchmark``). Prints, per batch size,
the p50 latency ratio (pruned / dense), the MACs ratio, and latency ÷ MACs (1.0 = latency falls
exactly as fast as the arithmetic; above 1, fixed per-op costs eat part of the win).

    python benchmarks/structured_latency.py                  # batch 1 and 32, 1 thread
    python benchmarks/structured_latency.py --runs 500 --threads 2 --ratio 0.75 --json

Re-runnable: seeded models, seeded inputs; the ONNX files go to a temporary folder unless --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/ and sparsekit/ from a checkout

import sparsekit  # noqa: E402
from examples.models import resnet_small, small_cnn  # noqa: E402
from sparsekit.stats import model_stats  # noqa: E402

INPUT_SHAPE = [1, 1, 28, 28]
MODELS = {"small_cnn": small_cnn, "resnet_small": resnet_small}


def prune(model: torch.nn.Module, ratio: float, importance: str, scope: str) -> sparsekit.Pruner:
    recipe = sparsekit.Recipe(
        **{
            "model": {"input_shape": INPUT_SHAPE},
            "pruning": [
                {
                    "method": "structured",
                    "ratio": ratio,
                    "importance": importance,
                    "scope": scope,
                    "schedule": "oneshot",
                }
            ],
        }
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.finalize()
    return pruner


def measure(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    dense = MODELS[name]().eval()
    pruned = MODELS[name]().eval()
    pruned.load_state_dict(dense.state_dict())
    pruner = prune(pruned, args.ratio, args.importance, args.scope)
    dense_macs = model_stats(dense, INPUT_SHAPE)["macs"]
    pruned_macs = model_stats(pruned, INPUT_SHAPE)["macs"]
    paths = [out / f"{name}.dense.onnx", out / f"{name}.pruned.onnx"]
    for model, path in zip((dense, pruned), paths, strict=True):
        info = sparsekit.export_onnx(model, path, INPUT_SHAPE, exporter=args.exporter)
        if not info["parity"]["ok"]:
            raise SystemExit(f"{path}: ONNX output differs from torch ({info['parity']})")
    res = sparsekit.benchmark(
        paths,
        args.batch_size,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        input_shape=INPUT_SHAPE,
        seed=args.seed,
    )
    dense_f, pruned_f = res["files"]
    macs_ratio = pruned_macs / dense_macs
    rows = {}
    for b in (str(b) for b in args.batch_size):
        lat = pruned_f["ratio_to_first"][b]["p50"]
        rows[b] = {
            "dense_p50_ms": dense_f["latency_ms"][b]["p50"],
            "pruned_p50_ms": pruned_f["latency_ms"][b]["p50"],
            "latency_ratio": lat,
            "spread": pruned_f["ratio_to_first"][b]["spread"],
            "aa_noise": res["control"][b]["noise"],
            "significant": pruned_f["speedup_significant"][b],
            "macs_ratio": macs_ratio,
            "latency_per_macs": lat / macs_ratio,
        }
    return {
        "model": name,
        "dense_macs": dense_macs,
        "pruned_macs": pruned_macs,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "pruned_params": sum(p.numel() for p in pruned.parameters()),
        "removal_events": len(pruner.pruning_history),
        "batches": rows,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--importance", default="l2", choices=["l1", "l2", "bn_scale"])
    ap.add_argument("--scope", default="layer", choices=["layer", "global"])
    ap.add_argument("--batch-size", type=int, action="append", help="repeatable (default: 1 and 32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    ap.add_argument("--out", type=Path, default=None, help="keep the ONNX files here")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args(argv)
    args.batch_size = args.batch_size or [1, 32]

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = [measure(name, args, out) for name in args.models]

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(
        f"structured ratio {args.ratio} ({args.importance}, {args.scope} scope), onnxruntime "
        f"{args.threads} thread(s), {args.runs} runs, input {INPUT_SHAPE[1:]}"
    )
    print("| model | batch | dense p50 ms | pruned p50 ms | latency ratio | A/A noise | MACs ratio | latency ÷ MACs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for b, row in r["batches"].items():
            print(
                f"| {r['model']} | {b} | {row['dense_p50_ms']:.3f} | {row['pruned_p50_ms']:.3f} | "
                f"{row['latency_ratio']:.3f}{'' if row['significant'] else ' (noise)'} | {row['aa_noise']:.3f} | "
                f"{row['macs_ratio']:.3f} | {row['latency_per_macs']:.2f} |"
            )
    return results


if __name__ == "__main__":
    main()
