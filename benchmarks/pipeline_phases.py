"""Where does a `sparsekit prune` run spend its time? The quick start's command, run several times,
with the phase times from each run's report.json (``timings``) and the process's wall time (which
adds Python start-up and imports).

Trains the quick start's LeNet-300-100 on mnist5k first (5 epochs) unless ``--model`` is given, then
runs ``sparsekit prune MODEL RECIPE`` ``--runs`` times into a temporary folder, each in a fresh process
(the first run also fills the parsed-dataset cache; it is reported but left out of the medians). Prints,
per phase, the median seconds and its share, then the ratio of everything outside fine-tuning to
fine-tuning, from report.json and from the process's wall time.

    python benchmarks/pipeline_phases.py                      # quick start, 4 runs (~1.5 minutes)
    python benchmarks/pipeline_phases.py --set export.exporter=dynamo --runs 3
    python benchmarks/pipeline_phases.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks._checks from a checkout
from benchmarks._checks import check  # noqa: E402


def run(cmd: list[str], what: str) -> None:
    """Run ``cmd`` from the repository root; on failure exit with its status and the end of its stderr (its
    ``Error:`` line), not a CalledProcessError traceback that hides why."""
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{what} failed (exit {res.returncode}):\n{res.stderr[-3000:].rstrip()}", file=sys.stderr)
        raise SystemExit(res.returncode)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint to prune (default: train the quick start's LeNet)")
    ap.add_argument("--recipe", default="lenet-gradual-magnitude-90")
    ap.add_argument("--arch", default="examples.models:lenet_300_100")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="recipe override, as for sparsekit prune")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = ap.parse_args()
    check(ap, args, {"runs": 1})

    with tempfile.TemporaryDirectory() as tmp:
        # The commands run from the repository root: a --model relative to the caller's directory is resolved here.
        model = Path(args.model).resolve() if args.model else Path(tmp) / "lenet.pt"
        if not args.model:
            run(
                [sys.executable, "examples/train.py", "lenet_300_100", "--data", "mnist5k", "--epochs", "5",
                 "-o", str(model)],
                "training the quick start's LeNet",
            )  # fmt: skip
        runs = []
        for i in range(args.runs):
            out = Path(tmp) / "out"
            cmd = [sys.executable, "-m", "sparsekit", "prune", str(model), args.recipe, "--arch", args.arch,
                   "-o", str(out), "--overwrite", "--no-progress"]  # fmt: skip
            for s in args.set:
                cmd += ["--set", s]
            start = time.perf_counter()
            run(cmd, "sparsekit prune")
            wall = time.perf_counter() - start
            timings = json.loads((out / "report.json").read_text())["timings"]
            runs.append({"wall": wall, **timings})
            print(f"run {i + 1}: wall {wall:.2f} s, report total {timings['total']:.2f} s", file=sys.stderr)

    kept = runs[1:] if len(runs) > 1 else runs  # the first run fills the dataset cache
    phases = list(kept[0]["seconds"])
    median = {p: statistics.median(r["seconds"].get(p, 0.0) for r in kept) for p in phases}
    total = statistics.median(r["total"] for r in kept)
    wall = statistics.median(r["wall"] for r in kept)
    tune = median.get("finetune", 0.0)
    result = {
        "runs": runs,
        "median_seconds": median,
        "median_total": total,
        "median_wall": wall,
        "outside_finetune_ratio": (total - tune) / tune if tune else None,
        "outside_finetune_ratio_wall": (wall - tune) / tune if tune else None,
    }
    # onnx imports ml_dtypes, whose 0.7.0 took ~1.1 s to import (pyproject.toml holds it below 0.7): shown so a
    # dependency that slows every command down is seen here.
    probe = (
        "import time; t = time.perf_counter(); import onnx, ml_dtypes\n"
        "print(time.perf_counter() - t, ml_dtypes.__version__)"
    )
    seconds, version = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    result["onnx_import_seconds"], result["ml_dtypes"] = float(seconds), version
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"import onnx (with ml_dtypes {version}) in a fresh process: {float(seconds):.3f} s")
    print(f"{'phase':<12} {'median s':>9} {'share':>7}")
    for p in phases:
        print(f"{p:<12} {median[p]:>9.3f} {median[p] / total:>7.1%}")
    print(f"{'total':<12} {total:>9.3f}   (process wall time {wall:.3f} s: + start-up and imports)")
    if tune:
        # (the first run may fill the dataset cache: left out when there are others)
        which = (
            f"median of runs 2-{len(runs)}"
            if len(runs) > 1
            else "run 1 alone (its time may include filling the dataset cache)"
        )
        print(
            f"outside fine-tuning / fine-tuning: {(total - tune) / tune:.2f}x (report.json), "
            f"{(wall - tune) / tune:.2f}x (wall time); {which}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
