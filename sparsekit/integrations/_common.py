"""What both trainer callbacks share (no trainer imported here)."""

from __future__ import annotations

import math

from ..recipe import Recipe, as_recipe

__all__ = ["as_recipe", "refuse_distributed_structured", "short_schedules"]


def refuse_distributed_structured(recipe: Recipe) -> None:
    """Channel removal replaces parameters, which a trainer's DDP/FSDP wrapper does not follow."""
    from ..distributed import active

    if active() and any(spec.method == "structured" for spec in recipe.pruning):
        raise ValueError(
            "a structured entry removes channels, which the trainer's DDP/FSDP wrapper cannot follow: train on one "
            "device with this callback, or prune channels in your own DDP loop (README, torchrun) or with "
            "`torchrun -m sparsekit prune`; unstructured methods work here under DDP"
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
