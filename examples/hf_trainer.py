"""Prune an MLP while Hugging Face's transformers.Trainer trains it: SparsekitTrainerCallback.

    python examples/hf_trainer.py                 # 85% of fc1 + fc2, gradually; ~10 s on 2 cores

Trains examples.models.mlp on scikit-learn's 8x8 digits (shipped with scikit-learn: no download)
with an inline recipe (global gradual magnitude pruning, head kept dense), then prints the sparsity
reached and the accuracy on 360 held-out digits. The Trainer owns the loop; the model is a plain
nn.Module whose forward returns {"loss", "logits"}, which is all transformers.Trainer asks of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `examples.models` and `sparsekit` importable from a checkout

import transformers  # noqa: E402

import sparsekit  # noqa: E402
from examples.models import mlp  # noqa: E402
from sparsekit.integrations.transformers import SparsekitTrainerCallback  # noqa: E402


class DigitsClassifier(nn.Module):
    """``net`` plus the loss: ``forward(x, labels)`` returns ``{"loss", "logits"}`` (``{"logits"}`` without labels)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Digits(torch.utils.data.Dataset):
    """Items ``{"x": [64] floats in 0..1, "labels": int}``, batched by the Trainer's default collator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def digits(samples: int) -> tuple[Digits, Digits]:
    """scikit-learn's digits: the first ``samples`` (at most 1,437) of a fixed shuffle to train on, 360 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[: min(samples, 1437)], order[1437:]
    return Digits(x[train], y[train]), Digits(x[val], y[val])


def make_recipe(sparsity: float, epochs: int) -> sparsekit.Recipe:
    """Global gradual magnitude pruning of fc1 and fc2 (the head fc3 stays dense), reaching ``sparsity``
    one epoch before the last."""
    return sparsekit.Recipe(
        version=1,
        finetune={"epochs": epochs},  # the Trainer's num_train_epochs rules; this only bounds the schedule
        pruning=[
            {
                "method": "magnitude",
                "sparsity": sparsity,
                "scope": "global",
                "layers": {"exclude": ["fc3"]},
                "schedule": {"start_epoch": 0, "end_epoch": max(1, epochs - 1), "every": 0.25},
            }
        ],
    )


@torch.no_grad()
def accuracy(model: nn.Module, data: Digits) -> float:
    model.eval()
    return float((model(data.x)["logits"].argmax(1) == data.y).float().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the example; returns ``{"sparsity", "accuracy"}`` (sparsity of the layers the recipe prunes)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6, help="training epochs (>= 2)")
    ap.add_argument("--sparsity", type=float, default=0.85, help="target sparsity of fc1 + fc2")
    ap.add_argument("--samples", type=int, default=1437, help="training samples (quick runs: fewer)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a tiny model runs fastest on one)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="Trainer output_dir (default: a temp folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    train, val = digits(args.samples)
    model = DigitsClassifier(mlp(64, (128, 64), 10))
    # submodule="net": the recipe's layer names (fc1, fc2, fc3) are the MLP's own.
    pruning = SparsekitTrainerCallback(make_recipe(args.sparsity, args.epochs), submodule="net")
    with tempfile.TemporaryDirectory() as tmp:
        training = transformers.TrainingArguments(
            output_dir=str(args.output or tmp),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=32,
            learning_rate=1e-2,
            save_strategy="no",  # with "epoch"/"steps", each checkpoint-N also gets the pruner's pruner.pt
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = transformers.Trainer(model=model, args=training, train_dataset=train, callbacks=[pruning])
        trainer.train()

    assert pruning.model is not None and pruning.pruner is not None
    net = pruning.model  # the MLP, finalized: masks baked into the weights
    pruned = {name for row in pruning.pruner.summary() for name in row["layers"]}  # fc1, fc2
    rows = sparsekit.layer_report(net)
    zeros = sum(r["params"] - r["nonzero_params"] for r in rows if r["name"] in pruned)
    result = {
        "sparsity": zeros / sum(r["params"] for r in rows if r["name"] in pruned),
        "accuracy": accuracy(model, val),
    }
    print(f"{pruning.pruner.step_count} optimizer steps")
    for row in rows:
        print(f"  {row['name']:<4} {str(row['shape']):<10} sparsity {row['sparsity']:.3f}")
    print(
        f"sparsity {result['sparsity']:.3f} of {'+'.join(sorted(pruned))} ({sparsekit.sparsity(net):.3f} of all "
        f"weights)  accuracy {result['accuracy']:.4f} ({len(val)} held-out digits)"
    )
    return result


if __name__ == "__main__":
    main()
