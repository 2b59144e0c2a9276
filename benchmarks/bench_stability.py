"""How stable is `sparsekit bench`? Repeats the same dense-vs-pruned comparison and reports the
spread of the latency ratio (max/min over repeats). Target: <= 1.10 on a shared 2-core machine.

    python benchmarks/bench_stability.py [--repeats 5] [--runs 200] [--precision 0.02]

``--precision 0`` times every pair until the 2 s budget or ``--runs`` (no early stop once the ratios are
steady), to compare the spread with and without the early stop; the runs done per repeat are printed.

``--simulate`` measures the early stop's statistics without onnxruntime: two identical "files" and an A/A
control whose runs take 30 ms times lognormal noise (sigma 1-5%) with 2% outliers at 3x, on a simulated
clock, 400 trials per setting, with the default precision and without it: runs done, how often identical
files are called significantly different, and the spread of the ratio (~5 s).

Uses small_cnn dense vs 50% structurally pruned (so there is a real difference to measure) and
LeNet-300-100 against itself (a ratio that must stay near 1).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparsekit  # noqa: E402
from benchmarks._checks import check  # noqa: E402
from examples.models import lenet_300_100, small_cnn  # noqa: E402


def structured_half(model: torch.nn.Module, shape: list[int]) -> torch.nn.Module:
    recipe = sparsekit.Recipe(pruning=[{"method": "structured", "ratio": 0.5, "schedule": "oneshot"}])
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1, context={"input_shape": shape})
    return pruner.finalize()


def simulate(trials: int = 400) -> None:
    """The early stop on identical files, timed by a simulated clock (see the module's docstring)."""
    import numpy as np

    import sparsekit.onnx.bench as bench

    clock = [0]
    bench._now = lambda: clock[0]

    class Session:
        def __init__(self, rng: np.random.Generator, sigma: float) -> None:
            self.rng, self.sigma = rng, sigma

        def run(self, *args: object) -> None:
            took = 30e6 * math.exp(self.sigma * self.rng.standard_normal())
            clock[0] += int(took * (3 if self.rng.random() < 0.02 else 1))

    for sigma in (0.01, 0.02, 0.03, 0.05):
        for precision in (bench.PRECISION, None):
            done, ratios, significant = [], [], []
            for seed in range(trials):
                rng = np.random.default_rng(seed)
                sessions = [Session(rng, sigma) for _ in range(3)]  # first file, second file, A/A control
                times = bench._timed_runs(sessions, [{}] * 3, 200, lambda n: None, int(2e9), 25, precision)
                r, control = bench._ratio(times, 1), bench._ratio(times, 2)
                done.append(times.shape[1])
                ratios.append(r["p50"])
                significant.append(bench._significant(r, {"ratio_p50": control["p50"], "spread": control["spread"]}))
            print(
                f"sigma {sigma:.2f}, precision {precision}: runs median {int(np.median(done))} (min {min(done)}); "
                f"identical files called different {np.mean(significant):.1%}; "
                f"sd of log ratio {np.std(np.log(ratios)):.4f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, action="append", default=None)
    ap.add_argument("--precision", type=float, default=0.02, help="benchmark's early-stop precision; 0: off")
    ap.add_argument("--simulate", action="store_true", help="the early stop's statistics on a simulated clock")
    args = ap.parse_args()
    check(ap, args, {"repeats": 1, "runs": 1, "batch_size": 1, "precision": 0})
    if args.simulate:
        simulate()
        return
    sizes = args.batch_size or [1, 32]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cnn_shape = [1, 1, 28, 28]
        pairs = {
            "small_cnn dense vs structured-50%": (tmp / "cnn.onnx", tmp / "cnn50.onnx"),
            "lenet vs itself": (tmp / "lenet.onnx", tmp / "lenet.onnx"),
        }
        sparsekit.export_onnx(small_cnn(), pairs["small_cnn dense vs structured-50%"][0], cnn_shape)
        sparsekit.export_onnx(structured_half(small_cnn(), cnn_shape), tmp / "cnn50.onnx", cnn_shape)
        sparsekit.export_onnx(lenet_300_100(), tmp / "lenet.onnx", [1, 784])
        for name, (a, b) in pairs.items():
            ratios: dict[str, list[float]] = {str(s): [] for s in sizes}
            done: dict[str, list[int]] = {str(s): [] for s in sizes}
            for _ in range(args.repeats):
                res = sparsekit.benchmark([a, b], sizes, runs=args.runs, warmup=20, precision=args.precision or None)
                for s in ratios:
                    ratios[s].append(res["files"][1]["ratio_to_first"][s]["p50"])
                    done[s].append(res["runs_done"][s])
            print(f"{name}:")
            for s, r in ratios.items():
                print(
                    f"  batch {s:>3}: ratios {', '.join(f'{x:.3f}' for x in r)}  spread max/min {max(r) / min(r):.3f}"
                    f"  runs {', '.join(map(str, done[s]))}"
                )


if __name__ == "__main__":
    main()
