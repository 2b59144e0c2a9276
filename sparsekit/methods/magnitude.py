"""Magnitude pruning: zero the weights with the smallest |w|, globally or per layer, on a schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import select_layers
from ..masks import ensure_mask, global_topk_masks, layer_topk_masks, masked_scores, set_mask, weight_of
from ..schedule import Schedule


class Magnitude:
    """Unstructured pruning by a score; subclasses only change :meth:`scores` (see ``gradient``)."""

    name = "magnitude"
    masks_weights = True
    needs_grad = False

    def __init__(self, spec: Any, model: nn.Module, *, index: int, steps_per_epoch: int, context: dict) -> None:
        self.spec = spec
        self.where = f"pruning[{index}]"
        self.layers = select_layers(model, spec.layers, f"{self.where}.layers")
        self.schedule = Schedule.from_spec(spec.schedule, spec.sparsity, steps_per_epoch)
        self.current = 0.0
        for module in self.layers.values():
            ensure_mask(module)

    def scores(self) -> dict[str, torch.Tensor] | None:
        """Higher = keep. None means "no scores yet" (the update waits for the next step)."""
        return {name: weight_of(m).detach().abs() for name, m in self.layers.items()}

    def update(self, step: int) -> bool:
        """Recompute masks to the schedule's target at ``step``; False if scores are not ready."""
        target = self.schedule.target(step)
        scores = self.scores()
        if scores is None:
            return False
        scores = {n: masked_scores(s, self.layers[n]) for n, s in scores.items()}
        make = global_topk_masks if self.spec.scope == "global" else layer_topk_masks
        for name, mask in make(scores, target).items():
            set_mask(self.layers[name], mask)
        self.current = target
        return True

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def after_step(self, step: int) -> None:
        if self.schedule.is_update(step) or self._pending:
            self._pending = not self.update(step)
        # No apply_mask here: Pruner.step applies every mask once after all methods ran.

    _pending = False

    def start(self) -> None:
        """Called once when the pruner is built: a schedule that starts at step 0 acts now."""
        if self.schedule.is_update(0):
            self._pending = not self.update(0)

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        return self.schedule.epoch_targets(epochs, steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "pending": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])
        self._pending = bool(state["pending"])


METHOD = Magnitude
