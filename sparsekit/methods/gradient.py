"""Gradient saliency pruning: zero the weights whose first-order effect on the loss is smallest.

Two criteria, both built from ``w * dL/dw`` read from ``module.weight.grad`` after the user's own
``loss.backward()``, in :meth:`Gradient.after_step` (before that step's mask update):

- ``taylor`` (Molchanov et al., 2017): score ``|w * dL/dw|`` summed over the steps since the last
  mask update, then reset, so each update ranks by the recent estimate of the loss change.
- ``movement`` (Sanh et al., 2020): score ``-w * dL/dw`` summed over the whole run (never reset):
  weights moving away from zero score high, weights shrinking toward zero are pruned.

Ranking, scopes and schedules are those of :mod:`~sparsekit.methods.magnitude`. An update point
reached before any gradient arrived (``schedule: oneshot`` before the first step) waits for the
next step that brings gradients; a run that never gets them fails at :meth:`Gradient.finalize`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import TargetError
from ..masks import weight_of
from .magnitude import Magnitude


class Gradient(Magnitude):
    """Magnitude pruning with gradient-based scores (``criterion: taylor | movement``)."""

    name = "gradient"
    needs_grad = True

    def __init__(self, spec: Any, model: nn.Module, *, index: int, steps_per_epoch: int, context: dict) -> None:
        super().__init__(spec, model, index=index, steps_per_epoch=steps_per_epoch, context=context)
        self.criterion: str = spec.criterion
        self.accum: dict[str, torch.Tensor] = {}  # summed saliency per layer since the last reset

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this step's ``w * grad`` term; layers without a ``.grad`` contribute nothing."""
        for name, module in self.layers.items():
            weight = weight_of(module)
            grad = weight.grad
            if grad is None:
                continue
            w, g = weight.detach().float(), grad.detach().float()
            acc = self.accum.get(name)
            if self.criterion == "movement":
                # In place: this runs every step, and fresh temporaries cost as much as the math.
                if acc is None:
                    self.accum[name] = -(w * g)
                else:
                    acc.addcmul_(w, g, value=-1)
            else:
                term = (w * g).abs_()
                if acc is None:
                    self.accum[name] = term
                else:
                    acc.add_(term)

    def scores(self) -> dict[str, torch.Tensor] | None:
        # Ranking layers that have no gradient yet against those that have would be meaningless.
        if any(name not in self.accum for name in self.layers):
            return None
        return dict(self.accum)

    def update(self, step: int) -> bool:
        done = super().update(step)
        if done and self.criterion == "taylor":
            self.accum = {}  # Taylor scores are a fresh estimate per update interval
        return done

    def after_step(self, step: int) -> None:
        self.accumulate()  # before the mask update, so this step's gradients count
        super().after_step(step)

    def finalize(self, model: nn.Module) -> nn.Module:
        if self._pending:
            missing = [name for name in self.layers if name not in self.accum] or list(self.layers)
            raise TargetError(
                f"{self.where}: gradient criterion got no gradients (for layers {missing}): call "
                "loss.backward() before pruner.step(), or give the recipe fine-tuning epochs / "
                "calibration batches; exclude frozen layers with layers.exclude"
            )
        return model

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "accum": {n: t.clone() for n, t in self.accum.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        accum = state.get("accum", {})
        self.accum = {n: t.clone().to(self.layers[n].weight.device) for n, t in accum.items() if n in self.layers}


METHOD = Gradient
