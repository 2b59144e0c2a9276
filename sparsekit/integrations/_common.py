"""What both trainer callbacks share (no trainer imported here)."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..errors import TargetError
from ..recipe import Recipe, as_recipe

__all__ = [
    "as_recipe",
    "at_user_code",
    "refuse_distributed_structured",
    "refuse_pruned_again",
    "require_first_batch",
    "short_schedules",
]


# The packages between the user's trainer.train()/fit() call and a callback hook (and sparsekit under it): a warning
# attributed to any of their frames points at library code the user cannot act on.
_LIBRARY_PACKAGES = frozenset(
    {"sparsekit", "transformers", "accelerate", "lightning", "pytorch_lightning", "lightning_fabric", "torch"}
    | {"contextlib", "functools"}
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _user_stacklevel() -> int:
    """The ``stacklevel`` that, given to ``warnings.warn`` by this function's caller, names the first frame outside
    the trainer's and sparsekit's packages: the user's ``trainer.train()``/``fit()`` line."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None:
        package = str(frame.f_globals.get("__name__", "")).partition(".")[0]
        if package not in _LIBRARY_PACKAGES:
            break
        frame, level = frame.f_back, level + 1
    return level


def at_user_code(hook: _F) -> _F:
    """Decorate a callback hook so the warnings raised under it (its own, the Pruner's: a schedule that outlasts
    the run, a missed target at finalize) are reported at the user's ``trainer.train()``/``fit()`` call rather
    than at a line of sparsekit/integrations or of the trainer that called the hook (Python 3.11 has no
    ``skip_file_prefixes``)."""

    @functools.wraps(hook)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # recorded here; filtered (once, ignore, error) when re-issued
                return hook(*args, **kwargs)
        finally:
            level = _user_stacklevel()
            for w in caught:
                warnings.warn(w.message, stacklevel=level)

    return wrapper  # type: ignore[return-value]


def checked_options(
    call: str, recipe: Recipe, scorers: object, submodule: object, finalize: object
) -> dict[int, Callable[..., Any]] | None:
    """A trainer callback's ``scorers`` (as the Pruner checks them, against ``recipe``), ``submodule`` and
    ``finalize``, checked when it is built: a list of scorers failed as "cannot convert dictionary update sequence
    element #0", a scorer for an entry the recipe lacks or a submodule that is no name only once fit had started, and
    ``finalize="no"`` (a true value) finalized."""
    from ..pruner import _check_scorers

    checked = _check_scorers(scorers, len(recipe.pruning)) if scorers is not None else None  # type: ignore[arg-type]
    if submodule is not None and not isinstance(submodule, str):
        raise TypeError(
            f"{call}(submodule=...): expected the name of the child module to prune (e.g. 'net'), got {submodule!r}"
        )
    if not isinstance(finalize, bool):
        raise TypeError(f"{call}(finalize=...): expected True or False, got {finalize!r}")
    return checked or None


def require_first_batch(pruner: Any, callee: str, root: nn.Module, submodule: str | None, caller: str) -> None:
    """TargetError, worded for the callback ``callee``, when an optimizer step comes while the Pruner still waits for
    the first batch to read the input shape from (structured without one): the trainer ran the step without calling
    the pruned module's forward (``training_step`` calling ``self.net(x)`` while the LightningModule itself is
    pruned). The Pruner's own error told to run a batch through the model and to pass ``context=`` to a Pruner the
    user never built. ``root``: the trainer's model; ``caller``: the user's code that runs the batch."""
    if not pruner._pending or pruner._wait_failed is not None:
        return  # built, or the first batch's own error (the Pruner's) was raised already
    from ..modelio import input_shape_example

    target = pruner.model
    example = "[" + input_shape_example(target).replace(",", ", ") + "]"
    children = [n for n, _ in target.named_children()]
    what = f"submodule {submodule!r}" if submodule else f"the model itself ({type(root).__name__})"
    how = f"{caller} ran without calling it" + ("" if submodule else ", e.g. calling a child, self.net(x), not self(x)")
    other = (
        f"pass {callee}(..., submodule=NAME) to prune the child it calls (children: {', '.join(children)}), or "
        if not submodule and children
        else ""
    )
    raise TargetError(
        f"{callee}: structured pruning needs the input shape, which the callback takes from the first batch through "
        f"the forward of the module it prunes, {what}, and an optimizer step came before any batch ran through it "
        f"({how}); {other}pass {callee}(..., input_shape=[1, ...]) (e.g. {example}), or set model.input_shape in "
        "the recipe"
    )


