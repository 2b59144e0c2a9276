"""Gradient saliency pruning: zero the weights whose first-order effect on the loss is smallest.

Two criteria, both scorers (:mod:`sparsekit.methods.scorers`) of ``w`` and ``dL/dw`` read from
``module.weight.grad`` after the user's own ``loss.backward()``, in :meth:`Gradient.after_step` (before
that step's mask update):

- ``taylor`` (Molchanov et al., 2017; 2019): score ``|w * dL/dw|`` summed over the steps since the last
  mask update, then reset, so each update ranks by the recent estimate of the loss change.
- ``movement`` (Sanh et al., 2020): score ``-w * dL/dw`` summed over the whole run (never reset):
  weights moving away from zero score high, weights shrinking toward zero are pruned.

From Python, ``Pruner(..., scorers={i: fn})`` replaces the scorer of ``pruning[i]`` with
``fn(weight, grad)`` (float32 tensors of the weight's shape); the entry's ``criterion`` still chooses
the window it is summed over (taylor: since the last update; movement: the whole run).

Ranking, scopes, schedules and per-layer values (``layer_sparsity``; an entry still holding ``sparsity:
auto`` is refused) are those of :mod:`~sparsekit.methods.magnitude`. An update point
reached before any gradient arrived (``schedule: oneshot`` before the first step) waits for the
next step that brings gradients; a run that never gets them fails at :meth:`Gradient.finalize`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import TargetError
from ..masks import weight_of
from . import scorers
from .base import Changes, Setup
from .magnitude import Magnitude

# criterion -> (scorer, whether the summed scores restart after every mask update)
CRITERIA: dict[str, tuple[scorers.Scorer, bool]] = {
    "taylor": (scorers.taylor, True),
    "movement": (scorers.movement, False),
}

# Fused in-place sums for built-in scorers: this runs every step, a temporary costs as much as the
# math, and the fused form keeps the sums bit-identical to earlier releases.
_FUSED: dict[Callable[..., Any], Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]] = {
    scorers.movement: lambda acc, w, g: acc.addcmul_(w, g, value=-1),
}


class Gradient(Magnitude):
    """Magnitude pruning with gradient-based scores (``method: gradient``, ``criterion: taylor | movement``).

    Raises TargetError at construction when ``spec.layers`` selects no layer, and at :meth:`finalize`
    when an update point never got gradients."""

    name = "gradient"
    needs_grad = True

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        super().__init__(spec, model, setup)
        self.criterion: str = spec.criterion
        self.resets = CRITERIA[spec.criterion][1]  # taylor: a fresh estimate per update interval
        self.accum: dict[str, torch.Tensor] = {}  # summed scores per layer since the last reset
        self._fused = _FUSED.get(self.scorer)

    def _builtin_scorer(self, spec: Any) -> scorers.Scorer:
        return CRITERIA[spec.criterion][0]

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this step's ``scorer(w, grad)`` to the sums; layers without a ``.grad`` contribute nothing."""
        for name, module in self.layers.items():
            weight = weight_of(module)
            grad = weight.grad
            if grad is None:
                continue
            w, g = weight.detach().float(), grad.detach().float()
            acc = self.accum.get(name)
            if acc is not None and self._fused is not None:
                self._fused(acc, w, g)
                continue
            term = self._score(name, w, g)
            if acc is None:
                # A user's scorer may return a view of its inputs: the sum must own its memory.
                self.accum[name] = term.clone() if self.custom else term
            else:
                acc.add_(term)  # in place: this runs every step

    def scores(self) -> dict[str, torch.Tensor] | None:
        """The summed scores, or None while some layer has had no gradient yet."""
        # Ranking layers that have no gradient yet against those that have would be meaningless.
        if any(name not in self.accum for name in self.layers):
            return None
        return dict(self.accum)

    def update(self, step: int) -> bool:
        """Recompute masks (see :meth:`Magnitude.update`); a taylor window restarts after it."""
        done = super().update(step)
        if done and self.resets:
            self.accum = {}
        return done

    def after_step(self, step: int) -> Changes:
        """Add this step's scores, then update masks at the schedule's update points."""
        self.accumulate()  # before the mask update, so this step's gradients count
        return super().after_step(step)

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Raises TargetError when an update point is still waiting for gradients."""
        if self._pending:
            missing = [name for name in self.layers if name not in self.accum] or list(self.layers)
            raise TargetError(
                f"{self.where}: gradient criterion got no gradients (for layers {missing}): call "
                "loss.backward() before pruner.step(), or give the recipe fine-tuning epochs / "
                "calibration batches; exclude frozen layers with layers.exclude"
            )
        return super().finalize(model)

    def state_dict(self) -> dict[str, Any]:
        """Magnitude's state plus the summed scores."""
        return {**super().state_dict(), "accum": {n: t.clone() for n, t in self.accum.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (sums moved to each layer's device)."""
        super().load_state_dict(state)
        accum = state.get("accum", {})
        self.accum = {n: t.clone().to(self.layers[n].weight.device) for n, t in accum.items() if n in self.layers}
