"""The plain fine-tuning loop the CLI uses: optimizer, LR schedule, pruner steps, eval, checkpoints.

Users with their own loop drive :class:`~sparsekit.pruner.Pruner` directly (INTERFACE.md §5); this
is the same calls in the same order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import batches as _batches
from .errors import DataError, RecipeError, SparsekitError, one_line
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


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``model(x)`` against ``y`` (moved to the model's device); labels out of range
    are a data error, not a crash deep in torch."""
    device = _device(model)
    try:
        out = model(x.to(device))
    except (KeyboardInterrupt, MemoryError, SparsekitError):
        raise
    except Exception as err:  # noqa: BLE001 - the user's model on the user's data: bad input, not our bug
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"data: the model fails on a batch of inputs {shape}: {one_line(err)}") from None
    try:
        return nn.functional.cross_entropy(out, y.to(device), reduction=reduction), out
    except IndexError as err:  # torch's "Target 42 is out of bounds."; checked by torch, not per step here
        label = str(err).removeprefix("Target ").split(" ")[0]
        raise DataError(
            f"data: label {label} is outside the model's {out.shape[1]} outputs; labels must be 0..{out.shape[1] - 1}"
        ) from None


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(_batches(loader, "data: the validation loader")):
        if max_batches is not None and i >= max_batches:
            break
        loss, out = _loss(model, x, y, reduction="sum")
        loss_sum += float(loss)
        correct += int((out.argmax(1) == y.to(out.device)).sum())
        total += int(y.numel())
    model.train(was_training)
    return {"accuracy": correct / total if total else 0.0, "loss": loss_sum / total if total else 0.0}


def calibrate(model: nn.Module, pruner: Pruner, loader: Iterable, batches: int) -> None:
    """Gradient-based methods with no fine-tuning: sum gradients over a few batches, then one step."""
    model.train()
    model.zero_grad()
    for i, (x, y) in enumerate(_batches(loader, "data: the training loader")):
        if i >= batches:
            break
        _loss(model, x, y)[0].backward()
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
    torch.manual_seed(recipe.seed)  # before a resume, which restores the RNG state it saved
    if resume and ckpt and ckpt.exists():
        first_epoch, history, optimizer = _load_checkpoint(
            ckpt, model, optimizer, pruner, spec, _loader_generator(train_loader)
        )
        if first_epoch > spec.epochs:
            raise RecipeError(
                f"finetune.epochs: {spec.epochs}, but {ckpt} already finished epoch {first_epoch}; "
                "use --overwrite to start again"
            )
    with _progress(progress) as bar:
        task = bar.add_task("fine-tune", total=(spec.epochs - first_epoch) * steps, info="")
        for epoch in range(first_epoch, spec.epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, spec)
            model.train()
            loss_sum, seen = 0.0, 0
            for i, (x, y) in enumerate(_batches(train_loader, "data: the training loader")):
                if i >= steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss = _loss(model, x, y)[0]
                value = loss.item()  # the one host sync per step, for the divergence check and the running mean
                if not math.isfinite(value):
                    raise _not_finite(value, epoch, i, x, model, optimizer)
                (loss + pruner.penalty()).backward()
                optimizer.step()
                pruner.step()
                if pruner.structure_changed:
                    # torch-pruning replaced the Parameter objects: the optimizer must follow them.
                    optimizer = pruner.update_optimizer(optimizer)
                loss_sum += value * len(y)
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
                _save_checkpoint(ckpt, epoch + 1, model, optimizer, pruner, history, _loader_generator(train_loader))
            if on_epoch:
                on_epoch(row)
    return model, history, pruner


def _not_finite(
    value: float, epoch: int, batch: int, x: Any, model: nn.Module, optimizer: torch.optim.Optimizer
) -> SparsekitError:
    """Why the loss is not finite, in the order worth checking: the data, the weights, the step size."""
    where = f"the loss became {value} at epoch {epoch + 1}, batch {batch + 1}"
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return DataError(f"data: {where}: this batch of inputs holds NaN or inf values; clean the data")
    if any(not bool(torch.isfinite(p).all()) for p in model.parameters()):
        return RecipeError(
            f"finetune: {where}: training diverged (weights are no longer finite); lower finetune.optimizer.lr "
            f"(now {optimizer.param_groups[0]['lr']:g})"
        )
    return DataError(
        f"{where} with finite inputs and weights: the model's forward gives NaN/inf on this data (e.g. log of "
        "zero, or activations that overflow); check the model and the data's scale, or if it happens only after "
        f"some steps lower finetune.optimizer.lr (now {optimizer.param_groups[0]['lr']:g})"
    )


def _rebuilt(model: nn.Module, old: torch.optim.Optimizer, spec: FinetuneSpec) -> torch.optim.Optimizer:
    lr = old.param_groups[0]["lr"]
    new = make_optimizer(model.parameters(), spec)
    for group in new.param_groups:
        group["lr"] = lr
    return new


def _loader_generator(loader: Any) -> torch.Generator | None:
    """The generator a DataLoader shuffles with, when it has its own (sparsekit's built-in sources do)."""
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _save_checkpoint(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pruner: Pruner,
    history: list[dict[str, Any]],
    loader_rng: torch.Generator | None = None,
) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pruner": pruner.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
        "loader_rng": loader_rng.get_state() if loader_rng is not None else None,
        # What the masks in this checkpoint mean: resuming under a different pruning section is refused.
        "pruning": _pruning_key(pruner),
    }
    # Through a Python file object: a full disk then raises OSError(ENOSPC), which atomic_path turns into
    # a clear error naming the path (torch's own writer reports only 'unexpected pos').
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pruner: Pruner,
    spec: FinetuneSpec,
    loader_rng: torch.Generator | None,
) -> tuple[int, list[dict[str, Any]], torch.optim.Optimizer]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state.get("pruning")
        if saved is not None and saved != _pruning_key(pruner):
            raise SparsekitError("the recipe's pruning section changed since this checkpoint was written")
        pruner.load_state_dict(state["pruner"])  # first: replays channel removal so the weights fit
        model.load_state_dict(state["model"])
    except SparsekitError as err:
        raise SparsekitError(f"{path}: cannot resume from it ({err}); use --overwrite to start again") from None
    except Exception as err:  # noqa: BLE001 - any unreadable or mismatched checkpoint is bad input here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SparsekitError(
            f"{path}: does not fit this model and recipe ({first}); use --overwrite to start again"
        ) from None
    if pruner.structure_changed:
        # Same parameters, in the same order, as the optimizer that was saved: its state loads as is.
        optimizer = _rebuilt(model, optimizer, spec)
        pruner.structure_changed = False
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if loader_rng is not None and state.get("loader_rng") is not None:
        loader_rng.set_state(state["loader_rng"])  # the next epochs shuffle as the interrupted run would have
    return int(state["epoch"]), list(state["history"]), optimizer


def _pruning_key(pruner: Pruner) -> str:
    """The recipe's pruning section as text: what the masks in a checkpoint mean."""
    return json.dumps([m.model_dump(mode="json") for m in pruner.recipe.pruning], sort_keys=True)
