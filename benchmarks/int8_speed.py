"""int8 against fp32 on the example models: file size and onnxruntime latency (the README's int8 figures).

    python benchmarks/int8_speed.py                      # a few minutes on 2 cores
    python benchmarks/int8_speed.py --models lenet_300_100 --epochs 0 --runs 25   # smoke run, ~10 s

Each model of ``--models`` (default: lenet_300_100, small_cnn, resnet_small, mobilenetv2_small, and the digits
``mlp``) is trained ``--epochs`` (2) on mnist5k (the mlp on digits) as ``examples/train.py`` does (Adam 1e-3, batch
64, seed 0), exported to fp32 ONNX with ``sparsekit.export_onnx`` and quantized with
``sparsekit.onnx.quantize_int8``: static QDQ calibrated on the training batches (uint8 activations, 7-bit weights,
what ``sparsekit export --quantize int8 --data`` and ``export.quantize: int8`` write) and dynamic (no calibration
data). Prints per model: the int8 file's bytes over the fp32 file's, top-1 agreement with fp32 on the validation
split, and the p50 latency of each int8 file over fp32 at batch 1 and 32 (``sparsekit.benchmark``: onnxruntime CPU,
``--threads`` (1), the three files interleaved with an A/A control, whose ratio is printed too). ``--json PATH``
writes the numbers. Latency depends on the CPU's instruction set (AVX2, AVX-512, VNNI): compare ratios, not times,
across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._checks import check  # noqa: E402
from examples.models import MODELS  # noqa: E402
from sparsekit.data import load_data  # noqa: E402
from sparsekit.onnx import benchmark, export_onnx, quantize_int8  # noqa: E402

DEFAULT_MODELS = ["lenet_300_100", "small_cnn", "resnet_small", "mobilenetv2_small", "mlp"]


def input_shape(name: str) -> list[int]:
    return {"lenet_300_100": [1, 784], "mlp": [1, 64]}.get(name, [1, 1, 28, 28])


def measure(name: str, args: argparse.Namespace, out: Path) -> dict:
    torch.manual_seed(0)
    shape = input_shape(name)
    model = MODELS[name]()
    # the digits MLP (64 inputs) on scikit-learn's 8x8 digits, as examples/hf_trainer.py trains it
    data = load_data("digits" if name == "mlp" else "mnist5k", batch_size=64, seed=0, input_shape=shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):  # as examples/train.py trains
        model.train()
        for x, y in data.train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    fp32 = out / f"{name}.onnx"
    export_onnx(model, fp32, input_shape=shape)
    x_val = torch.cat([x for x, _ in data.val]).numpy()
    y_val = torch.cat([y for _, y in data.val]).numpy()
    static = quantize_int8(fp32, out / f"{name}.int8.onnx", data.train, eval_data=(x_val, y_val))
    dynamic = quantize_int8(fp32, out / f"{name}.int8-dynamic.onnx", None, eval_data=(x_val, y_val))
    files = [fp32, out / f"{name}.int8.onnx", out / f"{name}.int8-dynamic.onnx"]
    bench = benchmark(files, batch_sizes=[1, 32], threads=args.threads, runs=args.runs)
    fp32_bytes = bench["files"][0]["bytes"]
    row: dict = {"model": name, "epochs": args.epochs, "control": bench["control"]}
    for kind, info, f in (("static", static, bench["files"][1]), ("dynamic", dynamic, bench["files"][2])):
        row[kind] = {
            "size_ratio": f["bytes"] / fp32_bytes,
            "agreement": info["eval"]["top1_agreement"],
            "latency_ratio": {b: f["ratio_to_first"][b]["p50"] for b in ("1", "32")},
        }
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=DEFAULT_MODELS)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs on mnist5k before export (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200, help="most timed runs per file and batch size")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    check(ap, args, {"epochs": 0, "threads": 0, "runs": 1})
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsekit-int8-") as tmp:
        for name in args.models:
            rows.append(measure(name, args, Path(tmp)))
    print("| model | int8 | size x fp32 | top-1 agreement | latency x fp32, batch 1 | batch 32 | A/A 1 / 32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        aa = f"{r['control']['1']['ratio_p50']:.3f} / {r['control']['32']['ratio_p50']:.3f}"
        for kind in ("static", "dynamic"):
            k = r[kind]
            agree = "–" if k["agreement"] is None else f"{k['agreement']:.3f}"
            lat = k["latency_ratio"]
            print(
                f"| {r['model']} | {kind} | {k['size_ratio']:.3f}x | {agree} | {lat['1']:.2f}x | {lat['32']:.2f}x "
                f"| {aa} |"
            )
    print(f"[{time.perf_counter() - start:.0f} s]")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
