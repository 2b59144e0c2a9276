"""The plain fine-tuning loop the CLI uses: optimizer, LR schedule, pruner steps, eval, checkpoints.

Users with their own loop drive :class:`~sparsekit.pruner.Pruner` directly (INTERFACE.md §5); this
is the same calls in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fsutil import atomic_path
from .pruner import Pruner
from .recipe import FinetuneSpec, Recipe
from .stats import sparsity


def make_optimizer(params: Iterable[nn.Parameter], spec: FinetuneSpec) -> torch.optim.Optimizer:
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_at(epoch: int, spec: FinetuneSpec) -> float:
    """The learning rate for ``epoch`` (a pure function, so resuming and rebuilding need no state)."""
    base, s = spec.optimizer.lr, spec.lr_schedule
    if s.name == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / max(spec.epochs, 1)))
    if s.name == "step":
        return base * s.gamma ** (epoch // s.step_size)
    return base


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        out = model(x)
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return {"accuracy": correct / total if total else 0.0, "loss": loss_sum / total if total else 0.0}


def calibrate(model: nn.Module, pruner: Pruner, loader: Iterable, batches: int) -> None:
    """Gradient-based methods with no fine-tuning: sum gradients over a few batches, then one step."""
    model.train()
    model.zero_grad()
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        nn.functional.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad()


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def finetune(
    model: nn.Module,
    recipe: Recipe,
    train_loader: Any,
    val_loader: Any,
    *,
    pruner: Pruner | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]], Pruner]:
    """Fine-tune ``model`` for ``recipe.finetune.epochs`` while the pruner follows its schedules.

    Returns ``(model, history, pruner)``; call ``pruner.finalize()`` afterwards. With
    ``checkpoint_dir`` a resumable checkpoint is written after every epoch (``resume=True`` continues)."""
    spec = recipe.finetune
    steps = len(train_loader) if spec.max_steps_per_epoch is None else min(len(train_loader), spec.max_steps_per_epoch)
    if pruner is None:
        pruner = Pruner(model, recipe, steps_per_epoch=steps)
    optimizer = make_optimizer(model.parameters(), spec)
    history: list[dict[str, Any]] = []
    first_epoch = 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if resume and ckpt and ckpt.exists():
        first_epoch, history = _load_checkpoint(ckpt, model, optimizer, pruner)
        optimizer = _rebuilt(model, optimizer, spec) if pruner.pruning_history else optimizer

    torch.manual_seed(recipe.seed)
    with _progress(progress) as bar:
        task = bar.add_task("fine-tune", total=(spec.epochs - first_epoch) * steps, info="")
        for epoch in range(first_epoch, spec.epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, spec)
            model.train()
            loss_sum, seen = 0.0, 0
            for i, (x, y) in enumerate(train_loader):
                if i >= steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x), y)
                (loss + pruner.penalty()).backward()
                optimizer.step()
                pruner.step()
                if getattr(pruner, "structure_changed", False):
                    # torch-pruning replaced the Parameter objects: the optimizer must follow them.
                    optimizer = _rebuilt(model, optimizer, spec)
                    pruner.structure_changed = False
                loss_sum += loss.item() * len(y)
                seen += len(y)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{spec.epochs} loss {loss_sum / seen:.4f}")
            metrics = evaluate(model, val_loader)
            row = {
                "epoch": epoch + 1,
                "sparsity": sparsity(model),
                "train_loss": loss_sum / max(seen, 1),
                "val_accuracy": metrics["accuracy"],
                "val_loss": metrics["loss"],
                "lr": lr_at(epoch, spec),
            }
            history.append(row)
            bar.update(task, info=f"epoch {epoch + 1}: acc {row['val_accuracy']:.4f} sparsity {row['sparsity']:.3f}")
            if ckpt:
                _save_checkpoint(ckpt, epoch + 1, model, optimizer, pruner, history)
            if on_epoch:
                on_epoch(row)
    return model, history, pruner


def _rebuilt(model: nn.Module, old: torch.optim.Optimizer, spec: FinetuneSpec) -> torch.optim.Optimizer:
    lr = old.param_groups[0]["lr"]
    new = make_optimizer(model.parameters(), spec)
    for group in new.param_groups:
        group["lr"] = lr
    return new


def _save_checkpoint(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pruner: Pruner,
    history: list[dict[str, Any]],
) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pruner": pruner.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner
) -> tuple[int, list[dict[str, Any]]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    history_struct = state["pruner"].get("pruning_history") or []
    if history_struct:
        from .surgery import replay_history

        replay_history(model, history_struct, pruner.context["input_shape"])
    model.load_state_dict(state["model"])
    pruner.load_state_dict(state["pruner"])
    if not history_struct:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"])
