"""Measure the on-disk size targets of a 90%-sparse LeNet-300-100 against their entropy bounds.

    /work/venv/bin/python benchmarks/size_targets.py [--out DIR] [--epochs 8] [--finetune-epochs 4]

Trains LeNet-300-100 (examples.models:lenet_300_100) on mnist5k, prunes 90% of the weights of
fc1..fc3 by global magnitude, fine-tunes with the mask held, exports dense and pruned ONNX, and
quantizes the pruned model to int8 (static QDQ, calibrated on training batches). Then prints,
relative to the dense fp32 file's raw bytes:

- pruned fp32, gzip -9               target <= 0.15x  (bound: nnz * 32 bits + mask entropy)
- pruned int8, gzip -9               target <= 0.06x  (bound: nnz *  8 bits + mask entropy)
- int8 top-1 agreement with fp32     target >= 99%    (on the 1,000 validation images)

plus the sparse-storage variants (raw and gzip) for information. The bound counts every float
parameter of the model (biases too) with ``sparsekit.onnx.entropy_bound_bytes``; gzip can land
under it only if the fp32 values are not 32 random bits. Exit code 1 if a target is missed.
Results also go to ``DIR/size_targets.json`` (default DIR: $TMPDIR/sparsekit-size-targets).
Takes 10-30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.models import lenet_300_100  # noqa: E402
from sparsekit.data import load_data  # noqa: E402
from sparsekit.onnx import (  # noqa: E402
    entropy_bound_bytes,
    export_onnx,
    onnx_accuracy,
    quantize_int8,
    size_report,
    to_sparse_storage,
    top1_agreement,
)

TARGETS = {"fp32_gzip": 0.15, "int8_gzip": 0.06, "agreement": 0.99}


def train(model, loader, epochs: int, lr: float, masks=None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            if masks:
                with torch.no_grad():
                    for w, m in masks:
                        w.mul_(m)
    model.eval()


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def global_magnitude_masks(model, sparsity: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weights = [m.weight for m in (model.fc1, model.fc2, model.fc3)]
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(round(sparsity * scores.numel()))
    threshold = torch.topk(scores, scores.numel() - k).values.min()  # smallest kept magnitude
    masks = [(w, w.detach().abs() >= threshold) for w in weights]
    with torch.no_grad():
        for w, m in masks:
            w.mul_(m)
    return masks


def _after(storage: dict) -> tuple[int, int]:
    return storage["bytes_after"], storage["gzip_bytes_after"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "sparsekit-size-targets")
    ap.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small matmuls; more threads only fight over a busy machine
    data = load_data("mnist5k", batch_size=64, seed=args.seed, input_shape=[1, 784])
    x_val = torch.cat([x for x, _ in data.val]).numpy()
    y_val = torch.cat([y for _, y in data.val]).numpy()

    model = lenet_300_100()
    train(model, data.train, args.epochs, lr=0.05)
    dense_acc = accuracy(model, x_val, y_val)
    dense = export_onnx(model, args.out / "dense.onnx", [1, 784], exporter=args.exporter)

    masks = global_magnitude_masks(model, args.sparsity)
    oneshot_acc = accuracy(model, x_val, y_val)
    train(model, data.train, args.finetune_epochs, lr=0.01, masks=masks)
    pruned_acc = accuracy(model, x_val, y_val)
    pruned_path = args.out / "pruned.onnx"
    pruned = export_onnx(model, pruned_path, [1, 784], exporter=args.exporter)
    assert pruned["zeros"]["zeros_ok"] and pruned["parity"]["ok"], pruned

    calibration = [x.numpy() for x, _ in data.train]
    int8 = quantize_int8(pruned_path, args.out / "pruned.int8.onnx", calibration, eval_data=(x_val, y_val))
    dyn = quantize_int8(pruned_path, args.out / "pruned.int8-dynamic.onnx", None, eval_data=(x_val, y_val))
    sparse_fp32 = to_sparse_storage(pruned_path, args.out / "pruned.sparse.onnx")
    sparse_int8 = to_sparse_storage(args.out / "pruned.int8.onnx", args.out / "pruned.int8.sparse.onnx")

    pruned_size = size_report(pruned_path)
    n, nnz = pruned_size["params"], pruned_size["nonzero_params"]
    ref = dense["bytes"]
    bound32 = entropy_bound_bytes(n, nnz, 32)
    bound8 = entropy_bound_bytes(n, nnz, 8)
    agreement = top1_agreement(pruned_path, int8["path"], x_val)

    rows = [
        ("dense fp32", dense["bytes"], dense["gzip_bytes"], None, None),
        ("pruned fp32", pruned["bytes"], pruned["gzip_bytes"], bound32, TARGETS["fp32_gzip"]),
        ("pruned fp32, sparse storage", *_after(sparse_fp32), bound32, None),
        ("pruned int8 static QDQ", int8["bytes"], int8["gzip_bytes"], bound8, TARGETS["int8_gzip"]),
        ("pruned int8 static, sparse storage", *_after(sparse_int8), bound8, None),
        ("pruned int8 dynamic", dyn["bytes"], dyn["gzip_bytes"], bound8, None),
    ]  # fmt: skip
    print(f"\nLeNet-300-100, mnist5k, {args.sparsity:.0%} global magnitude: {nnz:,} of {n:,} params nonzero")
    print(f"sizes relative to the dense fp32 file ({ref:,} bytes); bound = entropy bound / dense bytes\n")
    head = ("file", "bytes", "gzip", "raw x", "gzip x", "bound x", "target")
    print("{:<36} {:>10} {:>9} {:>7} {:>7} {:>8} {:>7}  ok".format(*head))
    results = []
    for name, raw, gz, bound, target in rows:
        ok = None if target is None else gz / ref <= target
        print(
            f"{name:<36} {raw:>10,} {gz:>9,} {raw / ref:>7.4f} {gz / ref:>7.4f} "
            f"{'' if bound is None else f'{bound / ref:.4f}':>8} "
            f"{'' if target is None else f'<={target}':>7}  {'' if ok is None else ('yes' if ok else 'NO')}"
        )
        results.append({"file": name, "bytes": raw, "gzip_bytes": gz, "raw_ratio": raw / ref,
                        "gzip_ratio": gz / ref, "bound_ratio": None if bound is None else bound / ref,
                        "target": target, "ok": ok})  # fmt: skip
    print(
        f"\nbytes per nonzero: fp32 gzip {pruned_size['gzip_bytes_per_nonzero']:.3f}, "
        f"int8 gzip {int8['gzip_bytes_per_nonzero']:.3f} (bounds {bound32 / nnz:.3f}, {bound8 / nnz:.3f})"
    )
    ev = int8["eval"]
    print(
        f"accuracy (1,000 val images): dense {dense_acc:.4f}, one-shot pruned {oneshot_acc:.4f}, "
        f"fine-tuned {pruned_acc:.4f} (onnx {onnx_accuracy(pruned_path, x_val, y_val):.4f}), "
        f"int8 static {ev['int8_accuracy']:.4f}, int8 dynamic {dyn['eval']['int8_accuracy']:.4f}"
    )
    agree_ok = agreement >= TARGETS["agreement"]
    print(
        f"int8 top-1 agreement with fp32: static {agreement:.4f} (target >= {TARGETS['agreement']}: "
        f"{'yes' if agree_ok else 'NO'}), dynamic {dyn['eval']['top1_agreement']:.4f}"
    )
    zeros = {"static": int8["zeros"]["zeros_ok"], "dynamic": dyn["zeros"]["zeros_ok"]}
    print(f"pruned zeros exact after int8: static {zeros['static']}, dynamic {zeros['dynamic']}")
    print(f"[{time.perf_counter() - t0:.0f} s; files in {args.out}]")

    report = {
        "model": "examples.models:lenet_300_100",
        "data": "mnist5k",
        "sparsity": args.sparsity,
        "exporter": args.exporter,
        "params": n,
        "nonzero_params": nnz,
        "dense_bytes": ref,
        "accuracy": {"dense": dense_acc, "oneshot": oneshot_acc, "pruned": pruned_acc, **ev},
        "int8_top1_agreement": agreement,
        "int8_dynamic": {k: dyn[k] for k in ("bytes", "gzip_bytes", "eval")},
        "zeros_ok": zeros,
        "sizes": results,
        "targets": TARGETS,
    }
    (args.out / "size_targets.json").write_text(json.dumps(report, indent=2))
    met = all(r["ok"] for r in results if r["ok"] is not None) and agree_ok and int8["zeros"]["zeros_ok"]
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
