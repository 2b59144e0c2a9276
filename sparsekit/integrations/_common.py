"""What both trainer callbacks share (no trainer imported here)."""

from __future__ import annotations

from ..recipe import Recipe


def refuse_distributed_structured(recipe: Recipe) -> None:
    """Channel removal replaces parameters, which a trainer's DDP/FSDP wrapper does not follow."""
    from ..distributed import active

    if active() and any(spec.method == "structured" for spec in recipe.pruning):
        raise ValueError(
            "a structured entry removes channels, which the trainer's DDP/FSDP wrapper cannot follow: train on one "
            "device with this callback, or prune channels in your own DDP loop (README, torchrun) or with "
            "`torchrun -m sparsekit prune`; unstructured methods work here under DDP"
        )
