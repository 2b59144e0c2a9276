"""Pruning methods: one small module per family, all built from a recipe entry by :func:`build`.

A method has four hooks (see :class:`Method`); the :class:`~sparsekit.pruner.Pruner` calls them.
Adding a method is one module plus one entry in ``REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class Method(Protocol):
    name: str
    layers: dict[str, nn.Module]
    masks_weights: bool  # creates unstructured masks (two such methods may not share a weight)
    needs_grad: bool  # reads .grad in after_step

    def start(self) -> None: ...
    def penalty(self) -> torch.Tensor | float: ...
    def after_step(self, step: int) -> None: ...
    def finalize(self, model: nn.Module) -> nn.Module: ...
    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _registry() -> dict[str, Callable[..., Method]]:
    from . import magnitude

    reg: dict[str, Callable[..., Method]] = {"magnitude": magnitude.Magnitude}
    # Optional families register themselves when their module exists.
    for name in ("gradient", "l1", "max_norm", "structured"):
        try:
            mod = __import__(f"{__name__}.{name}", fromlist=["METHOD"])
        except ModuleNotFoundError:
            continue
        reg[name] = mod.METHOD
    return reg


def build(spec: Any, model: nn.Module, index: int, steps_per_epoch: int, context: dict[str, Any]) -> Method:
    """Build the method for ``spec`` (``pruning[index]`` of the recipe) bound to ``model``."""
    from ..errors import RecipeError

    reg = _registry()
    if spec.method not in reg:
        raise RecipeError(f"pruning[{index}].method: {spec.method!r} is not available in this build")
    return reg[spec.method](spec, model, index=index, steps_per_epoch=steps_per_epoch, context=context)
