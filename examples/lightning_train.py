"""Prune a small CNN while Lightning trains it: sparsekit's SparsekitCallback in Trainer.fit.

    python examples/lightning_train.py                                  # 80% of conv1-3 + fc1, ~10 s on 2 cores
    python examples/lightning_train.py --recipe cnn-structured-50       # remove half the channels instead

Trains small_cnn (examples/models.py, image_size=8) on scikit-learn's 8x8 digits (shipped with
scikit-learn: no download) with a shipped recipe, its pruning schedule squeezed to end one epoch
before the last, then prints the sparsity reached and the accuracy on 360 held-out digits. Lightning
owns the loop (optimizer, epochs, data); the callback builds the Pruner, steps it after every real
optimizer step and finalizes it at the end of fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `examples.models` and `sparsekit` importable from a checkout

import lightning.pytorch as pl  # noqa: E402

import sparsekit  # noqa: E402
from examples.models import small_cnn  # noqa: E402
from sparsekit.integrations.lightning import SparsekitCallback  # noqa: E402


def digits_loaders(batch_size: int = 64) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """scikit-learn's 1,797 digits as ``[N, 1, 8, 8]`` images in 0..1: 1,437 to train on, 360 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:1437], order[1437:]
    make = torch.utils.data.TensorDataset
    return (
        torch.utils.data.DataLoader(make(x[train], y[train]), batch_size=batch_size, shuffle=True),
        torch.utils.data.DataLoader(make(x[val], y[val]), batch_size=256),
    )


class LitClassifier(pl.LightningModule):
    """Cross-entropy training of ``self.net`` with Adam; nothing here knows about pruning."""

    def __init__(self, net: nn.Module, lr: float = 5e-3) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


@torch.no_grad()
def accuracy(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)  # type: ignore[arg-type]


def squeezed(recipe_name: str, epochs: int) -> sparsekit.Recipe:
    """The recipe with every pruning schedule ending by epoch ``epochs - 1`` (the last one fine-tunes)."""
    recipe = sparsekit.load_recipe(recipe_name)
    end = max(1, epochs - 1)
    overrides = [f"finetune.epochs={epochs}"]
    for i, spec in enumerate(recipe.pruning):
        schedule = getattr(spec, "schedule", None)
        if schedule is not None and schedule.end_epoch > end:
            overrides += [f"pruning.{i}.schedule.end_epoch={end}", f"pruning.{i}.schedule.start_epoch=0"]
    return sparsekit.load_recipe(recipe_name, overrides=overrides)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the example; returns ``{"sparsity", "accuracy", "params"}`` (sparsity of the recipe's layers)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="cnn-layer-magnitude-80", help="shipped recipe name or YAML file")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs (>= 2)")
    ap.add_argument("--width", type=int, default=16, help="small_cnn width (channels of conv1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a tiny model runs fastest on one)")
    ap.add_argument("--limit-batches", type=int, default=None, help="cap on training batches per epoch (quick runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    pl.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    lit = LitClassifier(small_cnn(width=args.width, image_size=8))
    dense = sum(p.numel() for p in lit.parameters())
    recipe = squeezed(args.recipe, args.epochs)
    # submodule="net": the recipe's layer names (conv1, fc1, ...) are small_cnn's own.
    # input_shape: the digits' shape, for methods that trace the model (the recipe names MNIST's).
    pruning = SparsekitCallback(recipe, submodule="net", input_shape=[1, 1, 8, 8])
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        callbacks=[pruning],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(lit, train)

    assert pruning.model is not None and pruning.pruner is not None
    model = pruning.model  # small_cnn, finalized: masks baked in, removed channels gone
    pruned = {name for row in pruning.pruner.summary() for name in row["layers"]}
    rows = sparsekit.layer_report(model)
    zeros = sum(r["params"] - r["nonzero_params"] for r in rows if r["name"] in pruned)
    result = {
        "sparsity": zeros / max(1, sum(r["params"] for r in rows if r["name"] in pruned)),
        "accuracy": accuracy(model, val),
        "params": sum(p.numel() for p in model.parameters()),
    }
    print(f"recipe {Path(args.recipe).stem}: {pruning.pruner.step_count} optimizer steps")
    for row in rows:
        print(f"  {row['name']:<6} {str(row['shape']):<16} sparsity {row['sparsity']:.3f}")
    print(
        f"sparsity {result['sparsity']:.3f} of {', '.join(sorted(pruned))}  accuracy {result['accuracy']:.4f} "
        f"({len(val.dataset)} held-out digits)  parameters {result['params']:,} (dense: {dense:,})"  # type: ignore[arg-type]
    )
    return result


if __name__ == "__main__":
    main()
