"""Prune LeNet-300-100 to 90% sparsity inside your own training loop (the Python API, README "Python API").

    python examples/api_loop.py --epochs 3 -o api-out

Trains a dense model briefly on mnist5k, then fine-tunes it under the shipped recipe
recipes/lenet-gradual-magnitude-90.yaml (its schedule shortened to fit --epochs), and saves,
exports and benchmarks the pruned model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `examples.models` importable from anywhere

import sparsekit  # noqa: E402
from examples.models import lenet_300_100  # noqa: E402
from sparsekit.data import load_data  # noqa: E402
from sparsekit.onnx import latency_table  # noqa: E402


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    model.train()
    return correct / len(loader.dataset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="pruning + fine-tuning epochs (>= 2)")
    ap.add_argument("-o", "--output", type=Path, default=Path("api-out"), help="output directory")
    args = ap.parse_args()

    torch.manual_seed(0)
    data = load_data("mnist5k", batch_size=64, input_shape=[1, 784])
    model = lenet_300_100()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # a brief dense training: your model as it is before pruning
        for x, y in data.train:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    print(f"dense:  sparsity {sparsekit.sparsity(model):.3f}  accuracy {accuracy(model, data.val):.4f}")

    # The recipe prunes over 5 epochs of 8; squeeze its schedule to end one epoch before the last.
    end = max(1, args.epochs - 1)
    recipe = sparsekit.load_recipe(
        ROOT / "recipes" / "lenet-gradual-magnitude-90.yaml",
        overrides=[f"finetune.epochs={args.epochs}", f"pruning.0.schedule.end_epoch={end}"],
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=len(data.train))
    for epoch in range(recipe.finetune.epochs):
        for x, y in data.train:
            optimizer.zero_grad()
            loss = criterion(model(x), y) + pruner.penalty()  # 0 here: this recipe has no L1 term
            loss.backward()
            optimizer.step()
            pruner.step()  # advances the schedule, applies the masks: pruned weights stay zero
        print(f"epoch {epoch + 1}: sparsity {sparsekit.sparsity(model):.3f}  accuracy {accuracy(model, data.val):.4f}")
    model = pruner.finalize()  # masks baked into the weights, no sparsekit buffers left

    print(f"pruned: sparsity {sparsekit.sparsity(model):.3f}  accuracy {accuracy(model, data.val):.4f}")
    for row in sparsekit.layer_report(model):
        print(f"  {row['name']:<4} {str(row['shape']):<11} sparsity {row['sparsity']:.3f}")
    args.output.mkdir(parents=True, exist_ok=True)
    sparsekit.save_model(
        model, args.output / "pruned.pt", factory="examples.models:lenet_300_100", input_shape=[1, 784], pruner=pruner
    )
    onnx_info = sparsekit.export_onnx(model, args.output / "pruned.onnx", input_shape=(1, 784))
    print(f"exported {onnx_info['path']}: {onnx_info['bytes']:,} bytes, {onnx_info['gzip_bytes']:,} gzipped")
    stats = sparsekit.benchmark(args.output / "pruned.onnx", batch_sizes=[1, 32])
    print(latency_table(stats))


if __name__ == "__main__":
    main()