def refuse_pruned_again(callee: str, target: nn.Module, pruner: Any, model: Any, run: str) -> None:
    """ValueError when ``target``, the module this run would prune, is the one an earlier run of the same callback
    pruned (``pruner``: that run's Pruner, ``model``: the module it left): a second ``train()``/``fit()`` on the
    same trainer built a new Pruner from the recipe and pruned the pruned model again (a ratio-0.5 structured
    recipe halving the channels twice), where a user continuing training expects fine-tuning. A new model
    (hyperparameter search's ``model_init``) is pruned as usual."""
    if pruner is None or model is None or not (target is model or target is pruner.model):
        # model is set when a run ends: a run that failed part-way leaves it None, and a rerun starts over
        return
    raise ValueError(
        f"{callee}: this callback already pruned this model in an earlier {run} (its recipe's pruning is done"
        + (", the masks baked into the weights" if pruner.finalized else "")
        + f"), and a second {run} would prune the pruned model again from the recipe's start; to prune it again on "
        f"purpose, use a new {callee} (with the recipe to apply) in its place; to fine-tune it without pruning, "
        "train it without this callback (zeros can then become non-zero)"
    )


def refuse_distributed_structured(recipe: Recipe) -> None:
    """Channel removal replaces parameters, which a trainer's DDP/FSDP wrapper does not follow."""
    from ..distributed import active

    if active() and any(spec.method == "structured" for spec in recipe.pruning):
        raise ValueError(
            "a structured entry removes channels, which the trainer's DDP/FSDP wrapper cannot follow: train on one "
            "device with this callback, or prune channels in your own DDP loop (the sparsekit repository's README: "
            "torchrun) or with `torchrun -m sparsekit prune`; unstructured methods work here under DDP"
        )


def short_schedules(
    recipe: Recipe, steps_per_epoch: int, total_steps: float, run: str = "run", *, done: int = 0, counted: int = 0
) -> list[str]:
    """One line per pruning entry whose schedule ends after the pruner's last step of this run (``run``: what
    the user calls the training: ``fit`` in Lightning).

    ``total_steps``: the trainer's optimizer steps at the end of the run, counted from the first run of a
    resumed one (Lightning's ``estimated_stepping_batches``, transformers' ``state.max_steps``); ``done``: the
    trainer's steps already taken when this run begins (its ``global_step``); ``counted``: the pruner's step count
    then. A run resumed from a checkpoint without pruner state (dense training, or one written after finalize)
    prunes from step 0 over only the steps left, so those, not the trainer's total, meet the schedule."""
    total_steps = counted + max(0.0, total_steps - done)
    lines = []
    for i, spec in enumerate(recipe.pruning):
        schedule = getattr(spec, "schedule", None)
        # l1 without a target regularizes "forever" by default; with one, its end_epoch is when the target is met
        if schedule is None or (spec.method == "l1" and getattr(spec, "target", None) is None):
            continue
        end = math.ceil(schedule.end_epoch * steps_per_epoch)
        if end > total_steps:
            # structured's finalize runs the removal events left (Structured.finalize): the shape is reached,
            # without fine-tuning after the last removals; the other methods stop where the run stops.
            then = (
                "finalize removes the channels still to go at once, with no fine-tuning after"
                if spec.method == "structured"
                else "its target is not reached"
            )
            lines.append(
                f"pruning[{i}] ({spec.method}) ends at epoch {schedule.end_epoch:g} (optimizer step {end}), "
                f"but this {run} ends at step {int(total_steps)} of the schedule ({steps_per_epoch} per epoch"
                + (
                    f"; the {done} optimizer steps taken before it resumed are not in the schedule, which starts at "
                    f"this {run}'s first step"
                    if done != counted
                    else ""
                )
                + f"): {then}"
            )
    return lines
