"""How much latency does structural channel removal buy? small_cnn and resnet_small, 30/50/70% of
channels, with and without channel alignment (``round_to``).

Prunes each example model structurally (torch-pruning, L2 importance, per layer, head kept; no
training: only shapes matter for latency) once per (ratio, round_to) arm, exports dense and every
pruned model to ONNX, and times them all in one onnxruntime run per model, interleaved with an A/A
control (``sparsekit.onnx.benchmark``). Prints, per arm and batch size, the p50 latency ratio
(pruned / dense), the MACs ratio, and latency ÷ MACs (1.0 = latency falls exactly as fast as the
arithmetic; above 1, fixed per-op costs or kernels' poor handling of odd channel counts eat part of
the win), and the kept channels of each pruned layer.

    python benchmarks/structured_latency.py                  # ratios 0.3 0.5 0.7, round_to 1 8 16, batch 1 and 32
    python benchmarks/structured_latency.py --ratio 0.5 --round-to 8 --runs 500 --threads 2 --json

``--round-to 1`` is the unaligned arm (the recipe's ``round_to: null``).

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
from benchmarks._checks import check  # noqa: E402
from examples.models import resnet_small, small_cnn  # noqa: E402
from sparsekit.stats import model_stats  # noqa: E402

INPUT_SHAPE = [1, 1, 28, 28]
MODELS = {"small_cnn": small_cnn, "resnet_small": resnet_small}


def prune(model: torch.nn.Module, ratio: float, importance: str, scope: str, round_to: int) -> sparsekit.Pruner:
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
                    "round_to": round_to if round_to > 1 else None,
                    # bn_scale ranks only channels a BatchNorm scales: the convolutions, not the Linear layers
                    **({"layers": {"types": ["Conv2d"]}} if importance == "bn_scale" else {}),
                }
            ],
        }
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.finalize()
    return pruner


def measure(name: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Every (ratio, round_to) arm of one model, timed together with the dense model in one run."""
    torch.manual_seed(args.seed)
    dense = MODELS[name]().eval()
    dense_macs = model_stats(dense, INPUT_SHAPE)["macs"]
    arms, paths, models = [], [out / f"{name}.dense.onnx"], [dense]
    for ratio in args.ratio:
        for round_to in args.round_to:
            pruned = MODELS[name]().eval()
            pruned.load_state_dict(dense.state_dict())
            pruner = prune(pruned, ratio, args.importance, args.scope, round_to)
            arms.append(
                {
                    "model": name,
                    "ratio": ratio,
                    "round_to": round_to,
                    "dense_macs": dense_macs,
                    "pruned_macs": model_stats(pruned, INPUT_SHAPE)["macs"],
                    "dense_params": sum(p.numel() for p in dense.parameters()),
                    "pruned_params": sum(p.numel() for p in pruned.parameters()),
                    "removal_events": len(pruner.pruning_history),
                    "channels": _channels(pruned),
                }
            )
            paths.append(out / f"{name}.r{ratio:g}.round{round_to}.onnx")
            models.append(pruned)
    for model, path in zip(models, paths, strict=True):
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
        precision=None,  # a measurement: every --runs run (under the 2 s budget), not the CLI's early stop
    )
    dense_f = res["files"][0]
    for arm, pruned_f in zip(arms, res["files"][1:], strict=True):
        macs_ratio = arm["pruned_macs"] / dense_macs
        arm["batches"] = {}
        for b in (str(b) for b in args.batch_size):
            lat = pruned_f["ratio_to_first"][b]["p50"]
            arm["batches"][b] = {
                "dense_p50_ms": dense_f["latency_ms"][b]["p50"],
                "pruned_p50_ms": pruned_f["latency_ms"][b]["p50"],
                "latency_ratio": lat,
                "spread": pruned_f["ratio_to_first"][b]["spread"],
                "aa_noise": res["control"][b]["noise"],
                # The band that decides "(noise)": the A/A's widest block, half this arm's own block spread or 5%,
                # whichever is wider; the A/A p50 alone (aa_noise) can be far narrower than the band.
                "noise_band": pruned_f["noise_band"][b],
                "significant": pruned_f["speedup_significant"][b],
                "macs_ratio": macs_ratio,
                "latency_per_macs": lat / macs_ratio,
            }
    return arms


def _channels(model: torch.nn.Module) -> str:
    """Kept output channels of each Conv/Linear layer but the last (the head), in model order."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][:-1]
    return "/".join(str(m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features) for m in layers)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ratio", type=float, action="append", help="repeatable (default: 0.3, 0.5 and 0.7)")
    ap.add_argument("--round-to", type=int, action="append", help="repeatable; 1: no alignment (default: 1, 8 and 16)")
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
    check(ap, args, {"round_to": 1, "batch_size": 1, "threads": 0, "warmup": 0, "runs": 1}, fractions=("ratio",))
    args.batch_size = args.batch_size or [1, 32]
    args.ratio = args.ratio or [0.3, 0.5, 0.7]
    args.round_to = args.round_to or [1, 8, 16]

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = [arm for name in args.models for arm in measure(name, args, out)]

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(
        f"structured ({args.importance}, {args.scope} scope), onnxruntime {args.threads} thread(s), "
        f"{args.runs} runs, input {INPUT_SHAPE[1:]}; arms of a model timed together with dense and an A/A control; "
        "'(noise)': the ratio is inside its noise band n, 1/(1+n) to 1+n (n from the A/A control's widest block, half "
        "the arm's own block spread or 5%, whichever is wider); 'A/A noise': the control's p50 distance from 1 alone"
    )
    print(
        "| model | ratio | round_to | batch | dense p50 ms | pruned p50 ms | latency ratio | noise band | A/A noise "
        "| MACs ratio | latency ÷ MACs | kept channels |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        for b, row in r["batches"].items():
            print(
                f"| {r['model']} | {r['ratio']:g} | {r['round_to'] if r['round_to'] > 1 else '–'} | {b} "
                f"| {row['dense_p50_ms']:.3f} | {row['pruned_p50_ms']:.3f} | "
                f"{row['latency_ratio']:.3f}{'' if row['significant'] else ' (noise)'} | {row['noise_band']:.3f} | "
                f"{row['aa_noise']:.3f} | "
                f"{row['macs_ratio']:.3f} | {row['latency_per_macs']:.2f} | {r['channels']} |"
            )
    return results


if __name__ == "__main__":
    main()
