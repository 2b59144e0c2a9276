"""sparsekit against the baselines it claims to match, on test images it never chose anything from.

    python -m benchmarks.results                 # 3 seeds, ~10 min on 2 cores: benchmarks/results/suite/
    python -m benchmarks.results --quick         # 1 seed, fewer arms, ~2 min: benchmarks/results/quick/
    python -m benchmarks.results --seeds 5 --out /tmp/results

Per seed (the seed draws the dense initialization and the split, see :mod:`benchmarks.results.arms`):
mnist5k split into 3,000 train / 1,000 validation / 1,000 test images; LeNet-300-100 trained dense for 5
epochs and small_cnn for 4 (as ``examples/train.py``); then, on copies of the same dense model, the same
training images in the same order, and the same number of fine-tuning epochs per comparison:

- LeNet-300-100 at 80/90/95/98% of fc1+fc2 (the head stays dense): the shipped
  ``lenet-gradual-magnitude-90`` with its sparsity set, against ``torch.nn.utils.prune.global_unstructured``
  (L1) one shot followed by the recipe's 8 epochs of Adam + cosine;
- small_cnn unstructured at 90/95% of conv1-3 + fc1: ``cnn-layer-magnitude-80`` with its sparsity set,
  against torch.nn.utils.prune the same way (4 epochs);
- small_cnn structured, 30/50/70% of the channels: ``cnn-structured-50`` with its ratio set, against
  Torch-Pruning's MetaPruner (GroupMagnitudeImportance(p=2)) one shot and the recipe's 6 epochs; where
  Torch-Pruning's rounding kept other MACs than sparsekit (30% and 70% here), also sparsekit allocated to
  Torch-Pruning's MACs (``ratio: auto, target_macs``), the like-for-like comparison;
- ``dense`` (the input model) and ``dense+ft`` (the same fine-tuning, no pruning) as references.

Each model is evaluated once on the test split (the validation split only feeds the per-epoch metrics
of the runs; the recipes' settings were chosen on it with :mod:`benchmarks.results.tune`). After training,
one seed's models are exported to ONNX: structured arms are timed with :func:`sparsekit.benchmark`
(onnxruntime CPU, 1 thread, dense and every arm interleaved with an A/A control) for latency vs MACs, and
the unstructured LeNet arms' gzip sizes are set against a reference size
(:func:`sparsekit.onnx.entropy_bound_bytes`). Writes ``results.json``, ``results.md`` and three PNG plots to
``--out``. Training runs in ``--workers`` processes (at most 2) with one torch thread each; the latency
measurement runs alone afterwards.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from anywhere in the repo

from benchmarks.results import report  # noqa: E402
from benchmarks.results.jobs import measure_files, run_job  # noqa: E402

CNN_JOBS = ("cnn-unstructured", "cnn-structured")


def command_line(args: argparse.Namespace) -> str:
    """The command results.md names: every option that changes a figure (``--runs`` sets the latency table's
    timed runs), so that re-running it reproduces the tables; ``--out`` and ``--workers`` change none."""
    return (
        "python -m benchmarks.results"
        + (" --quick" if args.quick else "")
        + (f" --seeds {args.seeds}" if args.seeds is not None else "")
        + (f" --runs {args.runs}" if args.runs is not None else "")
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.results", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 seed, LeNet at every sparsity, small_cnn at 90%% and 50%%")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; --quick: 1)")
    ap.add_argument(
        "--out", type=Path, default=None, help="output folder (default benchmarks/results/suite, or quick/)"
    )
    ap.add_argument("--workers", type=int, default=2, help="training processes, 1 or 2 (one torch thread each)")
    ap.add_argument("--runs", type=int, default=None, help="timed onnxruntime runs per file and batch size")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1 or args.workers not in (1, 2):
        ap.error("--seeds must be >= 1 and --workers 1 or 2")
    if args.runs is not None and args.runs < 1:  # 0 read as "the default" and a negative count failed after training
        ap.error("--runs must be >= 1 (default 200; --quick: 40)")
    out = args.out or HERE / ("quick" if args.quick else "suite")
    runs = args.runs or (40 if args.quick else 200)
    values = {
        "lenet": [0.8, 0.9, 0.95, 0.98],
        "cnn_unstructured": [0.9] if args.quick else [0.9, 0.95],
        "cnn_structured": [0.5] if args.quick else [0.3, 0.5, 0.7],
    }
    out.mkdir(parents=True, exist_ok=True)
    # Seed 0's ONNX files (about 20 MB) are measured, then deleted with this folder; only numbers are kept.
    scratch = tempfile.TemporaryDirectory(prefix="sparsekit-results-")
    onnx_dir = Path(scratch.name)
    started = time.perf_counter()
    # The long small_cnn jobs first, so two workers finish together; seed 0's models are exported.
    jobs = [(name, s, values, str(onnx_dir) if s == 0 else None) for s in range(seeds) for name in CNN_JOBS]
    jobs += [("lenet", s, values, str(onnx_dir) if s == 0 else None) for s in range(seeds)]
    if args.workers == 1:
        parts = [run_job(j) for j in jobs]
    else:
        with get_context("spawn").Pool(2) as pool:
            parts = pool.map(run_job, jobs, chunksize=1)
    rows = [r for part in parts for r in part]
    trained = time.perf_counter() - started
    latency, sizes = measure_files(rows, runs)
    for row in rows:
        if row.get("onnx"):
            row["onnx"] = Path(row["onnx"]).name
    scratch.cleanup()
    import torch

    import sparsekit

    result = {
        "command": command_line(args),
        "seeds": seeds,
        "split": {"train": 3000, "validation": 1000, "test": 1000, "source": "mnist5k"},
        "values": values,
        "rows": rows,
        "latency": latency,
        "sizes": sizes,
        "versions": {
            "sparsekit": getattr(sparsekit, "__version__", None),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "seconds": {"training": trained, "total": time.perf_counter() - started},
    }
    result["summary"] = report.summarize(rows)
    result["at_equal_macs"] = report.at_equal_macs(rows)
    result["targets"] = report.targets(result["summary"])
    result["seconds"]["total"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "results.md").write_text(report.markdown(result))
    report.plots(result, out)
    print(report.markdown(result))
    print(f"\n{result['seconds']['total']:.0f} s; {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
